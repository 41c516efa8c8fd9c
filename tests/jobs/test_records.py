"""The JSONL boundary of batch jobs on real files: ids, duplicates, refusals, and what an
existing output holds after a killed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parafill.jobs.records import (
    InputError,
    check_output,
    key_of,
    parse_lines,
    read_input,
    resume_output,
)


def test_ids_are_the_line_field_else_the_line_number() -> None:
    lines = ['{"id": "a", "question": "q"}\n', "\n", '{"question": "r"}\n', "{broken\n",
             '[1, 2]\n', '{"id": 1.5}\n']  # fmt: skip
    docs = parse_lines(lines)
    assert [(d.line, d.id) for d in docs] == [(1, "a"), (3, 3), (4, 4), (5, 5), (6, 6)]
    assert docs[0].fields == {"question": "q"} and docs[0].problem is None
    assert docs[2].problem is not None and docs[2].problem.startswith("not JSON")
    assert docs[3].problem == "not a JSON object but list"
    assert docs[4].problem == "id must be a string or an integer, not 1.5"
    assert key_of("1") != key_of(1)


def test_duplicate_ids_are_refused_with_their_lines(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "x"}\n{"id": "x"}\n{"q": 1}\n{"id": 3}\n{"id": "3"}\n')
    with pytest.raises(InputError) as err:
        read_input(src)
    assert str(err.value) == 'duplicate ids in the input: id "x" on lines 1, 2; id 3 on lines 3, 4'


def test_output_refusals(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"q": 1}\n')
    with pytest.raises(InputError, match="is the --input file"):
        check_output(src, src, True, False)
    dst.write_text('{"id": 1}\n')
    with pytest.raises(InputError, match="already holds records"):
        check_output(src, dst, False, False)
    with pytest.raises(InputError, match="--resume needs --output"):
        check_output(src, None, True, False)
    check_output(src, dst, True, False)
    check_output(src, dst, False, True)


def test_resume_cuts_a_half_written_line_and_keeps_the_rest(tmp_path: Path) -> None:
    dst = tmp_path / "out.jsonl"
    good = [
        {"id": "a", "line": 1, "answer": "x"},
        {"id": None, "line": 2, "entities": []},
        {"id": 7, "line": 3, "error": "timed out after 1 s", "error_kind": "timeout"},
    ]
    body = "".join(json.dumps(r) + "\n" for r in good)
    dst.write_text(body + '{"id": "b", "line": 4, "ans')
    kept = resume_output(dst)
    assert kept.done == {key_of("a"), key_of(2), key_of(7)} and kept.failed == {key_of(7)}
    assert dst.read_text() == body  # cut back to the last complete record
    again = resume_output(dst, retry_failed=True)  # error records go: their ids run again
    assert again.done == {key_of("a"), key_of(2)} and not again.failed
    assert [json.loads(x)["line"] for x in dst.read_text().splitlines()] == [1, 2]
    assert not (tmp_path / "out.jsonl.resume-tmp").exists()
