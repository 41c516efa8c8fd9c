"""The decode engine: continuous admission, shared prefixes, one forward per step.

Token ids only. `submit` and `cancel` are thread-safe; `step` is schedule → execute → update
(scheduler.py plans and applies, runner.py runs the forward); `serve` is the loop run in the
engine's own thread. Tokenizing, chat templates and stop strings live above (`backends.local`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from parafill.backends.engine.config import EngineConfig, StepOutput
from parafill.backends.engine.drafts import Drafter
from parafill.backends.engine.graphs import StaticDecoder
from parafill.backends.engine.kv import (
    BudgetError,
    CacheSpec,
    KVCache,
    bytes_per_token,
    tokens_in,
)
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.loop import Inbox, serve
from parafill.backends.engine.model import CompactLM, kv_dtype
from parafill.backends.engine.modeldraft import ModelDrafter, make_drafter
from parafill.backends.engine.params import check_lexical
from parafill.backends.engine.runner import ModelRunner
from parafill.backends.engine.sampling import (
    GenParams,
    check_bias,
    check_prompt,
    resolve_seed,
)
from parafill.backends.engine.schedule import Seq
from parafill.backends.engine.scheduler import Scheduler
from parafill.backends.engine.spec import SpecPolicy
from parafill.backends.engine.threads import threads_for
from parafill.fillers.base import Proposer
from parafill.fillers.model import ModelDrafts

if TYPE_CHECKING:
    from parafill.constraints import Compiled


class Engine:
    def __init__(
        self, model: CompactLM, config: EngineConfig | None = None, draft: CompactLM | None = None
    ) -> None:
        """`draft`: a second model for the `draft` filler (same vocabulary); its KV cache is
        laid out like the target's and counted in `budget_bytes`."""
        self.config = cfg = _checked(model, config or EngineConfig(), draft)
        self.draft_model = draft
        spec = CacheSpec.from_budget(cfg.mode, cfg.budget_tokens, cfg.rows)
        self.cache = KVCache(spec, model.shapes, kv_dtype(model, cfg.attention), str(model.device))
        slots = spec.rows if cfg.mode == "rows" else cfg.max_seqs
        # which KV columns each slot's sequence sees; the extra last slot is for padding lanes
        vis = torch.zeros(slots + 1, self.cache.width, dtype=torch.bool, device=model.device)
        self.runner = ModelRunner(model, cfg, self.cache, vis)
        drafter = Drafter(
            cfg, model.shapes.vocab, self.cache.alloc, self.cache.release, self._model_drafter
        )
        self.scheduler = Scheduler(cfg, self.cache, vis, drafter)
        self.model_drafters: dict[str, ModelDrafter | None] = {}  # None: drafting does not pay
        self.self_model: CompactLM | None = None  # the self-drafter's weights, once made
        # the GGUF's own Q4 blocks for the self-drafter's int4 weights (selfspec.py), if any
        self.self_blocks: Callable[[], dict[str, tuple[Tensor, Tensor, Tensor]]] | None = None
        self.calibration: list[int] | None = None  # text the self-drafter is calibrated on
        self._inbox: Inbox[Seq] = Inbox()
        self.threads = threads_for(cfg.threads, model.device)  # set in the stepping thread

    @property
    def limits(self) -> Limits:
        spec, cfg, positions = self.cache.spec, self.config, len(self.model.cos)
        seqs = spec.rows if cfg.mode == "rows" else cfg.max_seqs
        return Limits(
            self.model.shapes.vocab, positions, min(spec.cols, positions),  # a row, rotary table
            spec.rows, spec.cols, self.cache.nbytes, seqs, True, cfg.speculate != "off",
        )  # fmt: skip

    # ---- thread-safe entry points -------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        params: GenParams,
        proposer: Proposer | None = None,
        constraint: Compiled | None = None,
    ) -> int:
        """Queue a request; `proposer` drafts tokens to verify each step (None: one per step);
        `constraint` (compiled for this model's logits width) restricts every token chosen."""
        check_prompt(prompt, self.model.shapes.vocab)
        check_bias(params, self.model.shapes.vocab)
        check_lexical(params)
        need = len(prompt) + params.max_tokens
        self.cache.check_fits(need)
        if need > len(self.model.cos):  # past the rotary table the step fails for everyone in it
            raise BudgetError(
                f"request needs {need} positions but the model is set up for "
                f"{len(self.model.cos)}; raise max_positions or lower max_tokens"
            )
        if isinstance(proposer, ModelDrafts) and proposer.kind == "draft" and not self.draft_model:
            raise ValueError(
                "filler 'draft' needs a draft model: start with --draft-model PATH "
                "(LocalConfig(draft_model=...))"
            )
        seed = resolve_seed(params)
        matcher = constraint.matcher() if constraint is not None else None
        return self._inbox.put(
            lambda i: Seq(i, list(prompt), params, seed, proposer=proposer, matcher=matcher)
        )

    def cancel(self, seq_id: int) -> None:
        self._inbox.cancel(seq_id)

    def serve(self, deliver: Callable[[list[StepOutput]], None], stop: threading.Event) -> None:
        """Run steps until `stop` is set; idle waits do not spin."""
        serve(self._inbox, self.step, lambda: bool(self.live or self.waiting), deliver, stop)

    def wake(self) -> None:
        self._inbox.wake()

    def _model_drafter(self, kind: str, seq: Seq) -> ModelDrafter | None:
        """The batched drafter for a model filler, made on first use (the `self` one
        calibrated then, on `calibration` or else this sequence's prompt)."""
        if kind not in self.model_drafters:
            text = self.calibration or seq.prompt
            self.model_drafters[kind] = make_drafter(kind, self, self.config.self_layers, text)
        return self.model_drafters[kind]

    # ---- one step ------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        plan = self.scheduler.schedule(*self._inbox.take())
        if not plan.work:
            return list(plan.outputs)
        if self.threads is not None:
            self.threads.before()
        t0 = time.perf_counter()
        try:
            result = self.runner.execute(plan)
        except Exception as exc:  # a failed forward fails the sequences in it, not the loop
            return self.scheduler.fail(plan, exc)
        if self.threads is not None and plan.decode_only:  # steps of like shape compared
            self.threads.after(time.perf_counter() - t0, (len(plan.feeds), plan.plain))
        return self.scheduler.update(plan, result)

    def drop_cached(self) -> int:
        """Evict every retained prefix (engine thread only); returns how many there were."""
        return self.scheduler.drop_cached()

    # ---- state, where it lives now (read by tests, the backend and the drafters) -----------

    @property
    def model(self) -> CompactLM:
        return self.runner.model

    @property
    def decoder(self) -> StaticDecoder | None:
        return self.runner.decoder

    @property
    def vis(self) -> Tensor:
        return self.scheduler.vis

    @property
    def waiting(self) -> list[Seq]:
        return self.scheduler.waiting

    @property
    def live(self) -> list[Seq]:
        return self.scheduler.live

    @property
    def cached(self) -> list[Seq]:
        return self.scheduler.cached

    @property
    def free_slots(self) -> list[int]:
        return self.scheduler.free_slots

    @property
    def reused(self) -> int:
        return self.scheduler.reused

    @property
    def steps(self) -> int:
        return self.scheduler.steps

    @property
    def drafter(self) -> Drafter:
        return self.scheduler.drafter

    @property
    def policy(self) -> SpecPolicy:
        return self.scheduler.drafter.policy

    @property
    def drafted(self) -> int:
        return self.scheduler.drafted

    @drafted.setter
    def drafted(self, n: int) -> None:
        self.scheduler.drafted = n

    @property
    def accepted(self) -> int:
        return self.scheduler.accepted

    @accepted.setter
    def accepted(self, n: int) -> None:
        self.scheduler.accepted = n


def _checked(model: CompactLM, cfg: EngineConfig, draft: CompactLM | None) -> EngineConfig:
    """The config, checked against the models, with a byte budget turned into tokens."""
    if draft is not None and draft.shapes.vocab != model.shapes.vocab:
        raise ValueError(
            f"the draft model's vocabulary ({draft.shapes.vocab}) differs from the "
            f"target's ({model.shapes.vocab}): a drafter must share the target's tokenizer"
        )
    layers = cfg.self_layers or ()
    if any(not 0 <= i < model.shapes.layers for i in layers) or len(set(layers)) < len(layers):
        raise ValueError(
            f"self_layers {list(layers)} must be distinct layer indices of this model "
            f"(0..{model.shapes.layers - 1})"
        )
    if cfg.budget_bytes is None:
        return cfg
    per_token = bytes_per_token(model.shapes, kv_dtype(model, cfg.attention))
    if draft is not None:
        per_token += bytes_per_token(draft.shapes, draft.dtype)
    rows = cfg.rows if cfg.mode == "rows" else 1
    return replace(cfg, budget_tokens=tokens_in(cfg.budget_bytes, per_token, rows))


__all__ = ["BudgetError", "Engine", "EngineConfig", "StepOutput"]
