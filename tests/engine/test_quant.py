"""Weight formats (quant.py, gguf_q4.py) on the real kernels: packing round trips, the embedded
GGUF's own 4-bit blocks reproduce its loaded weights exactly (and int8 holds the same values),
a packed head's refined top logits are the dense head's, the packed kernels are batch-invariant,
(token-exactness across packing modes: test_quant_exact.py)."""

from __future__ import annotations

import pytest
import torch
from engine_ref import Smol

from parafill.backends.engine import kernels
from parafill.backends.engine.engine import EngineConfig
from parafill.backends.engine.fallback import build_engine
from parafill.backends.engine.gguf_q4 import q4_blocks
from parafill.backends.engine.model import REFINE, CompactLM, _refine
from parafill.backends.engine.quant import (
    GROUP,
    Packed,
    dequantize,
    pack_bf16,
    pack_int4,
    pack_int4_blocks,
    pack_int8,
    pack_int8_blocks,
    pack_int8_channels,
    quantize,
)
from parafill.backends.engine.weights import default_gguf


def test_packed_weights_round_trip_within_their_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.05
    wc = dequantize(pack_int8_channels(w))
    step_c = w.abs().amax(dim=1, keepdim=True) / 127  # its scale, itself rounded to bf16
    assert ((wc - w).abs() <= step_c * 0.5 + w.abs() * 2**-8).all()
    g = w.view(96, -1, GROUP)
    span = (g.amax(-1) - g.amin(-1)).repeat_interleave(GROUP, 1)
    # half a step, plus the bf16 rounding of the group's scale and zero and of the read-out
    w4 = dequantize(pack_int4(w))
    assert ((w4 - w).abs() <= span / 15 * 0.5 + w.abs().amax() * 2**-7).all()
    w8 = dequantize(pack_int8(w))
    assert ((w8 - w).abs() <= span / 255 * 0.5 + w.abs().amax() * 2**-7).all()
    assert (w8 - w).abs().mean() < (w4 - w).abs().mean() / 8  # 8 bits per group, not 4
    assert torch.equal(dequantize(pack_bf16(w)), w.bfloat16().float())
    x = torch.randn(5, 128)
    for p in (pack_int8(w), pack_int4(w), pack_int8_channels(w)):
        dense = dequantize(p)
        if p.kind in ("q4", "q8"):  # parafill's kernels round each group of x to int16
            amax = x.view(5, -1, GROUP).abs().amax(-1).repeat_interleave(GROUP, 1)
            bound = (amax / 32767 / 2) @ dense.abs().T + 1e-5  # half a step of x per input
            assert ((p.matmul(x) - x.double() @ dense.double().T).abs() <= bound).all()
        else:  # torch's kernels round x to bf16
            want = x.bfloat16().float() @ dense.T
            assert torch.allclose(p.matmul(x), want, rtol=2e-2, atol=2e-2)


def test_int8_from_q4_blocks_holds_the_same_values_as_int4() -> None:
    """A Q4_1 block kept at 8 bits (q * 17 over d / 17) is the same weight as at 4 bits, up to
    the bf16 rounding of the scales."""
    torch.manual_seed(1)
    q = torch.randint(0, 16, (64, 96), dtype=torch.int32)
    d, m = torch.rand(64, 3) * 0.01, torch.randn(64, 3) * 0.02
    dense = (d.repeat_interleave(GROUP, 1) * q + m.repeat_interleave(GROUP, 1)).float()
    w4 = dequantize(pack_int4_blocks(q, d, m))
    w8 = dequantize(pack_int8_blocks(q, d, m, levels=16))
    assert torch.allclose(w8, dense, atol=dense.abs().max().item() * 2**-7)
    assert torch.allclose(w8, w4, atol=dense.abs().max().item() * 2**-7)


def test_a_packed_heads_top_logits_are_the_dense_heads() -> None:
    """`_refine` recomputes a packed head's REFINE highest logits from the dense weight: those
    equal the dense head's, and the argmax is the dense head's wherever it is among them."""
    torch.manual_seed(2)
    dense = torch.randn(4000, 64) * 0.1
    x = torch.randn(300, 64)
    want = x @ dense.T
    packed = pack_int8_channels(dense).matmul(x).float()
    got = _refine(packed.clone(), x, dense)
    top = packed.topk(REFINE, dim=-1).indices
    assert torch.allclose(got.gather(1, top), want.gather(1, top), atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert not torch.equal(packed.argmax(-1), want.argmax(-1))  # what the refinement fixes


def test_packed_kernels_are_batch_invariant() -> None:
    """Each packed format the engine calls exact (int4, int8, the int8 head with its refined
    top logits) gives a row the same bits whatever rows are beside it, on any x86-64 CPU: the
    kernels compute each row on its own. bf16 is left out: it runs through oneDNN's bf16 GEMM,
    whose blocking depends on the CPU and the row count (one Xeon without avx512_bf16 changed
    a row's bits at 5 rows), so bf16 is documented as inexact and nothing relies on it."""
    torch.manual_seed(3)
    w, x = torch.randn(384, 256) * 0.05, torch.randn(24, 256)
    for p in (pack_int4(w), pack_int8(w), pack_int8_channels(w)):
        alone = torch.cat([p.matmul(x[i : i + 1]) for i in range(24)])
        for m in (2, 5, 8, 24):
            assert torch.equal(p.matmul(x[:m]), alone[:m]), (p.kind, m)
    head = pack_int8_channels(w)
    alone = torch.cat([_refine(head.matmul(x[i : i + 1]), x[i : i + 1], w) for i in range(24)])
    assert torch.equal(_refine(head.matmul(x), x, w), alone)


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
    head_kind = "q8" if kernels.available() else "int8c"  # 8 bits per group, or per channel
    assert isinstance(lm.lm_head, Packed) and lm.lm_head.kind == head_kind
    assert lm.head_exact is not None and lm.head_exact.data_ptr() == lm.embed.data_ptr()  # tied


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


def test_the_ggufs_blocks_are_read_once_then_from_the_cache(
    smol: Smol, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
    lm = CompactLM(smol[0], 64)
    first = q4_blocks(default_gguf(), lm)  # parses the GGUF, writes the cache
    cached = list((tmp_path / "q4").glob("*.safetensors"))  # type: ignore[operator]
    assert len(cached) == 1
    import gguf

    monkeypatch.setattr(gguf, "GGUFReader", None)  # a second parse would fail loudly
    again = q4_blocks(default_gguf(), lm)
    assert first.keys() == again.keys() and len(first) == 4 * lm.shapes.layers
    assert all(torch.equal(a, b) for k in first for a, b in zip(first[k], again[k], strict=True))
    monkeypatch.undo()  # the GGUF reader back, the cache where it was
    monkeypatch.setenv("PARAFILL_CACHE", str(tmp_path))
    cached[0].write_bytes(b"not a safetensors file")  # a damaged cache is read past, rewritten
    third = q4_blocks(default_gguf(), lm)
    assert all(torch.equal(a, b) for k in first for a, b in zip(first[k], third[k], strict=True))
    assert q4_blocks(default_gguf(), lm).keys() == first.keys()  # from the rewritten cache
    assert cached[0].stat().st_size > 10**6
