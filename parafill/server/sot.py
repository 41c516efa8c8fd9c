"""The `parafill-sot` model: skeleton-of-thought over the server's LocalBackend.

The question is the last user message. The skeleton, its parsed points, notes and per-node
tokens/seconds go in the response's extra top-level `parafill` field. Streaming sends each
answer paragraph (point) whole as soon as it and every point before it are done, in point order,
so the streamed text equals the non-streamed answer. Decoding is greedy (the planner's nodes set
their own temperature). Request max_tokens caps the answer returned, in the model's tokens: the
points share what is left after their numbered starts, and the joined answer is cut there
(finish_reason "length"). Usage counts the returned answer; the skeleton's tokens, which are
not returned, show in the `parafill` nodes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from parafill.backends.local import LocalBackend
from parafill.orchestrator.events import Event, NodeFinished
from parafill.orchestrator.plan import Growth, Node, RunResult, answer_part
from parafill.orchestrator.runner import Expander, RunConfig, run_plan
from parafill.planners.skeleton import SkeletonPlanner, parse_points
from parafill.server.direct import Job
from parafill.server.schemas import Completion, Usage
from parafill.server.sse import Produce, Write

NAME = "parafill-sot"


@dataclass(frozen=True)
class Budgeted:
    """A request's planner and the cap on its returned answer (None: no cap)."""

    planner: SkeletonPlanner
    max_tokens: int | None = None

    @property
    def point_tokens(self) -> int:
        return self.planner.point_tokens


def planner_for(base: SkeletonPlanner, max_tokens: int | None) -> Budgeted:
    if max_tokens is None:
        return Budgeted(base)
    capped = replace(base, point_tokens=max_tokens, direct_tokens=max_tokens)
    return Budgeted(capped, max_tokens)


@dataclass
class _Cap:
    """The answer as released, held to `limit` tokens of the model's tokenizer (re-encoded as a
    whole, so usage is what the client gets); past the limit, nothing more is released."""

    tokenizer: Any
    limit: int | None
    text: str = ""
    tokens: int = 0
    cut: bool = False

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def take(self, part: str) -> str:
        """What of `part` fits; cuts the answer (and everything after) at the limit."""
        if self.cut:
            return ""
        ids = self.tokenizer.encode(self.text + part, add_special_tokens=False)
        if self.limit is not None and len(ids) > self.limit:
            self.cut = True
            kept = self.tokenizer.decode(ids[: self.limit], clean_up_tokenization_spaces=False)
            kept = kept.rstrip("\ufffd").rstrip()  # \ufffd: a character the cut split in two
            part = kept[len(self.text) :] if kept.startswith(self.text) else ""
            ids = self.tokenizer.encode(self.text + part, add_special_tokens=False)
        self.text, self.tokens = self.text + part, len(ids)
        return part

    def share(self, growth: Growth) -> Growth:
        """Answer nodes get equal parts of the tokens left after their prefixes, so a capped
        answer holds every point, shortened, rather than its first points whole."""
        ids = set(growth.answer or ())
        answer = [n for n in growth.nodes if n.id in ids]
        if self.limit is None or not answer:
            return growth
        frame = self.count("\n\n".join(f"{n.prefix} " for n in answer))
        each = max(1, (self.limit - self.tokens - frame) // len(answer))
        nodes = tuple(
            replace(n, max_tokens=min(n.max_tokens, each)) if n.id in ids else n
            for n in growth.nodes
        )
        return replace(growth, nodes=nodes)


@dataclass
class _Order:
    """Answer paragraphs in plan order, released (through the cap) as soon as every earlier one
    is done."""

    cap: _Cap
    grown: dict[str, Node] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    done: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def record(self, hook: Expander) -> Expander:
        def wrapped(node: Node, text: str) -> Growth:
            growth = self.cap.share(hook(node, text))
            self.grown.update((n.id, n) for n in growth.nodes)
            self.order = list(growth.answer or ())
            return growth

        return wrapped

    def ready(self, ev: Event) -> list[str]:
        if isinstance(ev, NodeFinished) and ev.result.id in self.grown:
            self.done[ev.result.id] = _paragraph(self.grown[ev.result.id], ev.result.text)
        out = []
        while self.sent < len(self.order) and self.order[self.sent] in self.done:
            sep = "\n\n" if self.sent else ""
            out.append(self.cap.take(sep + self.done[self.order[self.sent]]))
            self.sent += 1
        return [text for text in out if text]


_paragraph = answer_part  # the same joining as the run's answer (stream == whole answer)


async def _run(
    backend: LocalBackend,
    planner: SkeletonPlanner,
    question: str,
    order: _Order,
    write: Write | None,
    job: Job,
) -> RunResult:
    hooks = {k: order.record(v) for k, v in planner.expanders.items()}

    async def emit(ev: Event) -> None:
        for text in order.ready(ev):
            if write is not None:
                await write(job.chunk(text))

    return await run_plan(planner.plan(question), backend, RunConfig(), expanders=hooks, emit=emit)


def extra(result: RunResult, planner: SkeletonPlanner) -> dict[str, Any]:
    skel = result.plan.node("skeleton")
    raw = skel.prefix + result.results["skeleton"].text if "skeleton" in result.results else ""
    pointed = any(a.startswith("point-") for a in result.plan.answer)
    return {
        "pipeline": "skeleton-of-thought",
        "skeleton": raw,
        "points": parse_points(raw, planner.max_points) if pointed else [],
        "notes": list(result.notes),
        "nodes": [_node(r) for r in _in_plan_order(result)],
        "seconds": round(result.seconds, 4),
        "forward_passes": result.forward_passes,
    }


def _in_plan_order(result: RunResult) -> list[Any]:
    return [result.results[n.id] for n in result.plan.nodes if n.id in result.results]


def _node(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "tokens": r.tokens,
        "seconds": round(r.seconds, 4),
        "finish_reason": r.finish_reason,
    }


def _finish(result: RunResult, cap: _Cap) -> str:
    answer: Mapping[str, Any] = {a: result.results.get(a) for a in result.plan.answer}
    hit = any(r is not None and r.finish_reason == "length" for r in answer.values())
    return "length" if hit or cap.cut else "stop"


def _order(backend: LocalBackend, sot: Budgeted) -> _Order:
    return _Order(_Cap(backend.tokenizer, sot.max_tokens))


async def complete(backend: LocalBackend, sot: Budgeted, question: str, job: Job) -> Completion:
    order = _order(backend, sot)
    result = await _run(backend, sot.planner, question, order, None, job)
    usage = Usage.of(len(job.prompt), order.cap.tokens)
    whole = job.whole(order.cap.text, _finish(result, order.cap), usage)
    return whole.model_copy(update={"parafill": extra(result, sot.planner)})


def stream(backend: LocalBackend, sot: Budgeted, question: str, job: Job) -> Produce:
    async def produce(write: Write) -> None:
        await write(job.chunk("", first=True))
        order = _order(backend, sot)
        result = await _run(backend, sot.planner, question, order, write, job)
        finish = _finish(result, order.cap)
        await write(job.chunk(None, finish, extra=extra(result, sot.planner)))
        if job.include_usage:
            await write(job.usage_chunk(Usage.of(len(job.prompt), order.cap.tokens)))

    return produce
