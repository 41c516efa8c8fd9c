"""`parafill batch --ray local --server URL`: the batch job on a Ray actor pool whose actors
send every node to a real llama.cpp `llama-server` on 127.0.0.1 (4 slots) instead of loading
a model: every question gets one record, answered through the server (its own log counts the
requests), with the skeleton-of-thought pipeline's structure (a skeleton, then its points)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from llama_server import LlamaServer

pytest.importorskip("ray")

TOPICS = ["stay focused", "save money", "sleep better", "learn a language", "cook rice",
          "stay warm", "make friends", "write clearly"]  # fmt: skip
# llama-server prints its timings once per finished request
_DONE = re.compile(r"prompt eval time =")


def test_a_ray_job_on_a_server_answers_every_question_there(
    llama_binary: LlamaServer, tmp_path: Path
) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Name three ways to {t}."})
                           + "\n" for i, t in enumerate(TOPICS)))  # fmt: skip
    before = len(_DONE.findall(llama_binary.log.read_text(errors="replace")))
    exe = Path(sys.executable).with_name("parafill")
    ray = ["--ray", "local", "--ray-actors", "2", "--ray-batch-size", "2"]
    sot = ["--max-points", "3", "--skeleton-tokens", "48", "--point-tokens", "24",
           "--direct-tokens", "48"]  # fmt: skip
    io = ["--input", str(src), "--output", str(dst), "--json", "--server", llama_binary.url]
    res = subprocess.run([str(exe), "batch", *ray, "sot", *io, *sot],
                         capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert (summary["done"], summary["failed"]) == (len(TOPICS), 0), summary
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"q{i}" for i in range(len(TOPICS)))
    assert all(r["answer"].strip() and r["tokens"] > 0 and not r.get("error") for r in rows)
    served = len(_DONE.findall(llama_binary.log.read_text(errors="replace"))) - before
    # each question: a skeleton request, then one per point (or one direct answer)
    assert served >= 2 * len(TOPICS), served
