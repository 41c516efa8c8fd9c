"""`--weights`: the local engine's projection weight format, on every command that opens it."""

import json

import pytest
from typer.testing import CliRunner

from parafill import api
from parafill.backends.engine import kernels
from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.cli import app
from parafill.cli import serve as serve_cli

SMALL = [
    "--plan",
    "always",
    "--max-points",
    "3",
    "--point-tokens",
    "12",
    "--skeleton-tokens",
    "40",
    "--direct-tokens",
    "16",
]
runner = CliRunner()


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"nodes": [{"id": "a", "prompt": "Say hi.", "max_tokens": 4}]}))
    return str(path)


def commands(plan_file: str) -> list[list[str]]:
    return [
        ["run", "hi"],
        ["plan", plan_file],
        ["dag", "hi"],
        ["reason", "hi"],
        ["write", "tides"],
        ["ner", "Paris is nice"],
    ]


def test_run_on_int4_weights_answers_from_the_ggufs_own_blocks():
    res = runner.invoke(
        app, ["run", "What are good ways to save money?", "--weights", "int4", *SMALL]
    )
    assert res.exit_code == 0, res.output
    assert "weights int4: projections" in res.stderr and "GGUF's own blocks" in res.stderr
    assert "1. " in res.stdout and "[point-1] done:" in res.output
    assert any(ln.startswith("parafill: nodes") for ln in res.stdout.splitlines()), res.stdout


def test_every_local_command_opens_the_engine_with_the_format_given(monkeypatch, plan_file):
    opened: list[LocalConfig] = []

    def fake_open(cls, config, on_convert=None):
        opened.append(config)
        raise ModelNotFound("not loading a model in this test")

    monkeypatch.setattr(LocalBackend, "open", classmethod(fake_open))
    for i, command in enumerate(commands(plan_file)):
        fmt = ("fp32", "bf16", "int8", "int4")[i % 4]
        res = runner.invoke(app, [*command, "--weights", fmt])
        assert res.exit_code == 2 and "not loading a model" in res.stderr, (command, res.output)
        assert opened[-1].weights == fmt, command
        runner.invoke(app, command)
        assert opened[-1].weights == "auto", command  # not given: LocalConfig resolves it
    assert len(opened) == 12


def test_an_unknown_format_is_refused_before_the_model_loads(monkeypatch, plan_file):
    monkeypatch.setattr(LocalBackend, "open", None)  # opening it would fail loudly
    for command in [*commands(plan_file), ["serve"]]:
        res = runner.invoke(app, [*command, "--weights", "int3"])
        assert res.exit_code == 2, (command, res.output)
        assert "unknown weight format 'int3'; choose one of fp32, bf16, int8, int4" in res.stderr
        assert "Traceback" not in res.output


def test_weights_with_a_server_is_refused(plan_file):
    for command in commands(plan_file):
        args = [*command, "--weights", "int8", "--server", "http://127.0.0.1:9"]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (command, res.output)
        assert "--weights applies to the local engine" in res.stderr
        assert "did not answer" not in res.stderr  # refused before the server is asked


def test_serve_opens_the_engine_with_the_format_given(monkeypatch):
    served: list[LocalConfig] = []

    async def fake_serve(local, settings, where):
        served.append(local)

    monkeypatch.setattr(serve_cli, "_serve", fake_serve)
    assert runner.invoke(app, ["serve", "--weights", "int8"]).exit_code == 0
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert [c.weights for c in served] == ["int8", "auto"]


def test_router_costs_are_kept_per_weight_format():
    fp32 = api.cost_key(LocalConfig(device="cpu", weights="fp32"))
    assert fp32 == "embedded-smollm2-rows-cpu"  # the key measured before formats existed
    assert api.cost_key(LocalConfig(device="cpu", weights="int4")) == f"{fp32}-int4"
    # the default: int4 on the CPU (another model too, where parafill's kernels are built),
    # fp32 with an adapter
    assert api.cost_key(LocalConfig(device="cpu")) == f"{fp32}-int4"
    assert api.cost_key(LocalConfig(device="cpu", adapter="a")) == fp32
    other = "m-rows-cpu-int4" if kernels.available() else "m-rows-cpu"
    assert api.cost_key(LocalConfig(device="cpu", model="m")) == other
    assert api.cost_key(LocalConfig(device="cuda")) == "embedded-smollm2-rows-cuda"


def test_serve_passes_the_attention_precision_and_refuses_an_unknown_one(monkeypatch):
    served: list[LocalConfig] = []

    async def fake_serve(local, settings, where):
        served.append(local)

    monkeypatch.setattr(serve_cli, "_serve", fake_serve)
    native = ["serve", "--weights", "int4", "--attention", "native"]
    assert runner.invoke(app, native).exit_code == 0
    assert runner.invoke(app, ["serve", "--weights", "int4"]).exit_code == 0
    assert [c.attention for c in served] == ["native", "auto"]
    res = runner.invoke(app, ["serve", "--attention", "fp16"])
    assert (
        res.exit_code == 2
        and "--attention must be one of auto, ordered, native, fp64" in res.stderr
    )
    assert len(served) == 2


async def _open(config: LocalConfig) -> None:
    async with LocalBackend.open(config):
        pass


def test_the_backend_refuses_an_unknown_attention_precision_before_loading(monkeypatch):
    import anyio

    from parafill.backends import local

    monkeypatch.setattr(local, "load", None)  # loading would fail loudly
    with pytest.raises(
        ValueError, match="attention must be one of auto, ordered, native, fp64, not 'fp16'"
    ):
        anyio.run(_open, LocalConfig(attention="fp16"))  # type: ignore[arg-type]


def batch_commands(tmp_path) -> list[list[str]]:
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"question": "hi", "topic": "tides", "text": "Paris"}) + "\n")
    out = str(tmp_path / "out.jsonl")
    return [
        ["batch", name, "--input", str(lines), "--output", out, "--overwrite"]
        for name in ("run", "write", "ner", "dag", "reason")
    ]


def test_every_local_command_passes_the_attention_precision(monkeypatch, plan_file, tmp_path):
    opened: list[LocalConfig] = []

    def fake_open(cls, config, on_convert=None):
        opened.append(config)
        raise ModelNotFound("not loading a model in this test")

    monkeypatch.setattr(LocalBackend, "open", classmethod(fake_open))
    for command in commands(plan_file):
        res = runner.invoke(app, [*command, "--attention", "native"])
        assert res.exit_code == 2 and "not loading a model" in res.stderr, (command, res.output)
        assert opened[-1].attention == "native", command
        runner.invoke(app, command)
        assert opened[-1].attention == "auto", command
    for command in batch_commands(tmp_path):
        before = len(opened)
        runner.invoke(app, [*command, "--attention", "fp64"])
        assert len(opened) == before + 1, (command, opened)
        assert opened[-1].attention == "fp64", command


def test_an_unknown_or_remote_attention_precision_is_refused_before_loading(
    monkeypatch, plan_file, tmp_path
):
    monkeypatch.setattr(LocalBackend, "open", None)  # opening it would fail loudly
    for command in [*commands(plan_file), *batch_commands(tmp_path)]:
        res = runner.invoke(app, [*command, "--attention", "fp16"])
        assert res.exit_code == 2, (command, res.output)
        assert "--attention must be one of auto, ordered, native, fp64, not 'fp16'" in res.stderr, (
            command
        )
        res = runner.invoke(
            app, [*command, "--attention", "native", "--server", "http://127.0.0.1:9"]
        )
        assert res.exit_code == 2, (command, res.output)
        assert "--attention applies to the local engine" in res.stderr, command
        assert "Traceback" not in res.output
