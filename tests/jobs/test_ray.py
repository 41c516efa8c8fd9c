"""Batch jobs on a local Ray (`parafill[ray]`): 200 documents through the plan pipeline (most
of them compute-only plans, every tenth a 1-token node on the embedded SmolLM2) give 200
records once each; an actor that dies mid-job (os._exit) is restarted and its batch run again,
every record still once; a driver SIGKILLed mid-job (`--ray local`: its own Ray, which goes with
it) and resumed (on the tests' Ray, by address) gives every record once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parafill.backends.base import Backend
from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.jobs import BatchConfig, Output, Plans, RayConfig, ray_batch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[str]:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test pipeline below
    ctx = ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield str(ctx.address_info["gcs_address"])
    ray.shutdown()


def _plan(i: int) -> dict[str, object]:
    if i % 10 == 0:  # the real model, one token
        return {"nodes": [{"id": "a", "prompt": f"Count to {i}.", "max_tokens": 1}],
                "answer": ["a"]}  # fmt: skip
    return {"nodes": [{"id": "j", "kind": "compute", "fn": "join", "deps": []}], "answer": ["j"]}


def _job(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", **_plan(i)}) + "\n" for i in range(n)))
    return path


def _ids(path: Path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines()]


def test_200_documents_give_200_records_once_each(tmp_path: Path) -> None:
    src, dst = _job(tmp_path / "in.jsonl", 200), tmp_path / "out.jsonl"
    with (tmp_path / "bad.jsonl").open("w") as f:  # plus a bad line: an error record
        f.write(src.read_text() + "{not json\n")
    summary = ray_batch(Plans(), tmp_path / "bad.jsonl", dst, BatchConfig(ordered=True),
                        RayConfig(actors=1, batch_size=8))  # fmt: skip
    assert (summary.total, summary.done, summary.failed) == (201, 200, 1)
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(200)] + [201]  # --ordered
    assert rows[0]["tokens"] == 1 and rows[0]["answer"] and rows[1]["answer"] == ""
    assert rows[200]["error_kind"] == "input" and summary.tokens == 20


@dataclass(frozen=True)
class _DiesOnce:
    """The plan pipeline, but the actor process exits on `victim` the first time it runs."""

    marker: str
    victim: str

    async def prepare(self, docs: Any, backend: Backend) -> _DiesOnce:
        return self

    async def run(self, doc: dict[str, Any], backend: Backend) -> Output:
        if self.victim in json.dumps(doc):
            _die_once(self.marker)
        return await Plans().run(doc, backend)


def _die_once(marker: str) -> None:
    if not os.path.exists(marker):
        Path(marker).write_text("fired")
        os._exit(1)  # the actor's process, as a crash would end it


def test_an_actor_killed_mid_job_loses_and_repeats_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": f"d{i}", **_plan(i)} for i in range(200)]
    rows[117]["nodes"][0]["args"] = {"separator": "victim"}  # type: ignore[index]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    marker = tmp_path / "fired"
    pipeline = _DiesOnce(str(marker), "victim")
    summary = ray_batch(pipeline, src, dst, ray_config=RayConfig(actors=1, batch_size=8))  # type: ignore[arg-type]
    assert marker.exists()  # the actor did die
    assert (summary.done, summary.failed) == (200, 0)
    ids = _ids(dst)
    assert sorted(ids) == sorted(f"d{i}" for i in range(200)) and len(ids) == 200


def test_a_driver_killed_and_resumed_gives_every_record_once(tmp_path: Path, cluster: str) -> None:
    n = 200
    src, dst = _job(tmp_path / "in.jsonl", n), tmp_path / "out.jsonl"
    exe = Path(sys.executable).with_name("parafill")
    job = ["plan", "--input", str(src), "--output", str(dst)]
    local = [str(exe), "batch", "--ray", "local", "--ray-batch-size", "2", *job]  # its own Ray
    proc = subprocess.Popen(local, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and (not dst.exists() or dst.read_text().count("\n") < 10):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-job, not finished
    before = dst.read_text().count("\n")
    assert 10 <= before < n
    joined = [str(exe), "batch", "--ray", cluster, *job, "--resume"]  # the tests' Ray
    res = subprocess.run(joined, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {before} documents already done" in res.stderr
    ids = _ids(dst)
    assert sorted(ids) == sorted(f"d{i}" for i in range(n)) and len(ids) == n
