"""`parafill batch` on the embedded SmolLM2 with one-node plans of a few tokens: bad lines
become error records and the job goes on (exit 1), duplicate ids are refused before anything
runs, records in input order, a per-document timeout, and a job killed with SIGKILL by a real
process then resumed: every id's record present exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.cli import app


@pytest.fixture(autouse=True)
def _model() -> None:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))


def _plan(prompt: str, tokens: int = 6) -> dict[str, object]:
    return {"nodes": [{"id": "a", "prompt": prompt, "max_tokens": tokens}], "answer": ["a"]}


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_bad_lines_become_error_records_and_the_job_goes_on(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        json.dumps({"id": "ok1", **_plan("Name a fruit.")}),
        "{not json",
        json.dumps({"id": "unknown-dep", "nodes": [{"id": "a", "deps": ["z"], "prompt": "x"}]}),
        json.dumps({"id": "long", **_plan("x" * 500)}),
        "",
        json.dumps({"plan": _plan("Name a color.")}),
    ]
    src.write_text("\n".join(lines) + "\n")
    args = ["batch", "plan", "--input", str(src), "--output", str(dst), "--ordered", "--json"]
    res = CliRunner().invoke(app, [*args, "--max-chars", "300", "--concurrency", "3"])
    assert res.exit_code == 1, res.output
    rows = _rows(dst)
    assert [(r["id"], r["line"]) for r in rows] == [
        ("ok1", 1), (2, 2), ("unknown-dep", 3), ("long", 4), (6, 6)]  # fmt: skip
    assert rows[0]["answer"] and rows[4]["answer"] and "error" not in rows[0]
    assert str(rows[1]["error"]).startswith("not JSON") and rows[1]["error_kind"] == "input"
    assert "unknown node 'z'" in str(rows[2]["error"])
    assert "document too long" in str(rows[3]["error"])
    summary = json.loads(res.stdout)
    assert (summary["total"], summary["done"], summary["failed"], summary["skipped"]) == (
        5,
        2,
        3,
        0,
    )
    assert f"{src}:2: id 2: failed: not JSON" in res.stderr
    # a resume keeps the error records (nothing runs); --retry-failed runs their ids again
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 1 and "done 0, failed 0, skipped 5 (3 failed before)" in again.stderr
    assert len(_rows(dst)) == 5


def test_duplicate_ids_are_refused_before_anything_runs(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        json.dumps({"id": 2, "question": "a"}) + "\n" + json.dumps({"question": "b"}) + "\n"
    )
    no_model = ["--model", str(tmp_path / "none.gguf")]  # refused before a model is looked for
    res = CliRunner().invoke(app, ["batch", "sot", "--input", str(src), "--output", str(dst),
                                   *no_model])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "duplicate ids in the input: id 2 on lines 1, 2" in res.stderr
    assert not dst.exists()


def test_a_document_over_its_timeout_is_an_error_record(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(_plan("Write a long story about a ship.", 200)) + "\n")
    args = ["batch", "plan", "--input", str(src), "--output", str(dst), "--timeout", "0.001"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    (row,) = _rows(dst)
    assert row == {"id": 1, "line": 1, "error": "timed out after 0.001 s", "error_kind": "timeout"}


@pytest.mark.slow  # the NER runner is also `parafill ner --input`'s, tested by default there
def test_batch_ner_writes_error_records(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": "t", "text": "have fun in vancouver tonight !", "labels": "geo-loc"},
             {"id": "u", "body": "no text"}]  # fmt: skip
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["batch", "ner", "--input", str(src), "--output", str(dst), "--mode", "ar", "--ordered"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    ok, bad = _rows(dst)
    assert ok["id"] == "t" and isinstance(ok["entities"], list) and "error" not in ok
    assert bad == {"id": "u", "line": 2, "error": "text: Field required", "error_kind": "input"}


def test_resume_after_sigkill_has_every_record_once(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = 16
    src.write_text("".join(json.dumps({"id": f"d{i}", **_plan(f"Count to {i}.", 8)}) + "\n"
                           for i in range(n)))  # fmt: skip
    exe = Path(sys.executable).with_name("parafill")
    args = [str(exe), "batch", "plan", "--input", str(src), "--output", str(dst),
            "--concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and (not dst.exists() or dst.read_text().count("\n") < 3):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-job, not finished
    before = dst.read_text().count("\n")
    assert 3 <= before < n
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {before} documents already done" in res.stderr
    ids = [r["id"] for r in _rows(dst)]
    assert sorted(ids) == sorted(f"d{i}" for i in range(n))  # every id, none twice
