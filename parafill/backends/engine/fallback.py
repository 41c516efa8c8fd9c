"""The slow path for architectures the compact forward does not know (GPT-2, Phi, Gemma, ...).

Same surface as `Engine` (submit / cancel / step / serve), but each sequence keeps its own
HF cache and every step runs the HF model's own forward once per active sequence: no packing,
no shared prefixes, no prefix cache, no static shapes. It exists so any causal LM works,
correctly; the local backend says so when it picks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from parafill.backends.engine.engine import Engine, EngineConfig, StepOutput
from parafill.backends.engine.gguf_q4 import q4_blocks, wide
from parafill.backends.engine.kv import BudgetError, tokens_in
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.loop import Inbox, serve
from parafill.backends.engine.model import CompactLM, supports
from parafill.backends.engine.params import repeats
from parafill.backends.engine.quant import WeightFormatError, check_format, quantize
from parafill.backends.engine.sampling import (
    GenParams,
    adjust,
    check_bias,
    check_prompt,
    chosen_logprobs,
    pick,
    resolve_seed,
    top_logprobs,
)
from parafill.fillers.base import Proposer


@dataclass(eq=False)
class _Seq:
    id: int
    prompt: list[int]
    params: GenParams
    seed: int
    generated: list[int] = field(default_factory=list)
    past: Any = None  # the HF cache of this sequence
    seen: set[tuple[int, ...]] = field(default_factory=set)  # output n-grams (loop guard)


class FallbackEngine:
    def __init__(self, hf_model: Any, config: EngineConfig, max_positions: int) -> None:
        self.hf = hf_model
        self.device = next(hf_model.parameters()).device
        if config.budget_bytes is not None:
            tokens = tokens_in(config.budget_bytes, _per_token(hf_model), 0)
            config = replace(config, budget_tokens=tokens)
        self.config = config
        self.max_positions = max_positions
        self.live: list[_Seq] = []
        self.waiting: list[_Seq] = []
        self.cached: list[_Seq] = []  # no prefix cache on this path
        self.reused = 0
        self.steps = 0
        self._inbox: Inbox[_Seq] = Inbox()

    @property
    def limits(self) -> Limits:
        budget = self.config.budget_tokens
        return Limits(
            vocab=int(self.hf.config.vocab_size),
            max_positions=self.max_positions,
            max_request_tokens=min(self.max_positions, budget),
            kv_rows=1,
            kv_row_tokens=budget,
            kv_bytes=None,
            max_seqs=self.config.max_seqs,
            packs=False,
            speculates=False,
        )

    def submit(self, prompt: list[int], params: GenParams, proposer: Proposer | None = None) -> int:
        """Queue a request. This path decodes one token per step: `proposer` is ignored."""
        check_prompt(prompt, self.hf.config.vocab_size)
        check_bias(params, self.hf.config.vocab_size)
        need = len(prompt) + params.max_tokens
        if need > min(self.max_positions, self.config.budget_tokens):
            raise BudgetError(
                f"request needs {need} positions/KV slots but this model is set "
                f"up for {min(self.max_positions, self.config.budget_tokens)}"
            )
        seed = resolve_seed(params)
        return self._inbox.put(lambda i: _Seq(i, list(prompt), params, seed))

    def cancel(self, seq_id: int) -> None:
        self._inbox.cancel(seq_id)

    def wake(self) -> None:
        self._inbox.wake()

    def serve(self, deliver: Callable[[list[StepOutput]], None], stop: threading.Event) -> None:
        serve(self._inbox, self.step, lambda: bool(self.live or self.waiting), deliver, stop)

    def step(self) -> list[StepOutput]:
        outs = self._drain()
        outs += [self._safe_advance(seq) for seq in list(self.live)]
        if self.live or outs:
            self.steps += 1
        return outs

    def _drain(self) -> list[StepOutput]:
        submitted, cancelled = self._inbox.take()
        self.waiting += submitted
        outs = [
            StepOutput(s.id, (), "cancelled") for s in self.waiting + self.live if s.id in cancelled
        ]
        self.waiting = [s for s in self.waiting if s.id not in cancelled]
        self.live = [s for s in self.live if s.id not in cancelled]
        while self.waiting and self._fits(self.waiting[0]):
            self.live.append(self.waiting.pop(0))
        return outs

    def _fits(self, seq: _Seq) -> bool:
        held = sum(len(s.prompt) + s.params.max_tokens for s in self.live)
        room = held + len(seq.prompt) + seq.params.max_tokens <= self.config.budget_tokens
        return room and len(self.live) < self.config.max_seqs

    def _safe_advance(self, seq: _Seq) -> StepOutput:
        try:
            return self._advance(seq)
        except Exception as exc:  # a failed forward fails its sequence, not the loop
            self.live.remove(seq)
            return StepOutput(seq.id, (), "error", f"{type(exc).__name__}: {exc}")

    @torch.inference_mode()
    def _advance(self, seq: _Seq) -> StepOutput:
        new = seq.prompt if seq.past is None else seq.generated[-1:]
        ids = torch.tensor([new], device=self.device)
        seen = len(seq.prompt) + len(seq.generated)
        mask = torch.ones(1, seen, dtype=torch.long, device=self.device)
        out = self.hf(input_ids=ids, attention_mask=mask, past_key_values=seq.past, use_cache=True)
        seq.past = out.past_key_values
        logits = out.logits[0, -1:].float()
        chooser = adjust(logits, [seq.params], [seq.generated], [seq.prompt])
        tok = pick(chooser, [seq.params], [seq.seed], [len(seq.generated)])[0]
        lp = (chosen_logprobs(logits, [tok])[0],)
        top = (top_logprobs(logits, [seq.params.top_logprobs])[0],)
        seq.generated.append(tok)
        if tok in seq.params.eos_ids:
            self.live.remove(seq)
            return StepOutput(seq.id, (), "stop")
        if repeats(seq.generated, seq.params.stop_on_repeat, seq.seen):
            self.live.remove(seq)
            return StepOutput(seq.id, (tok,), "stop", logprobs=lp, top=top)
        if len(seq.generated) >= seq.params.max_tokens:
            self.live.remove(seq)
            return StepOutput(seq.id, (tok,), "length", logprobs=lp, top=top)
        return StepOutput(seq.id, (tok,), logprobs=lp, top=top)


def _per_token(hf_model: Any) -> int:
    """K/V bytes per token of an HF model's own cache, from its config."""
    cfg = hf_model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = next(hf_model.parameters()).element_size()
    return int(2 * cfg.num_hidden_layers * kv_heads * head_dim * elem)


