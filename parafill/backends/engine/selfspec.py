"""Which layers a self-drafter skips: a short, training-free calibration.

Self-speculation drafts with the target's own layers minus a set it skips (Draft & Verify,
LayerSkip-style self-speculation without training). The set is chosen on a calibration text
by measuring exactly what drafting sees: for every position, the target's own K/V for the
text before it (what the engine's cache holds) and the skipping forward for that position
alone; a draft is kept when its argmax equals the full model's (`agreement`). Calibration:

1. each layer's cost when skipped alone (one forward per layer);
2. the cheapest layers skipped together, one more at a time (one forward per count);
3. the count whose expected speed-up is highest: with acceptance a per draft and a drafter
   costing c of a target forward, k drafts give (1 - a^(k+1)) / (1 - a) tokens for
   1 + k c forwards' worth of time (a verify of k + 1 tokens costs about one decode step on
   a CPU, where steps stream weights), best k taken.

The result depends only on the model and the text; `layers_for` caches it on disk by a
fingerprint of the model's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from parafill.backends.engine.model import CompactLM, StepInput


def _scratch(model: CompactLM, n: int) -> tuple[Tensor, Tensor]:
    s = model.shapes
    size = (s.layers, 1, s.kv_heads, 2 * n, s.head_dim)
    return (
        torch.zeros(size, dtype=model.dtype, device=model.device),
        torch.zeros(size, dtype=model.dtype, device=model.device),
    )


def _full(model: CompactLM, ids: Tensor, caches: tuple[Tensor, Tensor]) -> Tensor:
    """The full model over the text (columns 0..n-1): its argmax at every position."""
    n, dev = len(ids), model.device
    at = torch.arange(n, device=dev)
    mask = torch.zeros(1, 1, n, 2 * n, dtype=torch.bool, device=dev)
    mask[0, 0, :, :n] = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
    step = StepInput(ids, at, torch.zeros_like(at), at, at, mask, at)
    return model.forward(step, caches[0], caches[1]).argmax(dim=-1)


@torch.inference_mode()
def agreement(
    model: CompactLM,
    tokens: Sequence[int],
    layers: Sequence[int],
    reference: tuple[Tensor, tuple[Tensor, Tensor]] | None = None,
) -> float:
    """The share of positions where the model running only `layers` for that position
    (the full model's K/V for the text before it) predicts the full model's next token."""
    return float(matches(model, tokens, layers, reference).float().mean())


@torch.inference_mode()
def matches(
    model: CompactLM,
    tokens: Sequence[int],
    layers: Sequence[int],
    reference: tuple[Tensor, tuple[Tensor, Tensor]] | None = None,
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
    got = model.forward(step, k, v, list(layers)).argmax(dim=-1)
    return got == want


def _head_share(model: CompactLM) -> float:
    """The LM head's share of a forward's weight bytes (a drafter pays it in full)."""
    per_layer = sum(
        int(w.numel()) for w in (model.layers[0].qkv, model.layers[0].o) if isinstance(w, Tensor)
    )
    per_layer += sum(
        int(w.numel())
        for w in (model.layers[0].gate_up, model.layers[0].down)
        if isinstance(w, Tensor)
    )
    head = model.shapes.vocab * int(model.embed.shape[1])
    return head / (head + per_layer * model.shapes.layers) if per_layer else 0.0


def speedup(accept: float, cost: float, k_max: int = 8) -> float:
    """Expected tokens per unit of time relative to plain decoding, best draft length."""
    best = 1.0
    for k in range(1, k_max + 1):
        tokens = float(k + 1) if accept >= 1.0 else (1 - accept ** (k + 1)) / (1 - accept)
        best = max(best, tokens / (1 + k * cost))
    return best


@torch.inference_mode()
def calibrate(model: CompactLM, tokens: Sequence[int], most: float = 0.6) -> tuple[int, ...]:
    """The layers the self-drafter runs (sorted): all but the skipped set with the highest
    expected speed-up on `tokens`, skipping at most `most` of the layers."""
    ids = torch.tensor(list(tokens), dtype=torch.long, device=model.device)
    caches = _scratch(model, len(ids))
    ref = (_full(model, ids, caches), caches)
    n = model.shapes.layers
    every = list(range(n))
    alone = {i: agreement(model, tokens, [j for j in every if j != i], ref) for i in every}
    order = sorted(every, key=lambda i: (-alone[i], i))
    head = _head_share(model)
    best, best_gain = tuple(every), 1.0
    for m in range(1, int(most * n) + 1):
        kept = tuple(sorted(set(every) - set(order[:m])))
        accept = agreement(model, tokens, kept, ref)
        gain = speedup(accept, head + (1 - head) * len(kept) / n)
        if gain > best_gain:
            best, best_gain = kept, gain
    return best


def fingerprint(model: CompactLM) -> str:
    """A short digest of the model's shapes and a sample of its weights."""
    h = hashlib.sha256(repr(model.shapes).encode())
    for t in (model.embed, model.norm, model.layers[0].ln1, model.layers[-1].ln2):
        h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_file() -> Path:
    root = os.environ.get("PARAFILL_CACHE") or Path.home() / ".cache" / "parafill"
    return Path(root) / "self-layers.json"


def layers_for(model: CompactLM, tokens: Sequence[int]) -> tuple[int, ...]:
    """`calibrate`'s answer for this model, from the disk cache when it was found before
    (keyed by the model's fingerprint), else calibrated on `tokens` and stored."""
    path, key = _cache_file(), fingerprint(model)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), list):
        return tuple(int(i) for i in known[key])
    layers = calibrate(model, tokens)
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
