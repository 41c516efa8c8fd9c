"""Shared helpers for the engine tests: tiny random models, the slow HF reference, engine drivers.

The reference is a plain greedy loop over the HF model's own forward with a KV cache, one
prompt at a time, with an explicit all-ones attention mask. Nothing here knows engine internals
beyond its public step()/submit()/cancel() and the forward it calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from parafill.backends.engine.engine import Engine, EngineConfig, StepOutput
from parafill.backends.engine.model import CompactLM, StepInput
from parafill.backends.engine.sampling import GenParams

VOCAB = 256
Smol = tuple[torch.nn.Module, PreTrainedTokenizerBase]  # the embedded model and its tokenizer
Chat = Callable[..., list[int]]  # (user, system=None) -> chat prompt token ids
TINY_KINDS: dict[str, tuple[Callable[..., object], dict[str, object]]] = {
    "llama": (LlamaConfig, {"num_hidden_layers": 3}),
    "llama-bias-hd32": (LlamaConfig, {"attention_bias": True, "head_dim": 32}),
    "qwen2": (Qwen2Config, {}),
    "mistral": (MistralConfig, {"sliding_window": None}),
}


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    """A small random-weight model of a real architecture (fp32, GQA 4:2, non-zero biases).

    initializer_range 0.2 keeps greedy continuations varied and argmax margins far above fp32
    noise, so an exactness failure means a real difference, not a tie.
    """
    cls, extra = TINY_KINDS[kind]
    kw: dict[str, object] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
    }
    kw.update(extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cls(**kw), attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):  # from_config zeroes biases; a zero bias tests nothing
                torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def rand_prompt(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=gen).tolist()


@torch.inference_mode()
def hf_logits(hf: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt])
    return hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()  # (T, V)


@torch.inference_mode()
def greedy_ref(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding of `prompt` alone with the HF model: exactly n tokens, no eos stop."""
    ids = torch.tensor([prompt])
    out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    toks: list[int] = []
    while True:
        toks.append(int(out.logits[0, -1].argmax()))
        if len(toks) == n:
            return toks
        mask = torch.ones(1, len(prompt) + len(toks), dtype=torch.long)
        out = hf(
            input_ids=torch.tensor([[toks[-1]]]),
            attention_mask=mask,
            past_key_values=out.past_key_values,
            use_cache=True,
        )


class RefCache:
    """Memoised greedy references per model; a longer run answers every shorter one."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.hf = hf
        self._done: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, prompt: list[int], n: int) -> list[int]:
        have = self._done.get(tuple(prompt), [])
        if len(have) < n:
            have = greedy_ref(self.hf, prompt, n)
            self._done[tuple(prompt)] = have
        return have[:n]


class RecordingLM(CompactLM):
    """CompactLM that remembers every step it ran (tokens, positions, rows)."""

    def __init__(self, hf: torch.nn.Module, max_positions: int) -> None:
        super().__init__(hf, max_positions)
        self.steps: list[StepInput] = []

    def forward(
        self,
        step: StepInput,
        k_cache: Tensor,
        v_cache: Tensor,
        layers: Sequence[int] | None = None,
    ) -> Tensor:
        if layers is None:  # the target's own steps (a self-drafter's are not recorded)
            self.steps.append(step)
        return super().forward(step, k_cache, v_cache, layers)

    @property
    def fed(self) -> int:
        return sum(s.tokens.numel() for s in self.steps)

    def fed_where(self, pred: Callable[[int, int], bool]) -> int:
        """How many fed tokens satisfy pred(token, position)."""
        return sum(
            bool(pred(int(t), int(p)))
            for s in self.steps
            for t, p in zip(s.tokens.tolist(), s.positions.tolist(), strict=True)
        )


def make_engine(
    hf: torch.nn.Module, max_positions: int = 512, **config: object
) -> tuple[Engine, RecordingLM]:
    """`mode` may be "rows-static" / "tree-static": decode steps then run at static shapes
    with device-side state (the CUDA-graph path, run eagerly on CPU)."""
    mode = str(config.pop("mode", "rows"))
    if mode.endswith("-static"):
        config["decode"] = "static"
    lm = RecordingLM(hf, max_positions)
    engine = Engine(lm, EngineConfig(mode=mode.removesuffix("-static"), **config))  # type: ignore[arg-type]
    return engine, lm


@dataclass
class Run:
    """Everything an engine reported, per request id."""

    tokens: dict[int, list[int]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    errors_ok: bool = False  # record errors instead of failing on the first

    def take(self, outs: list[StepOutput]) -> None:
        for o in outs:
            assert o.seq_id not in self.finish, f"output for {o.seq_id} after it finished"
            if o.error is not None:
                assert self.errors_ok, o.error
                self.errors[o.seq_id] = o.error
            self.tokens.setdefault(o.seq_id, []).extend(o.tokens)
            if o.finish is not None:
                self.finish[o.seq_id] = o.finish


def step(engine: Engine, run: Run, times: int = 1) -> None:
    for _ in range(times):
        run.take(engine.step())


def drain(engine: Engine, run: Run, ids: list[int], max_steps: int = 500) -> None:
    """Step until every id in `ids` has finished and the engine is idle."""
    for _ in range(max_steps):
        if all(i in run.finish for i in ids) and not engine.live and not engine.waiting:
            return
        step(engine, run)
    raise AssertionError(f"engine did not finish in {max_steps} steps: {run.finish}")


def greedy(n: int) -> GenParams:
    return GenParams(max_tokens=n)