def _compact(
    hf_model: Any, max_positions: int, fmt: str, gguf: Path | None, notify: Callable[[str], None]
) -> CompactLM:
    lm = CompactLM(hf_model, max_positions)
    packs = fmt in ("int4", "int8") and gguf is not None
    if fmt != "fp32":
        notify(f"weights {fmt}: packing the projections...")
    blocks = q4_blocks(gguf, lm) if packs and gguf is not None else None
    report = quantize(lm, fmt, blocks, wide(gguf, lm) if packs and gguf is not None else set())
    if fmt != "fp32":
        kept = f", {report.from_gguf} from the GGUF's own blocks" if report.from_gguf else ""
        notify(
            f"weights {fmt}: projections {report.bytes_before / 2**20:.0f} MiB → "
            f"{report.bytes_after / 2**20:.0f} MiB{kept}"
        )
    return lm


def build_engine(
    hf_model: Any,
    config: EngineConfig,
    max_positions: int,
    notify: Callable[[str], None],
    weights: str = "fp32",
    gguf: Path | None = None,
    draft: tuple[Any, Path | None] | None = None,
) -> Engine | FallbackEngine:
    """The compact engine where the architecture is known, its projections in the `weights`
    format (quant.py; int4 from `gguf`'s own Q4 blocks where they match), with `draft` (an HF
    model and its GGUF) as the `draft` filler's model; the HF fallback (with a notice)
    otherwise."""
    fmt = check_format(weights)
    if supports(hf_model):
        lm = _compact(hf_model, max_positions, fmt, gguf, notify)
        second = None
        if draft is not None:
            if not supports(draft[0]):
                kind = getattr(draft[0].config, "model_type", "?")
                raise ValueError(f"a draft model needs parafill's compact forward, not {kind!r}")
            second = _compact(draft[0], max_positions, fmt, draft[1], notify)
        engine = Engine(lm, config, second)
        if fmt == "fp32" and gguf is not None and lm.device.type == "cpu":
            # the self-drafter's int4 weights: the GGUF's own 4-bit blocks (made on first use)
            engine.self_blocks = lambda: q4_blocks(gguf, lm)
        return engine
    kind = getattr(hf_model.config, "model_type", "?")
    if draft is not None:
        raise ValueError(f"the draft filler needs parafill's compact forward, not {kind!r}")
    if fmt != "fp32":
        raise WeightFormatError(
            f"weights={fmt!r} needs parafill's compact forward, which does not support model "
            f"type {kind!r}; use weights='fp32'"
        )
    notify(
        f"model type {kind!r} is not supported by parafill's compact forward; using the "
        "slower HF fallback (one forward per request per step, no prefix sharing or packing)"
    )
    return FallbackEngine(hf_model, config, max_positions)
