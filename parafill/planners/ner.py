"""PaDeLLM-NER: per label, predict the mention count (all labels in parallel); each count grows
the plan by one node per (label, k-th mention), decoded in parallel; duplicate spans across
labels are resolved. Also the baseline: one node writing every entity autoregressively.

Dedupe (the paper's rule): a span claimed by several labels goes to the label whose mention
node wrote it with the highest mean token log-probability (the local engine reports them).
Where the backend reports none, a deterministic proxy: the label that wrote it at the smallest
k; ties to the label listed first. Fan-out is capped up front: counts + mentions <= `max_nodes`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from parafill.backends.base import Backend
from parafill.orchestrator.plan import Expander, Growth, Node, Plan, RunResult
from parafill.orchestrator.runner import RunConfig, run_plan
from parafill.planners import ner_prompts as P
from parafill.planners.grammars import count_constraint, mention_constraint
from parafill.planners.ner_data import WNUT_LABELS, Entity

EXPAND = "ner-count"
# The shipped LoRA adapter for the embedded SmolLM2 (scripts/train_ner_lora.py made it).
ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "ner-smollm2"


@dataclass(frozen=True)
class NerConfig:
    labels: tuple[str, ...] = WNUT_LABELS
    max_mentions: int = 4  # per label: a larger predicted count is cut, with a note
    max_nodes: int = 64  # count nodes + mention nodes in the worst case
    count_tokens: int = 4
    mention_tokens: int = 16
    ar_tokens: int = 160
    constrained: bool = True  # counts are numbers, mentions spans of the text (grammars.py)


@dataclass(frozen=True)
class NerResult:
    entities: tuple[Entity, ...]  # in order of appearance in the text
    notes: tuple[str, ...]
    seconds: float
    tokens: int
    forward_passes: int | None
    run: RunResult = field(repr=False)


def default_adapter(model: str | None) -> str | None:
    """The shipped adapter for the embedded model; none for any other model."""
    ok = model is None and (ADAPTER / "adapter_model.safetensors").is_file()
    return str(ADAPTER) if ok else None


def check_config(cfg: NerConfig) -> None:
    """Refuse label sets and caps that cannot make a valid, bounded plan (clear messages)."""
    if not cfg.labels:
        raise ValueError("no labels given: pass at least one entity type")
    if len(set(cfg.labels)) != len(cfg.labels):
        raise ValueError(f"duplicate labels in {', '.join(cfg.labels)}")
    for label in cfg.labels:
        if not label.strip() or any(c in label for c in ":,\n") or label != label.strip():
            raise ValueError(f"label {label!r}: use a non-empty word without ':', ',' or newline")
    if cfg.max_mentions < 1:
        raise ValueError(f"max_mentions must be >= 1, got {cfg.max_mentions}")
    worst = len(cfg.labels) * (1 + cfg.max_mentions)
    if worst > cfg.max_nodes:
        raise ValueError(
            f"fan-out cap: {len(cfg.labels)} labels x (1 count + {cfg.max_mentions} mentions) = "
            f"{worst} nodes > max_nodes {cfg.max_nodes}; pass fewer labels, a smaller "
            f"max_mentions or a larger max_nodes"
        )


@dataclass(frozen=True)
class NerPlanner:
    config: NerConfig = NerConfig()

    def plan(self, text: str) -> Plan:
        check_config(self.config)
        if not text.strip():
            raise ValueError("the text is empty: nothing to extract entities from")
        nodes = tuple(
            Node(
                f"count:{label}",
                P.count_prompt(text, label),
                max_tokens=self.config.count_tokens,
                system=P.SYSTEM,
                expand=EXPAND,
                stop=("\n",),
                args=(("label", label), ("text", text)),  # nothing parses the prompt back
                constraint=count_constraint() if self.config.constrained else None,
            )
            for label in self.config.labels
        )
        return Plan(nodes, answer=())

    @property
    def expanders(self) -> Mapping[str, Expander]:
        return {EXPAND: self._expand}

    def _expand(self, node: Node, output: str) -> Growth:
        label, text = node.arg("label"), node.arg("text")
        n, note = P.parse_count(output, label)
        if n > self.config.max_mentions:
            cap = self.config.max_mentions
            note = f"count {n} for {label!r} capped at max_mentions {cap}"
            n = cap
        nodes = tuple(
            Node(
                f"mention:{label}:{k}",
                P.mention_prompt(text, label, k, n),
                max_tokens=self.config.mention_tokens,
                filler="ngram",  # a mention is copied from the text in the prompt
                system=P.SYSTEM,
                stop=("\n",),
                constraint=mention_constraint(text) if self.config.constrained else None,
            )
            for k in range(1, n + 1)
        )
        return Growth(nodes, None, note=note)


def ar_plan(text: str, cfg: NerConfig) -> Plan:
    check_config(cfg)
    if not text.strip():
        raise ValueError("the text is empty: nothing to extract entities from")
    prompt = P.ar_prompt(text, cfg.labels)
    node = Node("entities", prompt, max_tokens=cfg.ar_tokens, filler="ngram", system=P.SYSTEM)
    return Plan((node,), answer=("entities",))


def collect(result: RunResult, text: str, labels: Sequence[str]) -> tuple[list[Entity], list[str]]:
    """Entities from the mention nodes' outputs, deduplicated across labels: the most probable
    claim wins (mean token log-probability), or without probabilities the smallest k."""
    mentions = {i: r for i, r in result.results.items() if i.startswith("mention:")}
    probable = all(r.logprob is not None and r.tokens > 0 for r in mentions.values())
    best: dict[str, tuple[float, int, str]] = {}  # span -> (rank key, label rank, label)
    notes: list[str] = []
    for node_id in sorted(mentions):
        _, label, k = node_id.split(":")
        res = mentions[node_id]
        span, note = P.parse_mention(res.text, text, node_id)
        if span is None:
            notes.append(note or "")
            continue
        key = -(res.logprob or 0.0) / res.tokens if probable else float(k)
        claim = (key, labels.index(label), label)
        if span in best and best[span][2] != claim[2]:
            loser = max(best[span], claim)
            why = "more probable" if probable else "earlier mention"
            notes.append(f"{span!r}: {loser[2]} dropped, {min(best[span], claim)[2]} kept ({why})")
        best[span] = min(best.get(span, claim), claim)
    return _ordered([Entity(c[2], s) for s, c in best.items()], text), notes


def _ordered(entities: list[Entity], text: str) -> list[Entity]:
    return sorted(entities, key=lambda e: (text.find(e.text), e.label))


async def extract(
    text: str,
    backend: Backend,
    config: NerConfig | None = None,
    mode: str = "parallel",
    run: RunConfig | None = None,
) -> NerResult:
    """Entities of `text`: mode 'parallel' (PaDeLLM) or 'ar' (one output, the baseline)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    return await MODES[mode](text, backend, config or NerConfig(), run)


async def _parallel(
    text: str, backend: Backend, cfg: NerConfig, run: RunConfig | None
) -> NerResult:
    t0 = time.perf_counter()
    planner = NerPlanner(cfg)
    result = await run_plan(planner.plan(text), backend, run, expanders=planner.expanders)
    entities, notes = collect(result, text, cfg.labels)
    return _result(entities, [*result.notes, *notes], result, t0)


async def _ar(text: str, backend: Backend, cfg: NerConfig, run: RunConfig | None) -> NerResult:
    t0 = time.perf_counter()
    result = await run_plan(ar_plan(text, cfg), backend, run)
    entities, notes = P.parse_ar(result.results["entities"].text, text, cfg.labels)
    return _result(_ordered(entities, text), notes, result, t0)


def _result(entities: list[Entity], notes: list[str], run: RunResult, t0: float) -> NerResult:
    secs = time.perf_counter() - t0
    return NerResult(tuple(entities), tuple(notes), secs, run.tokens, run.forward_passes, run)


Mode = Callable[[str, Backend, NerConfig, "RunConfig | None"], Awaitable[NerResult]]
MODES: dict[str, Mode] = {"parallel": _parallel, "ar": _ar}
