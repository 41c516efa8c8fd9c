"""The `parafill-sot` model: skeleton-of-thought over the server's LocalBackend.

The question is the last user message. The skeleton, its parsed points, notes and per-node
tokens/seconds go in the response's extra top-level `parafill` field. Streaming sends each
answer paragraph (point) whole as soon as it and every point before it are done, in point order,
so the streamed text equals the non-streamed answer. Decoding is greedy (the planner's nodes set
their own temperature); request max_tokens caps each point (and a direct fallback answer).
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


def planner_for(base: SkeletonPlanner, max_tokens: int | None) -> SkeletonPlanner:
    if max_tokens is None:
        return base
    return replace(base, point_tokens=max_tokens, direct_tokens=max_tokens)


@dataclass
class _Order:
    """Answer paragraphs in plan order, released as soon as every earlier one is done."""

    grown: dict[str, Node] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    done: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def record(self, hook: Expander) -> Expander:
        def wrapped(node: Node, text: str) -> Growth:
            growth = hook(node, text)
            self.grown.update((n.id, n) for n in growth.nodes)
            self.order = list(growth.answer or ())
            return growth

        return wrapped

    def ready(self, ev: Event) -> list[str]:
        if isinstance(ev, NodeFinished) and ev.result.id in self.grown:
            self.done[ev.result.id] = _paragraph(self.grown[ev.result.id], ev.result.text)
        out = []
        while self.sent < len(self.order) and self.order[self.sent] in self.done:
            out.append(("\n\n" if self.sent else "") + self.done[self.order[self.sent]])
            self.sent += 1
        return out


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


def _finish(result: RunResult) -> str:
    answer: Mapping[str, Any] = {a: result.results.get(a) for a in result.plan.answer}
    hit = any(r is not None and r.finish_reason == "length" for r in answer.values())
    return "length" if hit else "stop"


async def complete(
    backend: LocalBackend, planner: SkeletonPlanner, question: str, job: Job
) -> Completion:
    result = await _run(backend, planner, question, _Order(), None, job)
    whole = job.whole(result.answer, _finish(result), Usage.of(len(job.prompt), result.tokens))
    return whole.model_copy(update={"parafill": extra(result, planner)})


def stream(backend: LocalBackend, planner: SkeletonPlanner, question: str, job: Job) -> Produce:
    async def produce(write: Write) -> None:
        await write(job.chunk("", first=True))
        result = await _run(backend, planner, question, _Order(), write, job)
        await write(job.chunk(None, _finish(result), extra=extra(result, planner)))
        if job.include_usage:
            await write(job.usage_chunk(Usage.of(len(job.prompt), result.tokens)))

    return produce
