"""The engine's settings (`EngineConfig`) and what a step reports per sequence (`StepOutput`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parafill.backends.engine.kv import Mode
from parafill.backends.engine.sampling import Top


@dataclass(frozen=True)
class EngineConfig:
    mode: Mode = "rows"
    budget_tokens: int = 16384  # KV slots in all
    budget_bytes: int | None = None  # instead: K/V bytes in all (tokens = bytes / per token)
    rows: int = 16  # rows mode: concurrent sequences (each row holds budget/rows tokens)
    prefill_chunk: int = 512  # prompt tokens fed per step, over all sequences
    min_share: int = 16  # shortest prefix worth sharing
    max_seqs: int = 256  # tree mode: concurrent sequences
    # decode-only steps: "eager" builds inputs on the host each step; "static" runs them at
    # fixed shapes with device-side state (CUDA graphs on a GPU); "auto": static on CUDA
    decode: Literal["auto", "eager", "static"] = "auto"
    compile: bool = False  # static decode: torch.compile the step first (slow start, faster)
    # attention's and the KV cache's precision (model.attention_kind): "auto" = ordered fp32
    # attention on the CPU (kernels.c; exact in every mode), else fp64 where the projections
    # are packed; "ordered" requires the CPU kernels
    # (bf16 / int8 / int4; model.kv_dtype says why), the model's own dtype elsewhere
    attention: Literal["auto", "ordered", "native", "fp64"] = "auto"
    # keep a finished sequence's KV as a prefix cache (like vLLM's automatic prefix caching):
    # a later request sharing its prefix reuses it instead of prefilling; evicted, least
    # recently used first, the moment its room is needed
    retain: bool = True
    # verify drafted tokens of sequences submitted with a proposer: "auto" where the measured
    # step cost says it pays, "always" whenever a proposer drafts, "off" never
    speculate: Literal["auto", "always", "off"] = "auto"
    # the layers the `self` filler's drafter runs (the others skipped); None: calibrated on
    # first use (selfspec.py) and cached on disk per model
    self_layers: tuple[int, ...] | None = None
    # the `self` drafter's weights: "auto" = int4 on the CPU for an fp32 target (the GGUF's
    # own 4-bit blocks where it came from one), the target's own elsewhere; "target": always
    # the target's own (only skipping layers makes it cheaper)
    self_weights: Literal["auto", "target"] = "auto"
    # intra-op threads of the CPU step: an int fixes the count; "auto" times the candidates
    # now and then and keeps the fastest (threads.py: beside a busy process, fewer threads
    # than cores win by far); None leaves torch's own setting alone
    threads: int | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        t = self.threads
        if not (t is None or t == "auto" or (type(t) is int and t >= 1)):
            raise ValueError(f"threads must be an integer >= 1, 'auto' or None, got {t!r}")


@dataclass(frozen=True)
class StepOutput:
    seq_id: int
    tokens: tuple[int, ...]
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    logprobs: tuple[float, ...] = ()  # log p of each of `tokens` (the model's distribution)
    top: tuple[Top, ...] = ()  # per token, the most likely alternatives (params.top_logprobs)
    # the sequence so far: forward passes that fed it, drafted tokens, drafts kept
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
