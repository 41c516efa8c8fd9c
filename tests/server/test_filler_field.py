"""`parafill serve` and fillers, through the official openai client: the per-request field
`filler` (extra_body) reaches the engine and, at temperature 0, changes nothing in the text of
chat and completions, whole or streamed; an unknown filler is a 400 and the server serves on;
`parafill serve --filler ngram` makes ngram the default of requests that name none."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from conftest import KEY, MODEL, Served
from openai import AsyncOpenAI, OpenAI
from typer.testing import CliRunner

import parafill.backends.local as local_module
from parafill.cli import app
from parafill.fillers import Proposer

KNOWN = "(known: autoregressive, ngram, jacobi, self, draft)"
SENTENCE = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the great "
    "lamp for the ships."
)
CHAT = [{"role": "user", "content": f"Repeat this text exactly:\n{SENTENCE}"}]
PROMPT = f"{SENTENCE}\n{SENTENCE}\n"  # completions: the model goes on repeating it
N = 24


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[OpenAI]:
    with OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the filler of every sequence the local backend submits (then makes it as
    before): the name that reached the engine, after the backend's default is applied."""
    names: list[str] = []
    real: Callable[..., Proposer | None] = local_module.make

    def spy(name: str, *args: Any) -> Proposer | None:
        names.append(name)
        return real(name, *args)

    monkeypatch.setattr(local_module, "make", spy)
    return names


def _text(client: OpenAI, kind: str, stream: bool, **extra: Any) -> str:
    """One temperature-0 request of `kind` ("chat" | "completions"); its text."""
    body = {"extra_body": extra} if extra else {}
    if kind == "chat":
        got: Any = client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=N, temperature=0, stream=stream, **body
        )
        if not stream:
            return str(got.choices[0].message.content)
        return "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    got = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=N, temperature=0, stream=stream, **body
    )
    if not stream:
        return str(got.choices[0].text)
    return "".join(c.choices[0].text for c in got if c.choices)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_filler_field_reaches_the_engine_and_keeps_the_text(
    client: OpenAI, made: list[str], kind: str, stream: bool
) -> None:
    plain = _text(client, kind, stream)
    assert made == ["autoregressive"]  # the server's default (no --filler)
    drafted = _text(client, kind, stream, filler="ngram")
    assert made == ["autoregressive", "ngram"]
    assert drafted == plain and "lighthouse" in plain


def test_filler_field_applies_to_every_choice(client: OpenAI, made: list[str]) -> None:
    want = _text(client, "chat", False)
    got = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=N,
        temperature=0,
        n=2,
        extra_body={"filler": "jacobi"},
    )
    assert [c.message.content for c in got.choices] == [want, want]
    assert made == ["autoregressive", "jacobi", "jacobi"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_unknown_filler_is_a_400_and_the_server_serves_on(
    client: OpenAI, made: list[str], kind: str, stream: bool
) -> None:
    for bad, why in (
        ("magic", f"unknown filler 'magic' {KNOWN}"),
        (5, "valid string"),
        ("draft", "needs a draft model"),  # this server was started without --draft-model
    ):
        with pytest.raises(openai.BadRequestError) as info:
            _text(client, kind, stream, filler=bad)
        assert info.value.status_code == 400
        error = info.value.body
        assert isinstance(error, dict)
        assert error["param"] == "filler" and why in error["message"]
    assert made == []  # refused before anything reached the engine
    assert "lighthouse" in _text(client, kind, stream, filler="autoregressive")


def test_lexical_field_reaches_the_engine_and_bad_values_are_400s(
    client: OpenAI, made: list[str]
) -> None:
    """`lexical` (parafill's own, lossy) is accepted with a filler at temperature 0, and every
    token it writes is still a token the model gave at least that much (the engine's tests
    check that); a threshold out of [0, 0.5) or a sampled request is a 400 naming it."""
    got = _text(client, "chat", False, filler="ngram", lexical=0.3)
    assert made == ["ngram"] and got
    for extra, why in (({"lexical": 0.5}, "less than 0.5"), ({"lexical": -0.5}, "greater than")):
        with pytest.raises(openai.BadRequestError) as info:
            _text(client, "chat", False, filler="ngram", **extra)
        assert why in str(info.value.body)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=N, temperature=0.7,
                                       extra_body={"filler": "ngram", "lexical": 0.3})  # fmt: skip
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == "lexical"
    assert made == ["ngram"]  # the refused ones never reached the engine


# ---- parafill serve --filler ----------------------------------------------------------------


async def _drive(app: Any) -> dict[str, str]:
    """The served app's answers to the same chat request without and with a filler field."""
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        AsyncOpenAI(base_url="http://parafill/v1", api_key="-", http_client=http) as c,
    ):
        out = {}
        for name in (None, "autoregressive", "ngram"):
            extra = {"filler": name} if name else {}
            got = await c.chat.completions.create(
                model="SmolLM2-135M-Instruct",
                messages=CHAT,  # type: ignore[arg-type]
                max_tokens=N,
                temperature=0,
                extra_body=extra,
            )
            out[str(name)] = str(got.choices[0].message.content)
        return out


def test_serve_filler_option_sets_the_default(
    monkeypatch: pytest.MonkeyPatch, made: list[str], client: OpenAI
) -> None:
    """The real command opens the engine and builds the app; instead of binding a port, the
    server's serve() sends it requests in-process and returns."""
    answers: dict[str, str] = {}

    async def serve(self: uvicorn.Server, sockets: Any = None) -> None:
        answers.update(await _drive(self.config.app))

    monkeypatch.delenv("PARAFILL_API_KEY", raising=False)
    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    res = CliRunner().invoke(
        app, ["serve", "--filler", "ngram", "--budget-tokens", "1024", "--rows", "2"]
    )
    assert res.exit_code == 0, res.output
    assert made == ["ngram", "autoregressive", "ngram"]  # no field: the --filler default
    assert answers["None"] == answers["autoregressive"] == answers["ngram"]
    assert answers["None"] == _text(client, "chat", False)  # the session server's text
