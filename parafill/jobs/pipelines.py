"""What a batch job does to one document: a `Pipeline` reads the document's fields (pydantic,
the JSONL boundary), runs it on a backend and returns the record's fields. One class per kind
of input: a question (the router, skeleton-of-thought, DAG, reasoning), a topic (a Markdown
document), a text (NER) and a plan. Reading files, concurrency, timeouts and error records are
the runner's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from parafill.api import arun, with_costs
from parafill.backends.base import Backend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.plan import Plan, check_hooks
from parafill.orchestrator.runner import RunConfig
from parafill.planners.base import Planner
from parafill.planners.document import DocumentPlanner
from parafill.planners.ner import NerConfig, check_config, extract
from parafill.planners.router import RouterPlanner


@dataclass(frozen=True)
class Output:
    """A document's record fields (after its id and line) and the tokens it decoded."""

    fields: dict[str, object]
    tokens: int


class Pipeline(Protocol):
    async def prepare(self, docs: Sequence[dict[str, Any]], backend: Backend) -> Pipeline:
        """Itself, ready for `docs` on `backend` (e.g. the router with measured costs)."""
        ...

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        """One document; ValueError (pydantic's included) for fields it cannot use."""
        ...


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")


class QuestionIn(_In):
    question: str = Field(min_length=1)


class TopicIn(_In):
    topic: str = Field(min_length=1)


class TextIn(_In):
    text: str = Field(min_length=1)
    labels: list[str] | None = None  # this document's entity types (default: the job's)

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


def _answer(result_answer: str, result: Any) -> dict[str, object]:
    return {"answer": result_answer, "notes": list(result.notes),
            "seconds": round(result.seconds, 3), "tokens": result.tokens}  # fmt: skip


@dataclass(frozen=True)
class Questions:
    """`question` → the answer of `planner` (the router, skeleton, DAG or reasoning planner).
    The router decides list-like questions by the local engine's step costs (`local`: the
    engine's config, the cache key), measured once before the job, not per document."""

    planner: Planner
    run_config: RunConfig = RunConfig()
    local: LocalConfig | None = None
    announce: Callable[[str], None] | None = field(default=None, compare=False)

    async def prepare(self, docs: Sequence[dict[str, Any]], backend: Backend) -> Questions:
        router = self.planner
        if not isinstance(router, RouterPlanner) or not isinstance(backend, LocalBackend):
            return self
        for doc in docs:
            q = doc.get("question")
            if self.local is not None and isinstance(q, str) and router.needs_costs(q):
                costed = await with_costs(router, q, backend, self.local, self.announce)
                return replace(self, planner=costed)
        return self

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        q = QuestionIn.model_validate(doc).question
        result = await arun(q, backend=backend, planner=self.planner, config=self.run_config)
        return Output({"question": q, **_answer(result.answer, result)}, result.tokens)


@dataclass(frozen=True)
class Documents:
    """`topic` → a Markdown document (outline, sections in parallel, introduction last)."""

    planner: DocumentPlanner
    run_config: RunConfig = RunConfig()

    async def prepare(self, docs: Sequence[dict[str, Any]], backend: Backend) -> Documents:
        return self

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        topic = TopicIn.model_validate(doc).topic
        result = await arun(topic, backend=backend, planner=self.planner, config=self.run_config)
        markdown = self.planner.markdown(result)
        return Output({"topic": topic, **_answer(markdown, result)}, result.tokens)


@dataclass(frozen=True)
class Entities:
    """`text` (+ optional `labels`) → named entities (PaDeLLM-NER, or `mode` 'ar')."""

    config: NerConfig = NerConfig()
    mode: str = "parallel"
    run_config: RunConfig = RunConfig()

    async def prepare(self, docs: Sequence[dict[str, Any]], backend: Backend) -> Entities:
        return self

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        got = TextIn.model_validate(doc)
        cfg = self.config if got.labels is None else replace(self.config, labels=tuple(got.labels))
        check_config(cfg)
        result = await extract(got.text, backend, cfg, self.mode, self.run_config)
        fields: dict[str, object] = {
            "text": got.text,
            "entities": [{"label": e.label, "text": e.text} for e in result.entities],
            "notes": list(result.notes),
            "seconds": round(result.seconds, 3),
            "tokens": result.tokens,
        }
        return Output(fields, result.tokens)


@dataclass(frozen=True)
class Plans:
    """A plan (the line itself, or its `plan` field) → its answer. Plans run without expand
    hooks, as `parafill plan` runs a file."""

    run_config: RunConfig = RunConfig()

    async def prepare(self, docs: Sequence[dict[str, Any]], backend: Backend) -> Plans:
        return self

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        spec = doc["plan"] if "plan" in doc else doc
        plan = Plan.from_json(json.dumps(spec))  # a PlanError (a ValueError) names the node
        check_hooks(plan.nodes, ())
        result = await arun(plan, backend=backend, config=self.run_config)
        return Output(_answer(result.answer, result), result.tokens)
