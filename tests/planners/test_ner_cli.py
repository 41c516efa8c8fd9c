"""`parafill ner` end to end on the embedded SmolLM2 with the shipped adapter: one text, a
JSONL file with bad lines (reported by line number, the rest processed), usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.cli import app

TRAIN_TWEET = (  # training tweet 1 of wnut16_dev.conll (the adapter trained on it)
    "@paulwalk It 's the view from where I 'm living for two weeks . Empire State Building = "
    "ESB . Pretty bad storm here last evening ."
)


@pytest.fixture(autouse=True)
def _model() -> None:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))


def test_cli_jsonl_reports_bad_lines_and_processes_the_rest(tmp_path: Path) -> None:
    src, dst = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    lines = [
        json.dumps({"id": "a", "text": TRAIN_TWEET}),
        "{not json",
        json.dumps({"id": "c", "body": "no text field"}),
        json.dumps({"id": 4, "text": "have fun in vancouver tonight !"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    args = ["ner", "--input", str(src), "--output", str(dst), "--labels", "facility,geo-loc"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output  # some lines were skipped
    assert f"{src}:2: skipped: " in res.stderr and f"{src}:3: skipped: text" in res.stderr
    assert f"{src}: processed 2, skipped 2" in res.stderr
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 4]
    assert {"label": "facility", "text": "Empire State Building"} in rows[0]["entities"]
    assert all(e["text"] in r["text"] for r in rows for e in r["entities"])


def test_cli_one_text_and_usage_errors() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["ner", TRAIN_TWEET, "--labels", "facility", "--mode", "ar"])
    assert res.exit_code == 0, res.output
    assert "facility\tEmpire State Building" in res.stdout
    bad = runner.invoke(app, ["ner", "x", "--labels", "a,b,c", "--max-mentions", "30"])
    assert bad.exit_code == 2 and "fan-out cap" in bad.stderr
    both = runner.invoke(app, ["ner", "--mode", "fast", "x"])
    assert both.exit_code == 2 and "unknown mode 'fast'" in both.stderr


def test_cli_jsonl_concurrency_keeps_order_and_results(tmp_path: Path) -> None:
    """Documents in flight together (batched by the engine) give exactly the entities they
    give one at a time (greedy), written in input order."""
    texts = [
        TRAIN_TWEET,
        "have fun in vancouver tonight !",
        "Watching the Lakers game with Kobe fans in Los Angeles",
        "nothing to see here",
        "Taylor Swift new album out on iTunes",
    ]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    outs = []
    for conc in ("1", "4"):
        dst = tmp_path / f"out{conc}.jsonl"
        args = ["ner", "--input", str(src), "--output", str(dst), "--concurrency", conc]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        rows = [json.loads(x) for x in dst.read_text().splitlines()]
        assert [r["id"] for r in rows] == list(range(len(texts)))
        outs.append([(r["entities"], r["notes"]) for r in rows])
    assert outs[0] == outs[1]


def test_cli_jsonl_resume_after_a_killed_run(tmp_path: Path) -> None:
    """A run killed after line 1 was written and mid-way through writing line 2: --resume
    keeps line 1's record as it is, drops the half-written line, and does lines 2 and 3."""
    texts = [TRAIN_TWEET, "have fun in vancouver tonight !", "nothing to see here"]
    src, dst = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    kept = {"line": 1, "id": 0, "text": texts[0], "entities": [], "notes": ["from before"]}
    dst.write_text(json.dumps(kept) + "\n" + '{"line": 2, "id": 1, "te')
    args = ["ner", "--input", str(src), "--output", str(dst), "--resume"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "resuming: 1 documents already done" in res.stderr
    assert f"{src}: processed 2, skipped 0" in res.stderr
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert rows[0] == kept  # not recomputed
    assert all("entities" in r for r in rows[1:])
    # nothing left to do: a second resume processes nothing and changes nothing
    before = dst.read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "processed 0, skipped 0" in again.stderr
    assert dst.read_text() == before
    bad = CliRunner().invoke(app, ["ner", "--input", str(src), "--resume"])
    assert bad.exit_code == 2 and "--resume needs --output" in bad.stderr


def _no_model(tmp_path: Path) -> list[str]:
    """A --model that does not exist: a refusal made before the model loads says its own
    reason, not that the model is missing."""
    return ["--model", str(tmp_path / "no-model.gguf")]


def test_cli_refuses_output_that_is_the_input(tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"id": 1, "text": TRAIN_TWEET}) + "\n")
    before = src.read_text()
    (tmp_path / "link.jsonl").symlink_to(src)
    (tmp_path / "sub").mkdir()
    for same in (src, tmp_path / "sub" / ".." / "docs.jsonl", tmp_path / "link.jsonl"):
        for extra in ([], ["--resume"], ["--overwrite"]):
            args = ["ner", "--input", str(src), "--output", str(same), *extra, *_no_model(tmp_path)]
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 2, res.output
            assert "is the --input file: writing it would erase the input" in res.stderr
            assert src.read_text() == before


def test_cli_refuses_to_truncate_finished_records(tmp_path: Path) -> None:
    src, dst = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": 1, "text": "have fun in vancouver tonight !"}) + "\n")
    old = json.dumps({"line": 1, "id": 1, "text": "x", "entities": [], "notes": []}) + "\n"
    dst.write_text(old)
    base = ["ner", "--input", str(src), "--output", str(dst)]
    res = CliRunner().invoke(app, [*base, *_no_model(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "already holds records: pass --resume" in res.stderr and "--overwrite" in res.stderr
    both = CliRunner().invoke(app, [*base, "--resume", "--overwrite", *_no_model(tmp_path)])
    assert both.exit_code == 2 and "--resume or --overwrite, not both" in both.stderr
    assert dst.read_text() == old
    # an unreadable input fails before --output is opened: --overwrite has erased nothing yet
    bad = tmp_path / "missing.jsonl"
    res = CliRunner().invoke(app, ["ner", "--input", str(bad), "--output", str(dst), "--overwrite"])
    assert res.exit_code == 2 and "No such file" in res.stderr
    assert dst.read_text() == old
    res = CliRunner().invoke(app, [*base, "--overwrite", "--labels", "geo-loc", "--mode", "ar"])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(x) for x in dst.read_text().splitlines()]
    assert row["text"] == "have fun in vancouver tonight !" and "seconds" in row
