"""A batch job on a real multi-node Ray cluster (`ray.cluster_utils.Cluster` on this machine: a
head that runs only the driver and two worker nodes with 2 CPUs each), with a whole worker node
(its raylet and the actors on it) killed mid-job: the driver runs the documents not written yet
again on the node that is left, every input id once; without those reruns the job fails and
`--resume` finishes it, every id still once. The backend is the fake one (no model on the
workers); each record names the node that made it. Slow (~2.5 min): `pytest -m slow`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from parafill.backends.base import Backend
from parafill.backends.fake import FakeBackend
from parafill.jobs import BatchConfig, Output, Plans, RayConfig, ray_batch

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

N = 240  # documents
KILL_AT = 40  # records written when the node is killed
STORE = 80 * 2**20  # object store bytes per node: keep three nodes lean on a small machine


@dataclass
class _Nodes:
    cluster: Any
    workers: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def nodes() -> Iterator[_Nodes]:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]
    head = {"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False}
    c = cluster_utils.Cluster(initialize_head=True, head_node_args=head)
    try:
        got = _Nodes(c, [c.add_node(num_cpus=2, object_store_memory=STORE) for _ in range(2)])
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield got
    finally:
        ray.shutdown()
        c.shutdown()


@asynccontextmanager
async def _fake() -> AsyncIterator[Backend]:
    yield FakeBackend(reply=lambda p: "one two three four", delay=0.02)


@dataclass(frozen=True)
class _Where:
    """The plan pipeline; each record also names the Ray node and process that made it."""

    async def prepare(self, docs: Any, backend: Backend) -> _Where:
        return self

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        import os

        out = await Plans().run(doc, backend)
        node = ray.get_runtime_context().get_node_id()
        return Output({**out.fields, "node": node, "pid": os.getpid()}, out.tokens)


def _job(path: Path) -> Path:
    def plan(i: int) -> dict[str, object]:
        return {"id": f"d{i}", "nodes": [{"id": "a", "prompt": f"doc {i}", "max_tokens": 4}],
                "answer": ["a"]}  # fmt: skip

    path.write_text("".join(json.dumps(plan(i)) + "\n" for i in range(N)))
    return path


@dataclass
class _Kill:
    """Watches the output; at KILL_AT records, kills the worker node that made most of them."""

    dst: Path
    nodes: _Nodes
    before: int = -1
    at: float = 0.0
    victim: str = ""
    error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def _watch(self) -> None:
        deadline = time.monotonic() + 120
        while _count(self.dst) < KILL_AT:
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.01)
        made = Counter(r["node"] for r in _rows(self.dst))
        node = next(w for w in self.nodes.workers if w.node_id == made.most_common(1)[0][0])
        self.victim, self.at = node.node_id, time.monotonic()
        self.nodes.cluster.remove_node(node, allow_graceful=False)  # raylet and its workers
        self.before = _count(self.dst)


def _count(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


@dataclass(frozen=True)
class _Ran:
    rows: list[dict[str, Any]]
    kill: _Kill
    seconds: float
    error: BaseException | None  # what the first run raised (then it was resumed)


def _run_and_kill(tmp_path: Path, nodes: _Nodes, rc: RayConfig) -> _Ran:
    """The job, with a worker node killed at KILL_AT records; resumed if the job raised."""
    src, dst = _job(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    while len(nodes.workers) < 2:  # a fresh second worker after an earlier test's kill
        nodes.workers.append(nodes.cluster.add_node(num_cpus=2, object_store_memory=STORE))
    kill = _Kill(dst, nodes)
    watcher = threading.Thread(target=kill, daemon=True)
    start = time.monotonic()
    watcher.start()
    error: BaseException | None = None
    try:
        ray_batch(_Where(), src, dst, BatchConfig(), rc, opener=_fake)
    except Exception as exc:  # the job gave up on the lost node: --resume must finish it
        error = exc
        watcher.join()
        while any(n["NodeID"] == kill.victim and n["Alive"] for n in ray.nodes()):
            time.sleep(0.5)  # resumed once Ray knows the node is gone, as a user would
        ray_batch(_Where(), src, dst, BatchConfig(resume=True), rc, opener=_fake)
    watcher.join()
    nodes.workers = [w for w in nodes.workers if w.node_id != kill.victim]
    ran = _Ran(_rows(dst), kill, time.monotonic() - start, error)
    by_node = Counter("killed" if r["node"] == kill.victim else "kept" for r in ran.rows)
    print(f"\n{N} docs, node killed at {kill.before} records, {kill.at - start:.1f} s in; "  # noqa: T201
          f"first run raised {type(error).__name__ if error else None}; "
          f"{ran.seconds:.1f} s in all; records by node {dict(by_node)}")  # fmt: skip
    _check(ran)
    return ran


def _check(ran: _Ran) -> None:
    kill = ran.kill
    assert kill.error is None, kill.error
    dead = [n for n in ray.nodes() if n["NodeID"] == kill.victim]
    assert dead and not dead[0]["Alive"]  # the node really is gone
    assert KILL_AT <= kill.before < N  # killed mid-job: records before and after
    assert any(r["node"] == kill.victim for r in ran.rows)  # it held actors that made records
    assert any(r["node"] != kill.victim for r in ran.rows[kill.before :])
    ids = Counter(r["id"] for r in ran.rows)
    assert ids == Counter(f"d{i}" for i in range(N))  # every id exactly once
    assert all(r["answer"] == "one two three four" and "error" not in r for r in ran.rows)


@pytest.mark.slow
def test_a_worker_node_killed_mid_job_leaves_every_id_once(
    tmp_path: Path, nodes: _Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    """The driver runs what was not written yet again, on the node that is left: no resume."""
    rc = RayConfig(address="auto", actors=2, batch_size=4, calls_per_actor=2)
    with caplog.at_level(logging.WARNING, logger="parafill.jobs"):
        assert _run_and_kill(tmp_path, nodes, rc).error is None
    reruns = [r.getMessage() for r in caplog.records if r.name == "parafill.jobs"]
    print("\n".join(reruns))  # noqa: T201
    assert reruns  # the dataset did fail under the lost node, and was run again


@pytest.mark.slow
def test_without_reruns_the_job_fails_and_resume_finishes_it(tmp_path: Path, nodes: _Nodes) -> None:
    """Ray Data alone does not survive the node (max_restarts=0: no rerun by the driver); the
    job raises, and --resume runs the rest, each id still once."""
    rc = RayConfig(address="auto", actors=2, batch_size=4, calls_per_actor=2, max_restarts=0)
    ran = _run_and_kill(tmp_path, nodes, rc)
    assert ran.error is not None
