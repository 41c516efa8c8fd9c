"""Output constraints through the OpenAI backend: the body fields each server mode sends, the
kinds a mode cannot send refused before anything is sent, and the real llama.cpp servers
(llama-cpp-python's and llama-server) enforcing a JSON schema and a GBNF grammar."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from fault_server import Reply, fault_server
from llama_server import LlamaServer

from parafill import constraints as C
from parafill.backends.base import BackendError, Request, Sampling, complete
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig, encode_body
from parafill.planners.grammars import skeleton_constraint

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
GBNF = 'root ::= ("yes" | "no") ", because " [a-z ]+ "."'
GBNF_LANGUAGE = re.compile(r"(yes|no), because [a-z ]+\.")  # what GBNF accepts


def body(constraint: C.Constraint, mode: str = "openai", endpoint: str = "chat") -> dict:
    cfg = OpenAIConfig(("http://x",), "m", constraints=mode, endpoint=endpoint)  # type: ignore[arg-type]
    req = Request.chat("hi")
    return json.loads(encode_body(cfg, Request(req.messages, constraint=constraint)))


# --- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["openai", "vllm", "vllm-guided", "sglang"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_json_schema_goes_as_strict_response_format(mode: str, endpoint: str) -> None:
    got = body(C.json_schema(SCHEMA), mode, endpoint)
    spec = {"name": "output", "schema": SCHEMA, "strict": True}
    assert got["response_format"] == {"type": "json_schema", "json_schema": spec}
    assert body(C.json_object(), mode, endpoint)["response_format"] == {"type": "json_object"}
    assert list(got)[-3:] == ["response_format", "stream", "stream_options"]


def test_llama_cpp_mode_sends_schemas_as_json_object_and_gbnf_as_grammar() -> None:
    schema = body(C.json_schema(SCHEMA), "llama.cpp")["response_format"]
    assert schema == {"type": "json_object", "schema": SCHEMA}
    assert body(C.json_object(), "llama.cpp")["response_format"] == {"type": "json_object"}
    for endpoint in ("chat", "completions"):
        got = body(C.grammar(GBNF), "llama.cpp", endpoint)
        assert got["grammar"] == GBNF and "response_format" not in got


def test_regex_and_grammar_fields_of_vllm_and_sglang() -> None:
    rx, lark = C.regex(r"\d{4}"), C.grammar('start: "yes" | "no"')
    assert body(rx, "vllm")["structured_outputs"] == {"regex": r"\d{4}"}
    assert body(lark, "vllm")["structured_outputs"] == {"grammar": lark.source}
    assert body(rx, "vllm-guided")["guided_regex"] == r"\d{4}"
    assert body(lark, "vllm-guided")["guided_grammar"] == lark.source
    assert body(rx, "sglang")["regex"] == r"\d{4}"
    assert body(C.grammar(GBNF), "sglang")["ebnf"] == GBNF


def test_unconstrained_bodies_are_unchanged() -> None:
    cfg = OpenAIConfig(("http://x",), "m", constraints="vllm")
    got = json.loads(encode_body(cfg, Request.chat("hi")))
    assert not {"response_format", "structured_outputs", "grammar"} & set(got)


@pytest.mark.parametrize(
    ("constraint", "mode", "endpoint", "why"),
    [
        (C.regex(r"\d+"), "openai", "chat", "regex output constraint"),
        (C.grammar(GBNF), "openai", "chat", "grammar output constraint"),
        (C.regex(r"^\d+$"), "llama.cpp", "chat", "anchors have no GBNF form"),
        (C.grammar('start: "a"'), "llama.cpp", "chat", "GBNF"),
        (C.json_schema(SCHEMA), "llama.cpp", "completions", "chat endpoint only"),
        (C.span_of("The cat sat."), "vllm", "chat", "span output constraint"),
        (C.span_of("The cat sat."), "openai", "completions", "span output constraint"),
    ],
)
def test_kinds_a_mode_cannot_send_are_refused(
    constraint: C.Constraint, mode: str, endpoint: str, why: str
) -> None:
    with pytest.raises(BackendError, match=why) as err:
        body(constraint, mode, endpoint)
    assert not err.value.retryable
    assert f"constraints={mode!r}" in str(err.value)


@pytest.mark.parametrize(
    ("mode", "constrains"),
    [
        ("openai", False),
        ("llama.cpp", True),
        ("sglang", False),
        ("vllm", True),
        ("vllm-guided", True),
    ],
)
def test_constrains_only_where_regexes_go_through(mode: str, constrains: bool) -> None:
    cfg = OpenAIConfig(("http://x",), "m", constraints=mode)  # type: ignore[arg-type]
    assert OpenAIBackend(cfg).capabilities.constrains is constrains


def test_llama_cpp_mode_sends_regexes_as_gbnf_and_applies_what_it_can_send() -> None:
    got = body(C.regex("(yes|no)!"), "llama.cpp")
    assert got["grammar"] == 'root ::= ("yes" | "no") "\\x21"\n'
    backend = OpenAIBackend(OpenAIConfig(("http://x",), "m", constraints="llama.cpp"))
    assert backend.applies_constraint(C.regex("[0-9]+"))
    assert backend.applies_constraint(C.grammar(GBNF))
    assert backend.applies_constraint(C.json_schema(SCHEMA))
    assert not backend.applies_constraint(C.regex("^[0-9]+$"))  # anchors
    assert not backend.applies_constraint(C.grammar('start: "a"'))  # Lark
    assert not backend.applies_constraint(C.span_of("The cat sat."))


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="constraints must be one of"):
        OpenAIConfig(("http://x",), "m", constraints="tgi")  # type: ignore[arg-type]


# --- over HTTP --------------------------------------------------------------------------------


def fast(*urls: str, **overrides: object) -> OpenAIBackend:
    cfg = OpenAIConfig(urls, "m", timeout=5.0, backoff_base=0.01, backoff_cap=0.05, **overrides)  # type: ignore[arg-type]
    return OpenAIBackend(cfg, rng=random.Random(0))


async def test_the_server_receives_the_response_format() -> None:
    req = Request(Request.chat("Paris as JSON").messages, constraint=C.json_schema(SCHEMA))
    async with fault_server(default=Reply(chunks=('{"city": "Paris", ', '"population": 2}'))) as s:
        async with fast(s.url) as b:
            text, _, finish = await complete(b, req)
    assert json.loads(text) == {"city": "Paris", "population": 2} and finish == "stop"
    [seen] = s.requests
    sent = json.loads(seen.body)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"] == {
        "name": "output", "schema": SCHEMA, "strict": True
    }  # fmt: skip


async def test_a_refused_constraint_sends_nothing() -> None:
    req = Request(Request.chat("a number").messages, constraint=C.regex(r"\d+"))
    async with fault_server() as s:
        async with fast(s.url) as b:
            with pytest.raises(BackendError, match="regex") as err:
                await complete(b, req)
    assert not err.value.retryable and s.requests == []


# --- the real llama.cpp servers (each test on both) ------------------------------------------


def llama_backend(server: LlamaServer, **overrides: object) -> OpenAIBackend:
    cfg = {"timeout": 120.0, "constraints": "llama.cpp", **overrides}
    return OpenAIBackend(OpenAIConfig((server.url,), server.model, **cfg))  # type: ignore[arg-type]


QUESTIONS = [
    "Give the capital of France and its population as JSON.",
    "Describe Tokyo as JSON with its name and population.",
    "What is the biggest city in Brazil? Answer in JSON.",
]


async def test_llama_json_schema_outputs_validate(llama: LlamaServer) -> None:
    schema = SCHEMA | {"additionalProperties": False}
    runs = [(q, Sampling(max_tokens=96, temperature=t, seed=s))
            for q in QUESTIONS for t, s in ((0.0, None), (0.8, 1), (0.8, 2))]  # fmt: skip
    async with llama_backend(llama) as b:
        for question, sampling in runs:
            req = Request(
                Request.chat(question).messages, sampling, constraint=C.json_schema(schema)
            )
            text, tokens, finish = await complete(b, req)
            assert finish == "stop" and tokens > 0, (question, text)
            jsonschema.validate(json.loads(text), schema)


async def test_llama_json_object_is_an_object(llama: LlamaServer) -> None:
    # an object without a schema bounds nothing: on llama-server the 135M model keeps adding
    # "population_density_per_..." keys to the first two questions' objects until the cap
    req = Request(Request.chat(QUESTIONS[2]).messages, Sampling(96), constraint=C.json_object())
    async with llama_backend(llama) as b:
        text, _, finish = await complete(b, req)
    assert finish == "stop" and isinstance(json.loads(text), dict)


async def test_llama_gbnf_grammar_is_obeyed(llama: LlamaServer) -> None:
    questions = ["Is the sky blue?", "Can fish fly?", "Is water wet?"]
    async with llama_backend(llama) as b:
        for question in questions:
            for seed in (None, 3):
                sampling = Sampling(64, temperature=0.9 if seed else 0.0, seed=seed)
                req = Request(Request.chat(question).messages, sampling, constraint=C.grammar(GBNF))
                text, _, finish = await complete(b, req)
                assert finish == "stop" and GBNF_LANGUAGE.fullmatch(text), (question, text)


async def test_llama_openai_mode_schema(llama: LlamaServer) -> None:
    """OpenAI's `json_schema` response_format: llama-server enforces it; llama-cpp-python's
    server does not know it (it answers 500 with a validation error), so the request fails
    instead of running unconstrained."""
    req = Request(Request.chat(QUESTIONS[0]).messages, constraint=C.json_schema(SCHEMA))
    async with llama_backend(llama, constraints="openai", max_retries=0) as b:
        if llama.kind == "llama-server":
            text, _, finish = await complete(b, req)
            assert finish == "stop", text
            jsonschema.validate(json.loads(text), SCHEMA)
            return
        with pytest.raises(BackendError, match="response_format"):
            await complete(b, req)


REGEXES = [
    ("Is the sky blue? Answer yes or no.", r"(yes|no), because [a-z ]{1,40}\."),
    ("How many legs does a spider have?", r"[0-9]{1,3} legs"),
    ("Name three fruits.", skeleton_constraint(3, min_points=3).source),
    # a skeleton continued after its first point with repeats of it refused
    ("Name three fruits.", skeleton_constraint(3, 3, 2, ("Apple", "Apples")).source),
    # seven earlier points: llama.cpp refused this grammar before groups became rules
    ("Name some fruits.", skeleton_constraint(8, 2, 2, [f"Fruit {k} in a list" for k in "ABCDEFG"]).source),  # noqa: E501
]


async def test_llama_regexes_are_obeyed_as_gbnf(llama: LlamaServer) -> None:
    """Each regex, written as GBNF, bounds what the server writes: every output matches the
    regex in full, greedy and sampled (the skeleton's numbered points included)."""
    async with llama_backend(llama) as b:
        for question, pattern in REGEXES:
            for seed in (None, 5):
                sampling = Sampling(96, temperature=0.9 if seed else 0.0, seed=seed)
                req = Request(
                    Request.chat(question).messages, sampling, constraint=C.regex(pattern)
                )
                text, _, finish = await complete(b, req)
                assert finish == "stop" and re.fullmatch(pattern, text), (question, text)
