"""The generation guards over HTTP (extra fields, as vLLM takes repetition_penalty): the loop
guard `stop_on_repeat` ends a completion that repeats itself with finish_reason "stop", its
text a prefix of the unguarded one; `repetition_penalty` changes what greedy writes; bad
values are 400s."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from conftest import KEY, MODEL, Served
from openai import OpenAI

LINE = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the great "
    "lamp for the ships."
)
PROMPT = f"{LINE}\n{LINE}\n"  # greedy, the model goes on repeating the line


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[OpenAI]:
    with OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def _complete(client: OpenAI, **extra: object) -> tuple[str, str]:
    got = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=60, temperature=0, extra_body=extra or None
    )
    return got.choices[0].text, got.choices[0].finish_reason


def test_loop_guard_stops_a_repeating_completion(client: OpenAI) -> None:
    plain, why = _complete(client)
    assert why == "length" and plain.count(LINE) >= 3  # it loops without the guard
    guarded, why = _complete(client, stop_on_repeat=12)
    assert why == "stop"
    assert plain.startswith(guarded) and guarded.count(LINE) == 1 < plain.count(LINE)


def test_repetition_penalty_changes_greedy_text(client: OpenAI) -> None:
    plain, _ = _complete(client)
    penalized, _ = _complete(client, repetition_penalty=1.8)
    assert penalized != plain
    assert penalized.count(LINE) < plain.count(LINE)


@pytest.mark.parametrize(("field", "value"), [("stop_on_repeat", -1), ("repetition_penalty", 0)])
def test_bad_guard_values_are_400(client: OpenAI, field: str, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _complete(client, **{field: value})
    assert field in str(info.value)
