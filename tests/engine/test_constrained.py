"""Constrained decoding in the engine on the embedded SmolLM2 (fp32, CPU): every packing mode
and filler gives exactly the tokens of a plain reference loop that applies the same
constraint mask to the HF forward's logits, every output parses, and a constraint that allows
nothing ends its own request with a clear error while its step-mates go on."""

from __future__ import annotations

import json

import pytest
import torch
from engine_ref import Chat, Run, Smol, drain, hf_logits, make_engine

from parafill import constraints as C
from parafill.backends.engine.sampling import GenParams
from parafill.fillers import make

MODES = ["rows", "tree", "rows-static", "tree-static"]
N = 64
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


_REFS: dict[tuple[tuple[int, ...], C.Constraint], list[int]] = {}


def _ref(hf: torch.nn.Module, prompt: list[int], n: int, m: C.Matcher, eos: int) -> list[int]:
    """Greedy with the constraint's mask applied each step, one token at a time."""
    out: list[int] = []
    row = C.allocate_bitmask(1, m.n_vocab)
    while len(out) < n:
        logits = hf_logits(hf, prompt + out)[-1:].clone()
        assert m.fill(row[0])
        C.apply_bitmask(logits, row)
        tok = int(logits.argmax())
        if tok == eos:
            break
        assert m.accept(tok)
        out.append(tok)
        if m.is_terminated():
            break
    return out


@pytest.fixture(scope="module")
def info(smol: Smol) -> C.TokenizerInfo:
    hf, tok = smol
    return C.tokenizer_info(tok, n_vocab=hf.config.vocab_size)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("filler", ["autoregressive", "ngram"])
def test_constrained_greedy_equals_the_masked_reference(
    smol: Smol, chat: Chat, info: C.TokenizerInfo, mode: str, filler: str
) -> None:
    hf, tok = smol
    eos = int(tok.eos_token_id)
    cases = [
        (
            chat("Give the capital of France and its population as JSON."),
            C.json_schema(
                SCHEMA
                | {
                    "properties": {
                        "city": {"type": "string", "maxLength": 20},
                        "population": {"type": "integer", "maximum": 10**9},
                    }
                }
            ),
        ),
        (chat("Write today's date."), C.regex(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]")),
        (chat("Is the sky blue? Answer yes or no."), C.grammar('start: "yes" | "no" | "maybe"')),
        (chat("Name a fruit.", "Answer in one word."), None),  # an unconstrained step-mate
    ]
    eng, _ = make_engine(hf, mode=mode, budget_tokens=2048, rows=4, speculate="always")
    ids = [
        eng.submit(p, GenParams(N, eos_ids=frozenset({eos})), make(filler),
                   C.compile(c, info) if c else None)
        for p, c in cases
    ]  # fmt: skip
    run = Run()
    drain(eng, run, ids)
    if mode.endswith("static") and filler == "autoregressive":
        # the JSON request's decode steps ran at static shapes with its mask (all but those
        # that shared a step with another request's prefill), step-mates constrained or not
        assert eng.decoder is not None
        assert eng.decoder.replays >= len(run.tokens[ids[0]]) // 2, eng.decoder.replays
    for i, (p, c) in zip(ids, cases, strict=True):
        if c is None:
            continue
        key = (tuple(p), c)
        if key not in _REFS:
            _REFS[key] = _ref(hf, p, N, C.compile(c, info).matcher(), eos)
        want = _REFS[key]
        assert run.tokens[i] == want, (c.kind, tok.decode(run.tokens[i]), tok.decode(want))
    assert run.finish[ids[0]] == "stop"
    city = json.loads(tok.decode(run.tokens[ids[0]]))
    assert set(city) == {"city", "population"} and isinstance(city["population"], int)
    assert tok.decode(run.tokens[ids[2]]) in ("yes", "no", "maybe")


@pytest.mark.parametrize("mode", ["rows", "rows-static"])
def test_a_constraint_that_allows_nothing_fails_only_its_request(
    smol: Smol, chat: Chat, info: C.TokenizerInfo, mode: str
) -> None:
    hf, tok = smol
    eos = int(tok.eos_token_id)
    c = C.compile(C.regex("ab"), info)
    eng, _ = make_engine(hf, mode=mode, budget_tokens=2048, rows=4)
    p = chat("Say something.")
    bad = eng.submit(p, GenParams(10, eos_ids=frozenset({eos})), None, c)
    fine = eng.submit(p, GenParams(6, eos_ids=frozenset({eos})))
    # a dead end: the library's own consume of a refused token leaves its matcher in an
    # error state that allows nothing (what a grammar with no way on does at a step)
    seq = next(s for s in eng._inbox.submitted if s.id == bad)
    assert seq.matcher is not None
    seq.matcher.lib.consume_token(tok.encode("x")[0])
    assert seq.matcher.error() is not None
    finish, errors, fine_tokens = {}, {}, []
    for _ in range(50):
        for o in eng.step():
            finish[o.seq_id] = o.finish or finish.get(o.seq_id)
            errors[o.seq_id] = o.error
            fine_tokens += o.tokens if o.seq_id == fine else []
        if len([f for f in finish.values() if f]) == 2:
            break
    assert finish[bad] == "error" and "constraint allows no token" in str(errors[bad])
    assert finish[fine] == "length" and len(fine_tokens) == 6


RECURSIVE = [
    {  # an object that must hold itself: no finite output satisfies it
        "$ref": "#/$defs/n",
        "$defs": {
            "n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}
        },
    },
    {  # an array whose every item is a non-empty array of the same kind
        "$ref": "#/$defs/a",
        "$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}, "minItems": 1}},
    },
]


@pytest.mark.parametrize("schema", RECURSIVE, ids=["object", "array"])
@pytest.mark.parametrize("mode", ["rows", "tree"])
def test_an_unsatisfiable_schema_ends_only_its_own_request(
    smol: Smol, chat: Chat, info: C.TokenizerInfo, mode: str, schema: dict[str, object]
) -> None:
    """A schema with no finite instance reaches a dead end mid-output; that request ends with
    an error and its six step-mates decode exactly what they decode alone."""
    hf, tok = smol
    eos = frozenset({int(tok.eos_token_id)})
    c = C.compile(C.json_schema(schema), info)
    prompts = [chat(f"Count to {i}.") for i in range(2, 8)]
    alone, _ = make_engine(hf, mode=mode, budget_tokens=4096, rows=8)
    ref = Run()
    ids = [alone.submit(p, GenParams(24, eos_ids=eos)) for p in prompts]
    drain(alone, ref, ids, 400)
    eng, _ = make_engine(hf, mode=mode, budget_tokens=4096, rows=8)
    run = Run(errors_ok=True)
    bad = eng.submit(chat("Write JSON."), GenParams(200, eos_ids=eos), None, c)
    mates = [eng.submit(p, GenParams(24, eos_ids=eos)) for p in prompts]
    drain(eng, run, [bad, *mates], 400)
    assert run.finish[bad] == "error", run.tokens[bad]
    assert "output constraint" in str(run.errors[bad])
    assert [run.tokens[i] for i in mates] == [ref.tokens[i] for i in ids]
    assert [run.finish[i] for i in mates] == [ref.finish[i] for i in ids]
