"""Per-request sampling parameters and next-token selection (greedy, temperature, top-p, seed).

Every row of a step is decided in one batched pass, on the logits' device. A sampled row
draws its token by inverting the CDF of its (temperature-scaled, top-p-truncated)
distribution at a uniform number that is a counter-based hash of (its seed, the index of
the token it is drawing): no generator state, so a seeded request draws the same tokens
whatever else shares its step, in rows or tree mode, eager or replayed as a CUDA graph, and
the whole draw can be captured in a graph (no host work per row).

Two implementations of the same rule: `select_rows` (branch-free over every lane, for graph
capture: a full sort when any lane has top-p) and `pick` (eager: only the sampled rows, and the
nucleus taken from a top-k bounded by a mass argument instead of a full sort). They agree token for
token except where two tokens' probabilities tie exactly at the drawn point (tested).
"""

from __future__ import annotations

import secrets

import torch
from torch import Tensor

from parafill.backends.engine.params import TOP_MAX, GenParams, Top, check_bias, check_prompt


def resolve_seed(params: GenParams) -> int:
    """The request's seed as a signed 64-bit int (a fresh random one when none is given)."""
    seed = params.seed if params.seed is not None else secrets.randbits(64)
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix(x: Tensor) -> Tensor:
    """A 32-bit avalanche hash (the 'lowbias32' constants), on int64 holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seeds: Tensor, draws: Tensor) -> Tensor:
    """One uniform in [0, 1) per row (24-bit resolution) from int64 seeds and draw indices."""
    h = _mix(((seeds >> 32) & _M32) ^ 0x9E3779B9)
    h = _mix(h ^ (seeds & _M32))
    h = _mix(h ^ (draws & _M32))
    return (h >> 8).float() * (1.0 / (1 << 24))


def _probs(logits: Tensor, temps: Tensor) -> Tensor:
    t = torch.where(temps > 0, temps, torch.ones_like(temps))
    return torch.softmax(logits.float() / t[:, None], dim=-1)


def _invert(cum: Tensor, last: Tensor, u: Tensor) -> Tensor:
    """Index of the first entry whose cumulative mass reaches u * mass[..last] (rows)."""
    total = cum.gather(1, last[:, None])[:, 0]
    idx = (cum < (u * total)[:, None]).sum(dim=-1)
    return torch.minimum(idx, last)


def _plain(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse CDF in vocabulary order (no truncation)."""
    cum = probs.cumsum(dim=-1)
    last = torch.full_like(u, probs.shape[-1] - 1, dtype=torch.long)
    return _invert(cum, last, u)


