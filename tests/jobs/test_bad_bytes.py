"""An input line that is not UTF-8 is a bad line like any other: an error record (or, for
`parafill ner --input`, a skipped line) naming its line and the byte offset in the line and
the file, with every other line processed and `--resume` writing each id once. Real files; the
runner on the fake backend, `parafill ner --input` on the embedded SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parafill.backends.engine.weights import ModelNotFound, default_gguf
from parafill.backends.fake import FakeBackend
from parafill.cli import app
from parafill.jobs import BatchConfig, DocDone, JobEvent, Plans, run_batch_sync
from parafill.jobs.records import read_input


def _plan(prompt: str) -> dict[str, object]:
    return {"nodes": [{"id": "a", "prompt": prompt, "max_tokens": 4}], "answer": ["a"]}


def _line(row: dict[str, object]) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


BAD = b'{"id": "latin", "text": "caf\xe9"}\n'  # Latin-1: 0xe9 at byte 28 of the line


def test_a_line_that_is_not_utf8_is_a_bad_line_and_the_rest_are_read(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    first = _line({"id": "a", "text": "crème brûlée"})  # multi-byte: bytes != characters
    src.write_bytes(first + BAD + b"\n" + b'{"id": "c", "text": "x"}\r\n')
    a, bad, c = read_input(src)
    assert (a.id, a.fields, a.problem) == ("a", {"text": "crème brûlée"}, None)
    assert (bad.line, bad.id, bad.fields) == (2, 2, {})
    assert bad.problem == (
        f"not UTF-8: byte 0xe9 at offset 28 of the line (offset {len(first) + 28} of the file): "
        "invalid continuation byte"
    )
    assert (c.line, c.id, c.fields, c.problem, c.size) == (4, "c", {"text": "x"}, None, 24)


def test_the_byte_offset_is_right_in_a_large_file(tmp_path: Path) -> None:
    """Past the text reader's 8 KiB chunks, and counted in bytes, not characters."""
    src = tmp_path / "in.jsonl"
    good = b"".join(_line({"id": i, "text": "ünïcödé " * 20}) for i in range(2000))
    src.write_bytes(good + b'{"text": "ok"}\n' + b'{"text": "cut \xf0\x9f"}\n' + b'{"text": "z"}\n')
    docs = read_input(src)
    assert len(docs) == 2003 and docs[-3].problem is None and docs[-1].problem is None
    bad = docs[-2]
    assert bad.line == 2002 and bad.id == 2002
    start = len(good) + len(b'{"text": "ok"}\n')
    assert bad.problem == (
        f"not UTF-8: byte 0xf0 at offset 14 of the line (offset {start + 14} of the file): "
        "invalid continuation byte"
    )


def test_the_batch_job_gives_an_error_record_and_resumes_once(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(_line({"id": "a", **_plan("one")}) + BAD + _line({"id": "c", **_plan("two")}))
    cfg = BatchConfig(ordered=True)
    summary = run_batch_sync(Plans(), src, dst, config=cfg, backend=FakeBackend(delay=0))
    assert (summary.total, summary.done, summary.failed, summary.ok) == (3, 2, 1, False)
    a, bad, c = _rows(dst)
    assert (a["id"], c["id"]) == ("a", "c") and "answer" in a and "answer" in c
    at = len(_line({"id": "a", **_plan("one")})) + 28
    assert bad == {"id": 2, "line": 2, "error_kind": "input", "error": (
        f"not UTF-8: byte 0xe9 at offset 28 of the line (offset {at} of the file): "
        "invalid continuation byte")}  # fmt: skip
    again = run_batch_sync(
        Plans(), src, dst, config=BatchConfig(resume=True), backend=FakeBackend()
    )
    assert (again.skipped, again.done, again.failed, again.failed_before) == (3, 0, 0, 1)
    assert [r["id"] for r in _rows(dst)] == ["a", 2, "c"]  # each once


def test_without_error_records_a_bad_line_is_reported_and_resume_runs_it_again(
    tmp_path: Path,
) -> None:
    """`parafill ner --input`'s job: the bad line is reported (no record), the rest written."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(BAD + _line({"id": "b", **_plan("one")}))
    seen: list[JobEvent] = []
    cfg = BatchConfig(error_records=False)
    summary = run_batch_sync(Plans(), src, dst, config=cfg, backend=FakeBackend(delay=0),
                             report=seen.append)  # fmt: skip
    assert (summary.done, summary.failed) == (1, 1)
    (failed,) = [e for e in seen if isinstance(e, DocDone) and e.error is not None]
    assert failed.line == 1
    assert str(failed.error).startswith("not UTF-8: byte 0xe9 at offset 28 of the line (offset 28 ")
    assert [r["id"] for r in _rows(dst)] == ["b"]
    cfg = BatchConfig(resume=True, error_records=False)
    again = run_batch_sync(Plans(), src, dst, config=cfg, backend=FakeBackend(delay=0))
    assert (again.skipped, again.done, again.failed) == (1, 0, 1)
    assert [r["id"] for r in _rows(dst)] == ["b"]


@pytest.fixture
def _model() -> None:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.usefixtures("_model")
def test_cli_ner_input_goes_on_past_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    """Was exit 2 naming no line; `parafill batch` runs the same job (with error records)."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(BAD + _line({"id": "ok", "text": "have fun in vancouver tonight !"}))
    args = ["ner", "--input", str(src), "--output", str(dst), "--mode", "ar", "--labels", "geo-loc"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    why = "not UTF-8: byte 0xe9 at offset 28 of the line (offset 28 of the file)"
    assert f"{src}:1: skipped: {why}: invalid continuation byte" in res.stderr
    assert f"{src}: processed 1, skipped 1" in res.stderr
    (ok,) = _rows(dst)
    assert ok["id"] == "ok" and ok["line"] == 2 and isinstance(ok["entities"], list)
