"""`--draft-model` and `--self-layers`: the model-drafting fillers' options, on every command
that opens the local engine and on `parafill serve`. Checked before anything loads (a missing
draft model, bad layer lists, either one with --server, `--filler draft` without a draft model:
exit 2); passed to LocalConfig; and two real runs on the embedded SmolLM2: `--filler self` with
half the layers, and `--filler draft` drafting with the model's own GGUF, whose greedy answer
equals `--filler autoregressive`'s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.cli import app
from parafill.cli import serve as serve_cli
from parafill.cli.common import parse_layers

runner = CliRunner()
EVERY_OTHER = [*range(0, 30, 2), 29]  # of SmolLM2-135M's 30 layers
QUESTION = ["What is the capital of France?", "--plan", "never", "--direct-tokens", "8"]


@pytest.fixture
def draft(tmp_path: Path) -> str:
    """An existing path to name as --draft-model (never loaded in the option tests)."""
    path = tmp_path / "draft.gguf"
    path.write_bytes(b"")
    return str(path)


def commands(tmp_path: Path) -> list[list[str]]:
    """Every command that opens the local engine, with what it needs to get that far."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"nodes": [{"id": "a", "prompt": "Say hi.", "max_tokens": 4}]}))
    lines = {
        "run": {"question": "hi"},
        "sot": {"question": "hi"},
        "dag": {"question": "hi"},
        "reason": {"question": "hi"},
        "write": {"topic": "tides"},
        "plan": {"plan": json.loads(plan.read_text())},
        "ner": {"text": "Paris is nice"},
    }
    batch = []
    for name, record in lines.items():
        src = tmp_path / f"{name}.jsonl"
        src.write_text(json.dumps(record) + "\n")
        out = tmp_path / f"{name}.out.jsonl"
        batch.append(["batch", name, "--input", str(src), "--output", str(out), "--overwrite"])
    singles = [["run", "hi"], ["plan", str(plan)], ["dag", "hi"], ["reason", "hi"]]
    return [*singles, ["write", "tides"], ["ner", "Paris is nice"], *batch]


def _refused(res: Any, says: str) -> None:
    assert res.exit_code == 2, res.output
    assert says in res.stderr, res.stderr
    assert "Traceback" not in res.output


# ---- checked before anything loads --------------------------------------------------------


def test_every_local_command_opens_the_engine_with_the_draft_model_and_layers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, draft: str
) -> None:
    opened: list[LocalConfig] = []

    def fake_open(cls: type, config: LocalConfig, on_convert: Any = None) -> None:
        opened.append(config)
        raise ModelNotFound("not loading a model in this test")

    monkeypatch.setattr(LocalBackend, "open", classmethod(fake_open))
    for command in commands(tmp_path):
        res = runner.invoke(app, [*command, "--draft-model", draft, "--self-layers", "4,0,2"])
        assert res.exit_code == 2 and "not loading a model" in res.stderr, (command, res.output)
        assert opened[-1].draft_model == draft, command
        assert opened[-1].self_layers == (0, 2, 4), command  # sorted: the layers' own order
        runner.invoke(app, [*command, "--filler", "draft", "--draft-model", draft])
        assert opened[-1].draft_model == draft, command
        runner.invoke(app, command)
        assert (opened[-1].draft_model, opened[-1].self_layers) == (None, None), command
    assert len(opened) == 3 * len(commands(tmp_path))


def test_serve_opens_the_engine_with_the_draft_model_and_layers(
    monkeypatch: pytest.MonkeyPatch, draft: str
) -> None:
    served: list[LocalConfig] = []

    async def fake_serve(local: LocalConfig, settings: Any, where: Any) -> None:
        served.append(local)

    monkeypatch.setattr(serve_cli, "_serve", fake_serve)
    args = ["serve", "--filler", "draft", "--draft-model", draft, "--self-layers", "1,3"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["serve", "--filler", "self"]).exit_code == 0
    assert [(c.filler, c.draft_model, c.self_layers) for c in served] == [
        ("draft", draft, (1, 3)),
        ("self", None, None),
    ]