def _nucleus(sorted_p: Tensor, order: Tensor, top_p: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse CDF over the top-p nucleus of descending `sorted_p`: (token, complete) where
    `complete` is False for rows whose nucleus may extend past the columns given (only
    possible when they are not the whole vocabulary)."""
    cum = sorted_p.cumsum(dim=-1)
    keep = (cum - sorted_p) < top_p[:, None]  # a prefix; always keeps the top token
    n = keep.sum(dim=-1)
    idx = _invert(cum, n - 1, u)
    return order.gather(1, idx[:, None])[:, 0], ~keep[:, -1]


def select_rows(
    logits: Tensor, temps: Tensor, top_ps: Tensor, seeds: Tensor, draws: Tensor, nucleus: bool
) -> Tensor:
    """Branch-free choice for every row (graph-capturable): argmax where temperature is 0,
    else a seeded draw; `nucleus` (fixed per capture) sorts for rows with top_p < 1."""
    greedy = logits.argmax(dim=-1)
    probs = _probs(logits, temps)
    u = uniforms(seeds, draws)
    tok = _plain(probs, u)
    if nucleus:
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        nuc, _ = _nucleus(sorted_p, order, top_ps, u)
        tok = torch.where(top_ps < 1.0, nuc, tok)
    return torch.where(temps > 0, tok, greedy)


def pick(logits: Tensor, params: list[GenParams], seeds: list[int], draws: list[int]) -> list[int]:
    """Eager choice: logits (M, V); row i uses params[i], seeds[i] and draw index draws[i]."""
    out = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return [int(t) for t in out.tolist()]
    dev = logits.device
    sel = torch.tensor(rows, device=dev)
    temps = torch.tensor([params[i].temperature for i in rows], device=dev)
    top_ps = torch.tensor([params[i].top_p for i in rows], device=dev)
    u = uniforms(
        torch.tensor([seeds[i] for i in rows], device=dev),
        torch.tensor([draws[i] for i in rows], device=dev),
    )
    probs = _probs(logits[sel], temps)
    tok = torch.zeros_like(u, dtype=torch.long)
    plain = (top_ps >= 1.0).nonzero()[:, 0]
    if plain.numel():
        tok[plain] = _plain(probs[plain], u[plain])
    todo = (top_ps < 1.0).nonzero()[:, 0]
    if todo.numel():
        v = probs.shape[-1]
        # the nucleus lies among the tokens with p >= (1 - top_p) / 2V (the others hold less
        # than (1 - top_p) / 2 of the mass): a top-k of that many replaces the full sort, and
        # a top-256 first settles the usual small nuclei for less
        bound = (1.0 - top_ps[todo]) / (2 * v)
        first = int((probs[todo] >= bound[:, None]).sum(dim=-1).max())
        for k in sorted({min(256, first), first, v}):  # a full sort only where rounding left
            p = probs[todo]  # a row undecided
            if k < v:
                sorted_p, order = p.topk(k, dim=-1)
            else:
                sorted_p, order = p.sort(dim=-1, descending=True, stable=True)
            nuc, done = _nucleus(sorted_p, order, top_ps[todo], u[todo])
            done = done | (k == v)
            tok[todo[done]] = nuc[done]
            todo = todo[~done]
            if not todo.numel():
                break
    out[sel] = tok
    return [int(t) for t in out.tolist()]


def top_logprobs(logits: Tensor, ks: list[int]) -> list[Top]:
    """The ks[i] most likely tokens of row i with their log-probabilities (the model's own
    distribution), best first; () where ks[i] is 0."""
    rows = [i for i, k in enumerate(ks) if k > 0]
    out: list[Top] = [()] * len(ks)
    if not rows:
        return out
    sel = logits[torch.tensor(rows, device=logits.device)].float()
    vals, ids = torch.topk(sel, max(ks[i] for i in rows), dim=-1)
    vals = vals - torch.logsumexp(sel, dim=-1, keepdim=True)
    for r, (v, t) in zip(rows, zip(vals.tolist(), ids.tolist(), strict=True), strict=True):
        out[r] = tuple(zip(t[: ks[r]], v[: ks[r]], strict=True))
    return out


def adjust(
    logits: Tensor,
    params: list[GenParams],
    generated: list[list[int]],
    prompts: list[list[int]] | None = None,
) -> Tensor:
    """Logits with each row's adjustments applied, in vLLM's order: the repetition penalty
    (over the prompt and the output so far), then the frequency / presence penalties (over
    the output), then the logit bias. Rows without any are left as they are (the same
    tensor when no row has any)."""
    rows = [i for i, p in enumerate(params) if p.adjusts]
    if not rows:
        return logits
    out = logits.float().clone()
    dev, v = logits.device, logits.shape[-1]
    sel = torch.tensor(rows, device=dev)
    rep = torch.tensor([params[i].repetition_penalty for i in rows], device=dev)[:, None]
    if bool((rep != 1.0).any()):
        seen = _counts([list(prompts[i]) if prompts else [] for i in rows], v) > 0
        seen |= _counts([generated[i] for i in rows], v) > 0
        x = out[sel]
        out[sel] = torch.where(seen.to(dev), torch.where(x > 0, x / rep, x * rep), x)
    counts = _counts([generated[i] for i in rows], v).to(dev)
    bias = torch.zeros(len(rows), v)
    for r, i in enumerate(rows):
        for tok, b in params[i].logit_bias:
            bias[r, tok] += b
    freq = torch.tensor([params[i].frequency_penalty for i in rows], device=dev)[:, None]
    pres = torch.tensor([params[i].presence_penalty for i in rows], device=dev)[:, None]
    out[sel] = out[sel] - freq * counts - pres * (counts > 0).float() + bias.to(dev)
    return out


def _counts(token_lists: list[list[int]], v: int) -> Tensor:
    """(rows, V) occurrence counts of each row's tokens (host)."""
    longest = max(1, max(len(t) for t in token_lists))
    ids = torch.zeros(len(token_lists), longest, dtype=torch.long)
    weight = torch.zeros(len(token_lists), longest)
    for r, toks in enumerate(token_lists):
        ids[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        weight[r, : len(toks)] = 1.0
    return torch.zeros(len(token_lists), v).scatter_add_(1, ids, weight)


def chosen_logprobs(logits: Tensor, tokens: list[int]) -> list[float]:
    """log p(token) under the model's own distribution (before temperature / top-p), per row."""
    idx = torch.tensor(tokens, device=logits.device)[:, None]
    logp = logits.float().gather(1, idx)[:, 0] - torch.logsumexp(logits.float(), dim=-1)
    return [float(x) for x in logp.tolist()]


__all__ = [
    "TOP_MAX",
    "GenParams",
    "Top",
    "adjust",
    "check_bias",
    "check_prompt",
    "chosen_logprobs",
    "pick",
    "resolve_seed",
    "select_rows",
    "top_logprobs",
    "uniforms",
]
