"""`response_format` through the official openai client: JSON schema (strict) and JSON object,
chat and completions, whole and streamed — every answer parses and validates; a schema the
grammar library cannot take is a 400 with its reason and the server serves on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import KEY, MODEL, Served
from openai import OpenAI
from pydantic import BaseModel

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20},
                    "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA,
                                                       "strict": True}}
ASK = [{"role": "user", "content": "Describe a fictional person as JSON."}]


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[OpenAI]:
    with OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def _valid(text: str) -> dict[str, Any]:
    data = json.loads(text)
    assert set(data) == {"name", "age", "hobbies"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    assert 0 <= data["age"] <= 150 and len(data["hobbies"]) <= 3
    return data


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_chat_json_schema_always_validates(client: OpenAI, seed: int | None) -> None:
    temp = 0.0 if seed is None else 1.0
    got = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120,
                                         temperature=temp, seed=seed, response_format=FORMAT)
    assert got.choices[0].finish_reason == "stop"
    _valid(got.choices[0].message.content or "")


def test_streamed_chat_and_completions_validate(client: OpenAI) -> None:
    parts = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120,
                                           temperature=0, response_format=FORMAT, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    streamed = _valid(text)
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120,
                                           temperature=0, response_format=FORMAT)
    assert json.loads(whole.choices[0].message.content or "") == streamed  # same tokens
    done = client.completions.create(model=MODEL, prompt="A person as JSON: ", max_tokens=120,
                                     temperature=0, extra_body={"response_format": FORMAT})
    _valid(done.choices[0].text)


def test_json_object_is_an_object(client: OpenAI) -> None:
    got = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give a JSON object about cats."}],
        max_tokens=80, temperature=0, response_format={"type": "json_object"})
    text = got.choices[0].message.content or ""
    if got.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens inside the object: a prefix of one
        assert got.choices[0].finish_reason == "length" and text.startswith("{")


def test_parse_with_a_pydantic_model(client: OpenAI) -> None:
    class Person(BaseModel):
        name: str
        age: int

    parse = getattr(getattr(client, "beta", None), "chat", None)
    parse = getattr(getattr(parse, "completions", None), "parse", None) or getattr(
        client.chat.completions, "parse", None)
    if parse is None:
        pytest.skip("this openai client has no parse helper")
    got = parse(model=MODEL, messages=ASK, max_tokens=60, temperature=0, response_format=Person)
    person = got.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.age, int)


def test_a_schema_the_library_cannot_take_is_a_400(client: OpenAI) -> None:
    bad: Any = {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8,
                                       response_format=bad)
    assert "Invalid type: no-such-type" in str(info.value)
    body: Any = info.value.body
    assert body["param"] == "response_format" and body["code"] == "invalid_value"
    ok = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert ok.choices[0].message.content is not None  # still serving


DEAD_END = {
    "$ref": "#/$defs/n",
    "$defs": {
        "n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}
    },
}


def test_an_unsatisfiable_schema_fails_alone(
    client: OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Seven requests decode together; the one whose schema has no finite instance fails with
    a clear reason (logged with its traceback), the six beside it answer as usual."""
    from concurrent.futures import ThreadPoolExecutor

    bad_format: Any = {"type": "json_schema", "json_schema": {"name": "n", "schema": DEAD_END}}

    def ask(i: int) -> str:
        if i == 0:
            try:
                client.chat.completions.create(
                    model=MODEL, messages=ASK, max_tokens=200, temperature=0,
                    response_format=bad_format,
                )  # fmt: skip
            except openai.APIStatusError as exc:
                return f"{exc.status_code} {exc.message}"
            return "answered"
        got = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=24, temperature=0,
        )  # fmt: skip
        return str(got.choices[0].finish_reason)

    with caplog.at_level("ERROR", logger="parafill.server"), ThreadPoolExecutor(7) as pool:
        outcomes = list(pool.map(ask, range(7)))
    assert outcomes[0].startswith("500") and "output constraint" in outcomes[0]
    assert all(o in ("stop", "length") for o in outcomes[1:]), outcomes
    assert any("output constraint" in r.getMessage() and r.exc_info for r in caplog.records)
