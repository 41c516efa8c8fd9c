"""Per-request generation parameters and their checks at submit (no torch here).

`Decoding` is the one definition of the per-request decoding fields; `GenParams` (token ids:
adds the EOS ids, for the engine) and `parafill.backends.base.Sampling` (text: adds stop
strings, for every backend) extend it, and `GenParams.of` converts by field name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Decoding:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    top_logprobs: int = 0  # also report the k most likely tokens at each step (k <= TOP_MAX)
    # OpenAI's logit adjustments, applied before temperature / top-p (and to greedy choice):
    # logit[t] -= frequency * count(t in generated) + presence * (t in generated); += bias[t]
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    # HF's / vLLM's: the logit of every token in the prompt or output is divided by this
    # when positive, multiplied when negative (1: off); applied before the OpenAI penalties
    repetition_penalty: float = 1.0
    # a loop guard: stop (finish "stop") as soon as the output's last N tokens already
    # occurred, in that order, earlier in the output (0: off); exact with drafts
    stop_on_repeat: int = 0
    # LOSSY, off at 0: a drafted token the model gives at least this probability is kept even
    # where greedy decoding would choose another (a training-free reading of lexical-unit
    # decoding: a confident drafted run is accepted as a unit); greedy only, needs a filler
    lexical: float = 0.0

    @property
    def adjusts(self) -> bool:
        return bool(
            self.frequency_penalty
            or self.presence_penalty
            or self.logit_bias
            or self.repetition_penalty != 1.0
        )


@dataclass(frozen=True)
class GenParams(Decoding):
    eos_ids: frozenset[int] = frozenset()

    @staticmethod
    def of(d: Decoding, eos_ids: frozenset[int] = frozenset()) -> GenParams:
        """The engine's parameters for `d` (a `Sampling`'s stop strings stay above it)."""
        shared = {f.name: getattr(d, f.name) for f in fields(Decoding)}
        return GenParams(**shared, eos_ids=eos_ids)


TOP_MAX = 20  # OpenAI's bound on top_logprobs
Top = tuple[tuple[int, float], ...]  # (token id, log p) of the most likely tokens, best first


def repeats(generated: list[int], n: int, seen: set[tuple[int, ...]]) -> bool:
    """Called after each output token: whether the last n tokens of `generated` occurred
    earlier in it (the sequence is looping); records them in `seen` otherwise."""
    if n <= 0 or len(generated) < n:
        return False
    gram = tuple(generated[-n:])
    if gram in seen:
        return True
    seen.add(gram)
    return False


def check_bias(params: GenParams, vocab: int) -> None:
    """A logit bias must name tokens of the vocabulary (refused at submit, not mid-step)."""
    bad = [t for t, _ in params.logit_bias if not 0 <= t < vocab]
    if bad:
        raise ValueError(
            f"logit_bias names token ids outside the vocabulary (0..{vocab - 1}): {bad}"
        )


def check_lexical(params: Decoding) -> None:
    """`lexical` is a probability threshold below 1/2 for greedy requests (refused at submit):
    a token other than the greedy choice never has p >= 1/2, so a higher one keeps nothing."""
    if not 0.0 <= params.lexical < 0.5:
        raise ValueError(
            f"lexical must be in [0, 0.5) (0: off), not {params.lexical}: a token other than "
            "the greedy choice never has probability 0.5 or more"
        )
    if params.lexical and params.temperature > 0:
        raise ValueError(
            "lexical acceptance is for greedy decoding (temperature 0); a sampled request "
            "keeps drafts by rejection sampling"
        )


def check_prompt(prompt: list[int], vocab: int) -> None:
    """Every prompt id must be a token of the vocabulary: an out-of-range id would fail the
    forward pass of every request sharing its step (refused at submit instead)."""
    if not prompt:
        raise ValueError("prompt is empty")
    bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < vocab)]
    if bad:
        shown = ", ".join(str(t) for t in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"prompt has token ids outside the vocabulary (0..{vocab - 1}): {shown}")
