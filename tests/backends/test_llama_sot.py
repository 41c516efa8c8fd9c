"""Skeleton-of-thought over the real llama.cpp servers: llama.cpp's `llama-server` (4 slots)
decodes the point nodes at the same time; llama-cpp-python's Python server one after another.
Read from the order in which the points' text arrives (the run's events), not from wall time.
Also the CLI's `--server` end to end against llama-server."""

from __future__ import annotations

import pytest
from llama_server import LlamaServer
from typer.testing import CliRunner

from parafill.api import arun
from parafill.backends.base import applies
from parafill.backends.openai_http import OpenAIBackend, OpenAIConfig
from parafill.backends.openai_probe import constraint_mode
from parafill.cli import app
from parafill.cli.backend import remote_config
from parafill.cli.common import Remote
from parafill.orchestrator.events import Event, NodeFinished, NodeText
from parafill.planners.skeleton import SkeletonPlanner

QUESTION = "What are good ways to save money?"
PLANNER = SkeletonPlanner(max_points=4, skeleton_tokens=64, point_tokens=48, direct_tokens=48)


def writing_before_first_done(events: list[Event]) -> set[str]:
    """The point nodes that had streamed text before the first point finished."""
    writing: set[str] = set()
    for ev in events:
        if isinstance(ev, NodeText) and ev.node.startswith("point-") and ev.text:
            writing.add(ev.node)
        elif isinstance(ev, NodeFinished) and ev.result.id.startswith("point-"):
            break
    return writing


@pytest.mark.anyio
async def test_points_are_decoded_together_only_by_llama_server(llama: LlamaServer) -> None:
    events: list[Event] = []

    async def keep(ev: Event) -> None:
        events.append(ev)

    cfg = OpenAIConfig((llama.url,), llama.model, timeout=120.0, max_concurrency=4)
    async with OpenAIBackend(cfg) as backend:
        result = await arun(QUESTION, backend=backend, planner=PLANNER, on_event=keep)
    points = [n for n in result.results if n.startswith("point-")]
    assert len(points) >= 2, (result.notes, result.answer)
    together = writing_before_first_done(events)
    if llama.kind == "llama-server":
        assert len(together) >= 2, together  # its slots interleave the points' tokens
    else:
        assert len(together) == 1, together  # one request at a time


SMALL = ["--plan", "always", "--max-points", "3", "--point-tokens", "24",
         "--skeleton-tokens", "48", "--direct-tokens", "24"]  # fmt: skip


def test_cli_run_over_llama_server(llama_binary: LlamaServer) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["run", QUESTION, "--server", llama_binary.url, *SMALL])
    assert res.exit_code == 0, res.output
    assert "skeleton: " in res.output and "[point-1] done:" in res.output
    summary = [ln for ln in res.stdout.splitlines() if ln.startswith("parafill: nodes")]
    assert summary and "forward passes n/a" in summary[0], res.stdout


@pytest.mark.anyio
async def test_cli_server_config_constrains_on_llama_server_only(llama: LlamaServer) -> None:
    """--server asks the server what it is: llama-server gets the llama.cpp constraint mode
    (the skeleton's regex goes as GBNF), llama-cpp-python's server ('me') plain OpenAI."""
    config = await remote_config(Remote(llama.url, None, None))
    assert config.model == llama.model
    want = "llama.cpp" if llama.kind == "llama-server" else "openai"
    assert config.constraints == want
    assert config.share_prefix is (llama.kind == "llama-server")
    async with OpenAIBackend(config) as backend:
        skeleton = SkeletonPlanner().plan(QUESTION).nodes[0].constraint
        assert skeleton is not None
        assert applies(backend, skeleton) is (llama.kind == "llama-server")


@pytest.mark.parametrize(
    ("owned_by", "mode"),
    [("llamacpp", "llama.cpp"), ("vllm", "vllm"), ("me", "openai"), (None, "openai")],
)
def test_constraint_mode_by_server_software(owned_by: str | None, mode: str) -> None:
    assert constraint_mode(owned_by) == mode
