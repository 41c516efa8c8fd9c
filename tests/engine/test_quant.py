"""Weight formats (quant.py, gguf_q4.py) on the real kernels: packing round trips, the embedded
GGUF's own 4-bit blocks reproduce its loaded weights exactly, and every packing mode and filler
stays token-exact against plain one-at-a-time decoding *with the same weights*."""

from __future__ import annotations

import pytest
import torch
from engine_ref import Chat, Run, Smol, drain

from parafill.backends.engine.engine import Engine, EngineConfig
from parafill.backends.engine.fallback import build_engine
from parafill.backends.engine.gguf_q4 import q4_blocks
from parafill.backends.engine.model import CompactLM
from parafill.backends.engine.quant import (
    GROUP,
    Packed,
    dequantize,
    pack_bf16,
    pack_int4,
    pack_int8,
    quantize,
)
from parafill.backends.engine.sampling import GenParams
from parafill.backends.engine.weights import default_gguf
from parafill.fillers import make


def test_packed_weights_round_trip_within_their_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.05
    w8 = dequantize(pack_int8(w))
    step8 = w.abs().amax(dim=1, keepdim=True) / 127  # its scale, itself rounded to bf16
    assert ((w8 - w).abs() <= step8 * 0.5 + w.abs() * 2**-8).all()
    w4 = dequantize(pack_int4(w))
    g = w.view(96, -1, GROUP)
    step4 = ((g.amax(-1) - g.amin(-1)) / 15).repeat_interleave(GROUP, 1)
    # half a step, plus the bf16 rounding of the group's scale and zero and of the read-out
    assert ((w4 - w).abs() <= step4 * 0.5 + w.abs().amax() * 2**-7).all()
    assert torch.equal(dequantize(pack_bf16(w)), w.bfloat16().float())
    x = torch.randn(5, 128)
    for p in (pack_int8(w), pack_int4(w)):
        want = x.bfloat16().float() @ dequantize(p).T
        assert torch.allclose(p.matmul(x), want, rtol=2e-2, atol=2e-2)


def test_int4_refuses_inputs_not_in_groups_of_32() -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        pack_int4(torch.randn(8, 40))


def test_the_embedded_gguf_blocks_reproduce_every_projection_exactly(smol: Smol) -> None:
    hf, _ = smol
    lm = CompactLM(hf, 64)
    blocks = q4_blocks(default_gguf(), lm)
    assert len(blocks) == 4 * lm.shapes.layers  # qkv, o, gate_up, down of every layer
    report = quantize(lm, "int4", blocks)
    assert report.from_gguf == 4 * lm.shapes.layers
    assert all(isinstance(layer.qkv, Packed) for layer in lm.layers)
    assert isinstance(lm.lm_head, Packed) and lm.lm_head.kind == "int8"


def test_blocks_that_do_not_reproduce_the_weights_are_not_used(smol: Smol) -> None:
    hf, _ = smol
    lm = CompactLM(hf, 64)
    lm.layers[0] = type(lm.layers[0])(
        **{**lm.layers[0].__dict__, "down": lm.layers[0].down.clone() * 1.001}  # type: ignore[union-attr]
    )  # an adapter-like change to one projection
    blocks = q4_blocks(default_gguf(), lm)
    assert "layers.0.down" not in blocks and "layers.0.qkv" in blocks


def test_a_weight_format_the_fallback_cannot_use_is_refused(gpt2: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="compact forward"):
        build_engine(gpt2, EngineConfig(), 64, lambda _m: None, "int8")
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        build_engine(gpt2, EngineConfig(), 64, lambda _m: None, "int3")


def _engine(hf: torch.nn.Module, fmt: str, mode: str = "rows", **cfg: object) -> Engine:
    lm = CompactLM(hf, 512)
    blocks = q4_blocks(default_gguf(), lm) if fmt == "int4" else None
    quantize(lm, fmt, blocks)
    if mode.endswith("-static"):
        cfg["decode"] = "static"
    config = EngineConfig(mode=mode.removesuffix("-static"), **cfg)  # type: ignore[arg-type]
    return Engine(lm, config)


N = 32


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_batched_rows_decoding_is_exact_with_the_same_weights(
    smol: Smol, chat: Chat, fmt: str
) -> None:
    hf, tok = smol
    eos = frozenset({int(tok.eos_token_id)})
    prompts = [
        chat("Repeat after me: the quick brown fox jumps over the lazy dog."),
        chat("Name three colours."),
        chat("Write one sentence about the sea."),
    ]
    # the int8 / int4 kernels are batch-invariant (a row's result does not depend on the
    # others), so batched rows decoding equals one request at a time bit for bit. Their bf16
    # activations turn any fp32 rounding difference into a possible token flip: tree packing,
    # prefix sharing and draft verification change attention's summation order, so those are
    # not exact with these formats (README; benchmarks/quant_quality.py measures agreement)
    same = {"budget_tokens": 2048, "rows": 4, "retain": False, "min_share": 10**6}
    solo = _engine(hf, fmt, **same)
    want = []
    for p in prompts:  # the reference: one request at a time, one token per forward
        run = Run()
        i = solo.submit(p, GenParams(N, eos_ids=eos), make("autoregressive"))
        drain(solo, run, [i])
        want.append(run.tokens[i])
    for mode in ("rows", "rows-static"):
        eng = _engine(hf, fmt, mode, **same)
        ids = [eng.submit(p, GenParams(N, eos_ids=eos), make("autoregressive")) for p in prompts]
        run = Run()
        drain(eng, run, ids)
        assert [run.tokens[i] for i in ids] == want, (fmt, mode)
