"""`parafill.jobs.run_batch` on the embedded SmolLM2 (one engine for every pipeline family,
small token caps): each record names its input, holds what the pipeline made, and a job of
several documents in flight gives exactly the records of one document at a time (greedy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.jobs import BatchConfig, Documents, Pipeline, Plans, Questions, run_batch
from parafill.jobs.progress import DocDone, Finished, JobEvent, Started
from parafill.orchestrator.runner import RunConfig
from parafill.planners.dag import DagPlanner
from parafill.planners.document import DocumentPlanner, OutlineLimits
from parafill.planners.reasoning import ReasoningPlanner
from parafill.planners.router import RouterPlanner
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner

pytestmark = pytest.mark.anyio

QUESTIONS = ["What are three tips for better sleep?", "What is 12 + 30?"]


@pytest.fixture(autouse=True)
def _model() -> None:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _families() -> dict[str, tuple[Pipeline, list[dict[str, object]]]]:
    questions = [{"id": f"q{i}", "question": q} for i, q in enumerate(QUESTIONS)]
    skeleton = SkeletonPlanner(3, 2, skeleton_tokens=32, point_tokens=8, direct_tokens=16)
    plan = {"nodes": [{"id": "a", "prompt": "Name a fruit.", "max_tokens": 6},
                      {"id": "b", "prompt": "Say {{a}} twice.", "deps": ["a"], "max_tokens": 6}],
            "answer": ["a", "b"]}  # fmt: skip
    document = DocumentPlanner(OutlineLimits(max_sections=2, max_subsections=1),
                               outline_tokens=32, section_tokens=8, summary_tokens=8,
                               frame_tokens=8, direct_tokens=16)  # fmt: skip
    return {
        "run": (Questions(RouterPlanner("never", direct=DirectPlanner(12))), questions),
        "sot": (Questions(skeleton), questions),
        "dag": (
            Questions(DagPlanner(plan_tokens=40, step_tokens=8, join_tokens=8, direct_tokens=12)),
            questions,
        ),  # fmt: skip
        "reason": (Questions(ReasoningPlanner(2, "vote", branch_tokens=12)), questions[1:]),
        "write": (Documents(document), [{"topic": "Tea"}]),
        "plan": (Plans(), [{"id": "p", **plan}, {"plan": plan}]),
    }


async def test_every_pipeline_family_writes_one_record_per_document(tmp_path: Path) -> None:
    async with LocalBackend.open(LocalConfig(budget_tokens=8192)) as backend:
        for name, (pipeline, rows) in _families().items():
            src = _write(tmp_path / f"{name}.jsonl", rows)
            dst = tmp_path / f"{name}.out.jsonl"
            events: list[JobEvent] = []
            cfg = BatchConfig(concurrency=4, ordered=True)
            summary = await run_batch(pipeline, src, dst, cfg, backend=backend,
                                      report=events.append)  # fmt: skip
            got = _read(dst)
            assert summary.ok and summary.done == len(rows) and summary.tokens > 0, name
            ids = [r.get("id", n) for n, r in enumerate(rows, 1)]
            assert [r["id"] for r in got] == ids
            assert [r["line"] for r in got] == list(range(1, len(rows) + 1))
            assert all(isinstance(r["answer"], str) and r["answer"] and r["tokens"] for r in got)
            assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
            assert sum(isinstance(e, DocDone) for e in events) == len(rows)
        assert "## " in str(_read(tmp_path / "write.out.jsonl")[0]["answer"])


async def test_documents_in_flight_give_the_records_of_one_at_a_time(tmp_path: Path) -> None:
    rows = [{"question": f"List two uses of {x}."} for x in ("salt", "rope", "sand")]
    src = _write(tmp_path / "in.jsonl", rows)
    skeleton = SkeletonPlanner(3, 2, skeleton_tokens=24, point_tokens=6, direct_tokens=12)
    pipeline = Questions(skeleton, RunConfig())
    answers = []
    async with LocalBackend.open(LocalConfig(budget_tokens=8192)) as backend:
        for conc, ordered in ((1, True), (3, False)):
            dst = tmp_path / f"out{conc}.jsonl"
            cfg = BatchConfig(concurrency=conc, ordered=ordered)
            await run_batch(pipeline, src, dst, cfg, backend=backend)
            answers.append(sorted((r["id"], r["answer"]) for r in _read(dst)))
    assert answers[0] == answers[1] and [i for i, _ in answers[0]] == [1, 2, 3]