def test_filler_draft_without_a_draft_model_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(LocalBackend, "open", None)  # opening it would fail loudly
    for command in [*commands(tmp_path), ["serve"]]:
        res = runner.invoke(app, [*command, "--filler", "draft"])
        _refused(res, "--filler draft needs a draft model: add --draft-model PATH")


@pytest.mark.parametrize(
    ("layers", "says"),
    [
        ("1,x", "--self-layers must be comma-separated layer indices (integers), not '1,x'"),
        ("0,1.5", "--self-layers must be comma-separated layer indices"),
        ("0,,2", "--self-layers must be comma-separated layer indices"),
        ("", "--self-layers needs at least one layer index"),
        (" , ", "--self-layers needs at least one layer index"),
        ("3,1,3", "--self-layers names layer 3 more than once"),
        ("-1,2", "--self-layers: layer indices start at 0, not -1"),
    ],
)
def test_bad_self_layers_are_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, layers: str, says: str
) -> None:
    monkeypatch.setattr(LocalBackend, "open", None)
    for command in [*commands(tmp_path), ["serve"]]:
        _refused(runner.invoke(app, [*command, f"--self-layers={layers}"]), says)


def test_a_missing_draft_model_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(LocalBackend, "open", None)
    gone = str(tmp_path / "nowhere.gguf")
    for command in [*commands(tmp_path), ["serve"]]:
        res = runner.invoke(app, [*command, "--filler", "draft", "--draft-model", gone])
        _refused(res, f"--draft-model {gone!r}: no such file or directory")


def test_draft_model_and_self_layers_with_a_server_are_refused(tmp_path: Path, draft: str) -> None:
    for command in commands(tmp_path):
        for flag, value in (("--draft-model", draft), ("--self-layers", "0,1")):
            res = runner.invoke(app, [*command, flag, value, "--server", "http://127.0.0.1:9"])
            _refused(res, f"{flag} applies to the local engine, not to --server")
            assert "did not answer" not in res.stderr  # refused before the server is asked


def test_a_draft_model_the_engine_refuses_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, draft: str
) -> None:
    """LocalBackend.open's ValueError (another tokenizer) is exit 2 with its reason."""

    @asynccontextmanager
    async def refusing(
        cls: type, config: LocalConfig, on_convert: Any = None
    ) -> AsyncIterator[None]:
        raise ValueError("the draft model has another tokenizer than the target")
        yield

    monkeypatch.setattr(LocalBackend, "open", classmethod(refusing))
    for command in [*commands(tmp_path), ["serve"]]:
        res = runner.invoke(app, [*command, "--filler", "draft", "--draft-model", draft])
        _refused(res, "the draft model has another tokenizer than the target")


def test_parse_layers_sorts_and_strips() -> None:
    assert parse_layers(" 29, 0 ,2") == (0, 2, 29)
    assert parse_layers("7") == (7,)


# ---- real runs on the embedded SmolLM2 -----------------------------------------------------


def _answer(*args: str) -> dict[str, Any]:
    res = runner.invoke(app, ["run", *QUESTION, "--json", *args])
    assert res.exit_code == 0, res.output
    result: dict[str, Any] = json.loads(res.stdout)
    assert result["answer"].strip(), result
    return result


def test_self_filler_with_explicit_layers_answers() -> None:
    result = _answer("--filler", "self", "--self-layers", ",".join(map(str, EVERY_OTHER)))
    assert "Paris" in result["answer"]
    assert result["nodes"]["answer"]["fill"]["drafted"] > 0  # the self drafter ran


def test_draft_filler_on_the_models_own_gguf_answers_as_autoregressive() -> None:
    drafted = _answer("--filler", "draft", "--draft-model", str(default_gguf()))
    plain = _answer("--filler", "autoregressive")
    assert drafted["answer"] == plain["answer"]
    assert drafted["nodes"]["answer"]["text"] == plain["nodes"]["answer"]["text"]
    fill = drafted["nodes"]["answer"]["fill"]
    assert fill["accepted"] > 0  # the drafter ran and its drafts were kept
    assert drafted["forward_passes"] < plain["forward_passes"]
