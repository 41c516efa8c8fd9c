"""The self-drafter: the target's own weights, cheaper, and which layers it skips.

Self-speculation drafts with the target itself, made cheaper two ways, both training-free:
on the CPU its projections packed to int4 (`drafter_model`: a decode step streams a quarter
of the bytes; the GGUF's own 4-bit blocks where the target came from one), and a set of its
layers skipped (Draft & Verify / LayerSkip-style self-speculation). The skipped set is chosen
on a calibration text by measuring exactly what drafting sees: for every position, the
target's own K/V for the text before it (what the engine's cache holds) and the drafter's
forward for that position alone; a draft is kept when its argmax equals the target's
(`agreement`). Calibration:

1. each layer's influence on the text: 1 - cos(its input, its output), averaged over the
   tokens (ShortGPT's block influence; one forward of the target);
2. the least influential layers skipped together, one more at a time, from none (one forward
   each), until the expected speed-up has fallen twice in a row;
3. the count whose expected speed-up is highest, from measured step times: with acceptance a
   per draft and a draft step costing c of a target step, k drafts give
   (1 - a^(k+1)) / (1 - a) tokens for 1 + k c steps' worth of time (a verify of k + 1 tokens
   costs about one decode step on a CPU, where steps stream weights), best k taken. When no
   count pays, the answer is () and the filler decodes one token per step.

`layers_for` caches the answer on disk by a fingerprint of the model's weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.quant import Packed, quantize


def drafter_model(
    target: CompactLM, blocks: dict[str, tuple[Tensor, Tensor, Tensor]] | None = None
) -> CompactLM:
    """The self-drafter's weights: on the CPU, a copy of the target with int4 projections
    (from the GGUF's own Q4 `blocks` where given; the embedding, norms and rotary tables
    shared); the target itself where it is already packed or not on the CPU."""
    packed = isinstance(target.layers[0].qkv, Packed)
    if packed or target.device.type != "cpu" or target.dtype != torch.float32:
        return target
    drafter = copy.copy(target)
    quantize(drafter, "int4", blocks)
    return drafter


def _scratch(model: CompactLM, n: int) -> tuple[Tensor, Tensor]:
    s = model.shapes
    size = (s.layers, 1, s.kv_heads, 2 * n, s.head_dim)
    return (
        torch.zeros(size, dtype=model.dtype, device=model.device),
        torch.zeros(size, dtype=model.dtype, device=model.device),
    )


def _full(
    model: CompactLM,
    ids: Tensor,
    caches: tuple[Tensor, Tensor],
    trace: list[Tensor] | None = None,
) -> Tensor:
    """The full model over the text (columns 0..n-1): its argmax at every position."""
    n, dev = len(ids), model.device
    at = torch.arange(n, device=dev)
    mask = torch.zeros(1, 1, n, 2 * n, dtype=torch.bool, device=dev)
    mask[0, 0, :, :n] = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
    step = StepInput(ids, at, torch.zeros_like(at), at, at, mask, at)
    return model.run(step, caches[0], caches[1], None, trace).argmax(dim=-1)


@torch.inference_mode()
def agreement(
    model: CompactLM,
    tokens: Sequence[int],
    layers: Sequence[int],
    reference: tuple[Tensor, tuple[Tensor, Tensor]] | None = None,
    drafter: CompactLM | None = None,
) -> float:
    """The share of positions where `drafter` (default: the model) running only `layers`
    for that position (the model's K/V for the text before it) predicts the model's next
    token."""
    return float(matches(model, tokens, layers, reference, drafter).float().mean())


@torch.inference_mode()
def matches(
    model: CompactLM,
    tokens: Sequence[int],
    layers: Sequence[int],
    reference: tuple[Tensor, tuple[Tensor, Tensor]] | None = None,
    drafter: CompactLM | None = None,
) -> Tensor:
    """Per position, whether `agreement` counts it (bool tensor)."""
    ids = torch.tensor(list(tokens), dtype=torch.long, device=model.device)
    n, dev = len(ids), model.device
    if reference is None:
        caches = _scratch(model, n)
        reference = (_full(model, ids, caches), caches)
    want, (k, v) = reference
    at = torch.arange(n, device=dev)
    mask = torch.zeros(1, 1, n, 2 * n, dtype=torch.bool, device=dev)
    mask[0, 0, :, :n] = torch.ones(n, n, dtype=torch.bool, device=dev).tril(-1)
    mask[0, 0, at, n + at] = True  # each position sees its own skipping column
    step = StepInput(ids, at, torch.zeros_like(at), n + at, at, mask, at)
    got = (drafter or model).forward(step, k, v, list(layers)).argmax(dim=-1)
    return got == want


def step_seconds(model: CompactLM, layers: Sequence[int] | None, reps: int = 7) -> float:
    """Median time of a one-token decode step over 64 written columns (`layers` only)."""
    s, dev = model.shapes, model.device
    size = (s.layers, 1, s.kv_heads, 72, s.head_dim)
    k = torch.zeros(size, dtype=model.dtype, device=dev)
    v = torch.zeros_like(k)
    one = torch.tensor([64], device=dev)
    mask = torch.zeros(1, 1, 1, 72, dtype=torch.bool, device=dev)
    mask[..., :65] = True
    step = StepInput(torch.tensor([5], device=dev), one, one * 0, one, one * 0, mask, one * 0)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        model.forward(step, k, v, layers)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[reps // 2]


def speedup(accept: float, cost: float, k_max: int = 8) -> float:
    """Expected tokens per unit of time relative to plain decoding, best draft length
    (1 to k_max drafts; below 1.0 where drafting loses)."""
    best = 0.0
    for k in range(1, k_max + 1):
        tokens = float(k + 1) if accept >= 1.0 else (1 - accept ** (k + 1)) / (1 - accept)
        best = max(best, tokens / (1 + k * cost))
    return best


def influence(trace: list[Tensor]) -> list[float]:
    """Per layer, 1 - cos(input, output) of the hidden states, averaged over tokens."""
    return [
        float(1 - F.cosine_similarity(a.float(), b.float(), dim=-1).mean())
        for a, b in zip(trace, trace[1:], strict=False)
    ]


@torch.inference_mode()
def calibrate(
    model: CompactLM,
    tokens: Sequence[int],
    drafter: CompactLM | None = None,
    most: float = 0.6,
    cost: Callable[[int], float] | None = None,
) -> tuple[int, ...]:
    """The layers the self-drafter (`drafter`'s weights, default the model's) runs, sorted:
    the set with the highest expected speed-up on `tokens`, skipping at most `most` of the
    layers; () when drafting is not expected to pay at all. `cost(kept layers)`: a draft
    step's time over a target step's (default: measured here)."""
    drafter = drafter or model
    ids = torch.tensor(list(tokens), dtype=torch.long, device=model.device)
    caches = _scratch(model, len(ids))
    trace: list[Tensor] = []
    ref = (_full(model, ids, caches, trace), caches)
    n = model.shapes.layers
    weight = influence(trace)
    order = sorted(range(n), key=lambda i: (weight[i], i))
    cost = cost or _measured_cost(model, drafter)
    best: tuple[int, ...] = ()
    best_gain, last, falls = 1.0, 0.0, 0
    for m in range(0 if drafter is not model else 1, int(most * n) + 1):
        kept = tuple(sorted(set(range(n)) - set(order[:m])))
        accept = agreement(model, tokens, kept, ref, drafter)
        gain = speedup(accept, cost(len(kept)))
        if gain > best_gain:
            best, best_gain = kept, gain
        falls = falls + 1 if gain < last else 0
        last = gain
        if falls == 2:
            break
    return best


def _measured_cost(model: CompactLM, drafter: CompactLM) -> Callable[[int], float]:
    """A draft step's time over a target step's, linear in the layers the drafter runs."""
    full = step_seconds(model, None)
    bare, whole = step_seconds(drafter, []), step_seconds(drafter, None)
    n = model.shapes.layers
    return lambda kept: (bare + (whole - bare) * kept / n) / full


def fingerprint(model: CompactLM) -> str:
    """A short digest of the model's shapes and a sample of its weights."""
    h = hashlib.sha256(repr(model.shapes).encode())
    for t in (model.embed, model.norm, model.layers[0].ln1, model.layers[-1].ln2):
        h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_file() -> Path:
    root = os.environ.get("PARAFILL_CACHE") or Path.home() / ".cache" / "parafill"
    return Path(root) / "self-layers.json"


def layers_for(
    model: CompactLM, tokens: Sequence[int], drafter: CompactLM | None = None
) -> tuple[int, ...]:
    """`calibrate`'s answer for this model and drafter, from the disk cache when it was
    found before (keyed by their fingerprints), else calibrated on `tokens` and stored."""
    path = _cache_file()
    key = fingerprint(model) + ("" if drafter in (None, model) else "-packed")
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), list):
        return tuple(int(i) for i in known[key])
    layers = calibrate(model, tokens, drafter)
    known = known if isinstance(known, dict) else {}
    known[key] = list(layers)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: calibrate again next time
    return layers
