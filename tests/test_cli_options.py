"""Each CLI option is declared once (parafill.cli.options, planning, jobs) and every command
that takes it gets that one declaration: the source names each option in one typer.Option, and
an option that several commands list has the same help, default and env var on all of them
(but the few names that mean another thing on another command). The Ray options of `parafill
batch` work before PIPELINE and after it, and reach the Ray runner (no model is loaded here)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

import parafill.cli
from parafill.cli import app
from parafill.cli import jobs as cli_jobs
from parafill.cli.groups import takes
from parafill.jobs import Entities, Plans, RayConfig, Summary

CLI = Path(parafill.cli.__file__).parent
runner = CliRunner()

ENGINE = ["--model", "--weights", "--attention", "--draft-model", "--self-layers", "--filler"]
SERVER = ["--server", "--server-model", "--api-key"]
SHARED = [*ENGINE, "--mode", "--stop-on-repeat", "--adapter", "--no-adapter", *SERVER,
          "--json", "--compare", "--direct-tokens", "--skeleton-tokens", "--output", "--resume",
          "--overwrite", "--concurrency", "--ray", "--ray-actors", "--ray-batch-size"]  # fmt: skip
# the same name, another option: ner's --mode (parallel | ar, not the engine's packing) and
# --input (one text or a file); serve's --api-key (the key it requires, PARAFILL_API_KEY) and
# --filler (the default of requests that name none, not an override of every node); dag's
# and reason's --join-tokens (each planner's own join step)
HOMONYMS = {"--mode", "--input", "--api-key", "--filler", "--join-tokens"}


def _declared() -> Counter[str]:
    """How often each option name is the first argument of a typer.Option in parafill/cli."""
    found: Counter[str] = Counter()
    for path in CLI.glob("*.py"):
        found.update(re.findall(r'typer\.Option\(\s*"(--[a-z0-9-]+)', path.read_text()))
    return found


def _options() -> dict[str, dict[str, Any]]:
    """Every command's options: `{command: {name: (help, default, envvar, required)}}`."""
    found: dict[str, dict[str, Any]] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))
        for p in cmd.params:
            if p.param_type_name == "option":
                why = (p.help, p.default, p.envvar, p.required)
                found.setdefault(" ".join(path), {})[p.opts[0]] = why

    walk(typer.main.get_command(app), ())
    return found


def test_each_shared_option_is_declared_once_in_the_source() -> None:
    declared = _declared()
    for name in SHARED:
        assert declared[name] == 1, (name, declared[name])
    twice = {name: n for name, n in declared.items() if n > 1}
    assert twice == {"--input": 2}, twice  # batch's (required) and ner's (or TEXT)


def test_an_option_on_several_commands_is_one_option() -> None:
    by_name: dict[str, dict[Any, list[str]]] = {}
    for command, options in _options().items():
        for name, why in options.items():
            by_name.setdefault(name, {}).setdefault(why, []).append(command)
    split = {name: ways for name, ways in by_name.items() if len(ways) > 1}
    assert set(split) == HOMONYMS, sorted(split)


def test_every_command_that_opens_the_engine_takes_its_options() -> None:
    options = _options()
    engines = [c for c in options if c and c not in ("batch", "serve")]
    assert len(engines) == 13, engines  # run, plan, dag, reason, write, ner + 7 batch pipelines
    for command in engines:
        assert set(ENGINE + SERVER) <= set(options[command]), command
    assert set(ENGINE) <= set(options["serve"])
    assert not set(SERVER[:2]) & set(options["serve"])  # serve is the server


def test_help_lists_every_option_with_its_help() -> None:
    for command in (["run"], ["batch", "ner"], ["serve"]):
        res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        for name in ("--weights", "--draft-model", "--self-layers", "--attention", "--filler"):
            assert name in res.output, (command, name)
        assert "Weight format of the local engine" in res.output


def test_takes_refuses_an_option_from_two_groups() -> None:
    def one(flag: bool = False) -> bool:
        return flag

    def two(flag: bool = False) -> bool:
        return flag

    def command(a: bool, b: bool) -> None: ...

    with pytest.raises(TypeError, match="flag come from two places"):
        takes(a=one, b=two)(command)
    with pytest.raises(TypeError, match="has no parameter c"):
        takes(c=one)(command)


# ---- --ray before or after PIPELINE ------------------------------------------------------------


@pytest.fixture
def on_ray(monkeypatch: pytest.MonkeyPatch) -> list[tuple[RayConfig, Any]]:
    """What the Ray runner was called with (it runs nothing here)."""
    calls: list[tuple[RayConfig, Any]] = []

    def fake(run: Any, pipeline: Any, config: RayConfig, report: Any) -> Summary:
        calls.append((config, pipeline))
        return Summary(total=1, done=1)

    monkeypatch.setattr(cli_jobs, "run_on_ray", fake)
    return calls


def _files(tmp_path: Path, line: dict[str, object]) -> list[str]:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(line) + "\n")
    return ["--input", str(src), "--output", str(dst), "--overwrite"]


def test_ray_after_the_pipeline(tmp_path: Path, on_ray: list[tuple[RayConfig, Any]]) -> None:
    files = _files(tmp_path, {"text": "Paris is nice"})
    res = runner.invoke(app, ["batch", "ner", *files, "--ray", "local", "--ray-actors", "2"])
    assert res.exit_code == 0, res.output
    [(config, pipeline)] = on_ray
    assert config == RayConfig("local", actors=2)
    assert isinstance(pipeline, Entities)


def test_ray_before_the_pipeline_is_used_and_after_wins(
    tmp_path: Path, on_ray: list[tuple[RayConfig, Any]]
) -> None:
    files = _files(tmp_path, {"nodes": [{"id": "j", "kind": "compute", "fn": "join"}]})
    before = ["batch", "--ray", "local", "--ray-batch-size", "3", "plan", *files]
    assert runner.invoke(app, before).exit_code == 0
    assert runner.invoke(app, [*before, "--ray", "auto", "--ray-actors", "2"]).exit_code == 0
    assert [c for c, _ in on_ray] == [RayConfig("local", batch_size=3),
                                      RayConfig("auto", actors=2, batch_size=3)]  # fmt: skip
    assert all(isinstance(p, Plans) for _, p in on_ray)


def test_batch_help_lists_the_ray_options_on_the_pipeline() -> None:
    res = runner.invoke(app, ["batch", "ner", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "--ray-actors" in res.output and "--ray " in res.output

