"""parafill's CPU kernels (kernels.c) against float64 references: packed linear layers within
the bound their int8 activations allow, the SIMD path equal to the portable C path bit for bit
(so a result never depends on which one this CPU runs), rows computed independently of each
other, ordered attention equal to softmax attention and independent of where its keys sit, and
whole fused layers close to the same model's per-operation forward."""

from __future__ import annotations

import pytest
import torch

from parafill.backends.engine import kernels
from parafill.backends.engine.model import CompactLM, Keys, StepInput
from parafill.backends.engine.quant import quantize

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs parafill's CPU kernels")

SHAPES = [(1536, 576), (10, 96), (7, 64), (5, 160)]  # odd groups, outputs not a multiple of 4


def _weights(n: int, k: int, bits: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0, 16) if bits == 4 else (-128, 128)
    q = torch.randint(lo, hi, (n, k), generator=g, dtype=torch.int32)
    d = torch.rand(n, k // 32, generator=g) * 0.01
    m = -torch.rand(n, k // 32, generator=g) * 0.05
    return q, d, m


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_packed_linear_matches_float64_within_its_activation_rounding(
    n: int, k: int, bits: int
) -> None:
    q, d, m = _weights(n, k, bits, seed=n + k + bits)
    blob = kernels.block(q, d, m, bits)
    back = kernels.unblock(blob, n, k, bits)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, d, m), strict=True))
    w = (q * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)).double()
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(1))
    y = kernels.linear(x, blob, n, bits)
    amax = x.view(9, -1, 32).abs().amax(-1).repeat_interleave(32, 1).double()
    bound = (amax / 32767 / 2) @ w.abs().T + 1e-4 * (x.double().abs() @ w.abs().T)
    err = (y.double() - x.double() @ w.T).abs()
    assert (err <= bound).all()
    assert (err > 0).any()  # the activations are rounded: a bound that could not fail is no test
    # each row alone gives the same bits; the portable path gives the SIMD path's bits
    alone = torch.cat([kernels.linear(x[i : i + 1], blob, n, bits) for i in range(9)])
    assert torch.equal(alone, y)
    assert torch.equal(kernels.linear(x, blob, n, bits, portable=True), y)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """float64 softmax attention of one query (H, D) over keys/values (Hkv, L, D)."""
    group = q.shape[0] // keys.shape[0]
    k = keys.double().repeat_interleave(group, 0)
    v = values.double().repeat_interleave(group, 0)
    w = torch.softmax((k @ q.double()[:, :, None])[..., 0] / q.shape[1] ** 0.5, dim=-1)
    return (w[:, None, :] @ v)[:, 0]


@pytest.mark.parametrize("dim", [16, 32, 64, 128, 24])
def test_ordered_attention_is_softmax_and_ignores_where_keys_sit(dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    heads, kv_heads, width, length = 6, 2, 96, 37
    q = torch.randn(1, heads, dim, generator=g)
    keys = torch.randn(kv_heads, length, dim, generator=g)
    values = torch.randn(kv_heads, length, dim, generator=g)
    outs = []
    for row, cols in ((0, list(range(length))), (2, torch.randperm(width, generator=g)[:length])):
        kc = torch.randn(3, kv_heads, width, dim, generator=g)  # other data everywhere else
        vc = torch.randn(3, kv_heads, width, dim, generator=g)
        at = torch.tensor(cols, dtype=torch.long)
        kc[row][:, at], vc[row][:, at] = keys, values
        arr = torch.tensor(cols, dtype=torch.int32)
        meta = (
            torch.tensor([row], dtype=torch.int32),
            torch.tensor([arr.data_ptr()], dtype=torch.int64),
            torch.tensor([length], dtype=torch.int32),
        )
        outs.append(kernels.attention(q, kc, vc, meta, dim**-0.5)[0])
    assert torch.allclose(outs[0].double(), _attend(q[0], keys, values), atol=1e-5)
    assert torch.equal(outs[0], outs[1])  # same keys in the same order: the same bits


def test_fused_layers_match_the_per_operation_forward(
    tiny_models: dict[str, torch.nn.Module], smol: tuple[torch.nn.Module, object]
) -> None:
    """The one-call layers (`kernels.Layers`) against the same packed model run operation by
    operation in torch around the kernels' projections and attention: the same math in another
    order, so close, not equal: a last-bit difference can move one int8 rounding of an
    activation, and on the embedded model (outlier channels of ~600) one such rounding moves a
    layer's output by ~2% (a 1e-7 relative change of its input does as much on either path).
    Tiny models (with biases, Qwen2's and Llama's): the first layer's K/V and output; the
    embedded model (head_dim 64, 3:1 grouped heads): the first layer's K/V."""
    for kind in ("llama", "qwen2", "llama-bias-hd32"):
        lm = CompactLM(tiny_models[kind], 64)
        quantize(lm, "int4")
        assert lm._fused_layers() is not None, kind
        (got, got_kv), (want, want_kv) = _forward(lm, True, [0]), _forward(lm, False, [0])
        assert torch.allclose(got, want, atol=1e-2 * want.abs().max().item()), kind
        for a, b in zip(got_kv, want_kv, strict=True):
            assert torch.allclose(a, b, atol=1e-5), kind
    lm = CompactLM(smol[0], 64)
    quantize(lm, "int4")
    (_, got_kv), (_, want_kv) = _forward(lm, True, [0]), _forward(lm, False, [0])
    for a, b in zip(got_kv, want_kv, strict=True):
        assert torch.allclose(a[0], b[0], atol=1e-2 * b[0].abs().max().item())
        assert a[0].abs().sum() > 0 and not a[1:].any()  # layer 0 written, the others not


def _forward(
    lm: CompactLM, fused: bool, layers: list[int] | None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """12 tokens in one row: the logits (or with `layers`, the hidden state after them) and
    the caches."""
    s = lm.shapes
    n = 12
    caches = [torch.zeros(s.layers, 1, s.kv_heads, 16, s.head_dim) for _ in range(2)]
    cols = torch.arange(n, dtype=torch.int32)
    keys = Keys(
        torch.zeros(n, dtype=torch.int32),
        cols,
        torch.full((n,), cols.data_ptr(), dtype=torch.int64),
        torch.arange(1, n + 1, dtype=torch.int32),
    )
    at = torch.arange(n)
    tokens = torch.randint(0, s.vocab, (n,), generator=torch.Generator().manual_seed(5))
    step = StepInput(tokens, at, at * 0, at, at, None, at, keys=keys)
    saved = lm._fused
    if not fused:
        lm._fused = (id(lm.layers), None)
    trace: list[torch.Tensor] | None = [] if layers is not None else None
    try:
        with torch.inference_mode():
            out = lm.run(step, caches[0], caches[1], layers, trace)
    finally:
        lm._fused = saved
    return (trace[-1] if trace is not None else out), caches
