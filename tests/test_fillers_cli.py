"""Fillers at the plan-file and command-line boundary: a plan node naming an unknown filler is
refused with the node's id; `--filler` is checked on every command before the model loads; and
`parafill plan --filler ngram` on the embedded SmolLM2 writes the autoregressive answer in fewer
forward passes on a prompt that asks for a copy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.cli import app
from parafill.cli.common import EngineOpts
from parafill.orchestrator.plan import Plan, PlanError

KNOWN = "autoregressive, ngram, jacobi, self, draft"
SENTENCE = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the great "
    "lamp for the ships."
)
runner = CliRunner()


def _plan(**fillers: str | None) -> str:
    """A plan with one node per keyword: id -> its filler (None: no "filler" key at all)."""
    nodes: list[dict[str, Any]] = []
    for node_id, filler in fillers.items():
        node: dict[str, Any] = {"id": node_id, "prompt": f"Write about {node_id}."}
        if filler is not None:
            node["filler"] = filler
        nodes.append(node)
    return json.dumps({"nodes": nodes})


# ---- Node.filler in plan files ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["autoregressive", "ngram", "jacobi", None])
def test_plan_json_takes_every_known_filler_and_none(name: str | None) -> None:
    plan = Plan.from_json(_plan(a=name))
    assert plan.node("a").filler == name
    assert Plan.from_json(plan.to_json()).node("a").filler == name  # round trip keeps it


@pytest.mark.parametrize("bad", ["magic", "NGRAM", ""])
def test_plan_json_refuses_an_unknown_filler_naming_the_node(bad: str) -> None:
    with pytest.raises(PlanError) as info:
        Plan.from_json(_plan(a="ngram", b=bad))
    assert info.value.node == "b"
    assert f"node 'b' names unknown filler {bad!r}" in str(info.value)
    assert KNOWN in str(info.value)


def test_plan_command_refuses_a_plan_file_with_an_unknown_filler(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(_plan(a=None, b="magic"))
    # a model that does not exist: the plan is refused before any model would load
    res = runner.invoke(app, ["plan", str(path), "--model", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2, res.output
    assert "cannot use plan" in res.stderr
    assert f"node 'b' names unknown filler 'magic' ({KNOWN})" in res.stderr
    assert "does not exist" not in res.output


# ---- --filler on every command ----------------------------------------------------------------


def _command(name: str, tmp_path: Path) -> list[str]:
    """The command's arguments up to its options (a valid plan file for `plan`)."""
    if name == "plan":
        path = tmp_path / "plan.json"
        path.write_text(_plan(a=None))
        return ["plan", str(path)]
    if name == "serve":
        return ["serve"]
    return [name, "Bees make honey"]


COMMANDS = ["run", "plan", "dag", "reason", "write", "ner", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_filler_option_exits_2_before_the_model_loads(command: str, tmp_path: Path) -> None:
    missing = ["--model", str(tmp_path / "none.gguf")]
    res = runner.invoke(app, [*_command(command, tmp_path), "--filler", "magic", *missing])
    assert res.exit_code == 2, res.output
    assert f"unknown filler 'magic' (known: {KNOWN})" in res.stderr
    assert "does not exist" not in res.output  # refused before the model was looked for


@pytest.mark.parametrize("command", COMMANDS)
def test_known_filler_option_passes_the_check(command: str, tmp_path: Path) -> None:
    """A known name gets as far as loading the model (which is missing here)."""
    missing = ["--model", str(tmp_path / "none.gguf")]
    res = runner.invoke(app, [*_command(command, tmp_path), "--filler", "jacobi", *missing])
    assert res.exit_code == 2, res.output
    assert "does not exist" in res.stderr
    assert "unknown filler" not in res.stderr


# ---- a real run: --filler ngram writes the autoregressive answer in fewer passes ------------


@pytest.fixture(scope="module")
def _model() -> Iterator[None]:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model on a busy 2-core box: one thread beats two
    yield
    torch.set_num_threads(n)


@pytest.fixture
def always_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's speculate="auto" drafts only where measured step times say it pays, which
    on a busy CPU may be almost never; "always" makes the pass counts below reproducible. The
    text must not depend on it either way (greedy decoding is lossless)."""
    local = EngineOpts.local
    monkeypatch.setattr(EngineOpts, "local", lambda self: replace(local(self), speculate="always"))


def _run_plan(path: Path, *extra: str) -> dict[str, Any]:
    res = runner.invoke(app, ["plan", str(path), "--json", *extra])
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.stdout)
    return data


@pytest.mark.usefixtures("_model", "always_draft")
def test_plan_filler_ngram_gives_the_autoregressive_answer_in_fewer_passes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "copy.json"
    copy = {"prompt": f"Repeat this text exactly:\n{SENTENCE}", "max_tokens": 40}
    nodes = [{"id": "own", "filler": "ngram", **copy}, {"id": "plain", **copy}]
    path.write_text(json.dumps({"nodes": nodes, "answer": ["own", "plain"]}))

    ar = _run_plan(path, "--filler", "autoregressive")
    ng = _run_plan(path, "--filler", "ngram")
    own = _run_plan(path)  # no --filler: each node's own ("ngram", and None: the backend's)

    assert "lighthouse keeper" in ar["answer"]  # the model did copy
    assert ng["answer"] == ar["answer"] == own["answer"]
    for node in ("own", "plain"):
        a, n = ar["nodes"][node], ng["nodes"][node]
        assert n["text"] == a["text"] and n["tokens"] == a["tokens"]
        assert a["fill"]["drafted"] == a["fill"]["accepted"] == 0
        assert a["fill"]["passes"] >= a["tokens"]  # one token per forward pass
        assert 0 < n["fill"]["accepted"] <= n["fill"]["drafted"]
        assert n["fill"]["passes"] < n["tokens"]  # several tokens per forward pass
    assert own["nodes"]["own"]["fill"]["accepted"] > 0  # the node's own filler was used
    assert own["nodes"]["plain"]["fill"]["drafted"] == 0  # the backend's default
    # --filler overrides the nodes' fillers for this run; the plan itself is unchanged
    assert [n.get("filler") for n in ng["plan"]["nodes"]] == ["ngram", None]
    assert ng["notes"] == ar["notes"] == []  # the local engine honours fillers: no note
