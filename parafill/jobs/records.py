"""The JSONL boundary of a batch job: input lines → documents (id, line number, fields, or why
the line is unusable), the checks made before anything loads (duplicate ids, an --output that
would erase the input or finished work), and what an existing --output already holds
(`--resume`). Blocking file work only; the runner calls it through `anyio.to_thread`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Id = str | int


class InputError(ValueError):
    """The job cannot start: duplicate ids, or an --output that would erase work."""


@dataclass(frozen=True)
class Doc:
    """One non-blank input line: its `id` (the line's "id", else its line number) and either
    its fields or the reason it cannot be read (`problem`)."""

    line: int
    id: Id
    fields: dict[str, Any]
    problem: str | None = None
    size: int = 0  # characters on the line

    @property
    def key(self) -> str:
        return key_of(self.id)


def key_of(id_: object) -> str:
    """Ids compare by JSON value: the string "1" and the number 1 are different ids."""
    return json.dumps(id_)


def parse_lines(lines: Iterable[str | bytes]) -> list[Doc]:
    """Every non-blank line as a Doc, in input order. Lines of bytes are decoded one by one:
    a line that is not UTF-8 is a Doc whose problem names the bad byte's offset in the line
    and in the input (the lines' bytes before it), and the other lines are read as usual."""
    docs: list[Doc] = []
    offset = 0  # bytes of the input before this line (str lines: never reported)
    for no, line in enumerate(lines, 1):
        try:
            text = line if isinstance(line, str) else line.decode("utf-8")
        except UnicodeDecodeError as exc:
            size = len(exc.object.rstrip(b"\r\n"))
            docs.append(Doc(no, no, {}, _not_utf8(exc, offset), size))
        else:
            if text.strip():
                docs.append(_doc(no, text))
        offset += len(line)
    return docs


def _not_utf8(exc: UnicodeDecodeError, offset: int) -> str:
    byte = exc.object[exc.start]
    return (
        f"not UTF-8: byte 0x{byte:02x} at offset {exc.start} of the line (offset "
        f"{offset + exc.start} of the file): {exc.reason}"
    )


def _doc(no: int, text: str) -> Doc:
    size = len(text.rstrip("\r\n"))
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Doc(no, no, {}, f"not JSON: {exc}", size)
    if not isinstance(data, dict):
        return Doc(no, no, {}, f"not a JSON object but {type(data).__name__}", size)
    id_ = data.pop("id", None)
    if id_ is None:
        return Doc(no, no, data, None, size)
    if isinstance(id_, bool) or not isinstance(id_, str | int):
        why = f"id must be a string or an integer, not {json.dumps(id_)}"
        return Doc(no, no, data, why, size)
    return Doc(no, id_, data, None, size)


def check_unique(docs: list[Doc]) -> None:
    """InputError naming the repeated ids and their lines (a line without an id is its line
    number, so `{"id": 3}` repeats a third line that has none)."""
    counts = Counter(d.key for d in docs)
    repeated = [k for k, n in counts.items() if n > 1]
    if not repeated:
        return
    where = [
        f"id {k} on lines {', '.join(str(d.line) for d in docs if d.key == k)}"
        for k in repeated[:5]
    ]
    more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
    raise InputError(f"duplicate ids in the input: {'; '.join(where)}{more}")


def read_input(src: Path) -> list[Doc]:
    """All of `src` (read before the output is opened or the model loads), ids checked."""
    # bytes, split where the text reader splits (\n, \r\n, \r): one line that is not UTF-8
    # is that line's error, not the whole file's (UTF-8 never puts \r or \n inside a character)
    docs = parse_lines(src.read_bytes().splitlines(keepends=True))
    check_unique(docs)
    return docs


def check_output(src: Path, dst: Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse what would erase work: --output being the --input, or an --output holding
    records that neither --resume nor --overwrite says what to do with."""
    if resume and overwrite:
        raise InputError("give --resume or --overwrite, not both")
    if resume and dst is None:
        raise InputError("--resume needs --output (the file to continue)")
    if dst is None or not dst.exists():
        return
    if src.resolve() == dst.resolve() or _same_file(src, dst):
        raise InputError(f"--output {dst} is the --input file: writing it would erase the input")
    if dst.is_file() and dst.stat().st_size > 0 and not (resume or overwrite):
        raise InputError(
            f"--output {dst} already holds records: pass --resume to keep them and do the "
            "rest, or --overwrite to replace them"
        )


def _same_file(a: Path, b: Path) -> bool:
    """Also a hard link or a symlink to the same file."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # the input is missing: reported when it is read
        return False


@dataclass(frozen=True)
class Kept:
    """What an existing --output holds: the keys of its complete records, and of those the
    keys of error records."""

    done: frozenset[str]
    failed: frozenset[str]


def resume_output(dst: Path, retry_failed: bool = False) -> Kept:
    """Make `dst` safe to append to and say what it holds. A half-written last line (a run
    killed mid-write) is cut off; with `retry_failed`, error records are removed so their ids
    run again. Rewrites go through a temporary file and a rename: a kill leaves the old file
    or the new one, never a mix."""
    if not dst.exists():
        return Kept(frozenset(), frozenset())
    raw = dst.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    lines = keep.decode("utf-8").splitlines(keepends=True)
    records = [(line, _record_key(line)) for line in lines]
    failed = {k for line, k in records if k is not None and _is_error(line)}
    if retry_failed and failed:
        kept = [line for line, k in records if k not in failed]
        _replace(dst, "".join(kept).encode("utf-8"))
        records = [(line, k) for line, k in records if k not in failed]
        failed = set()
    elif len(keep) != len(raw):
        _replace(dst, keep)
    done = frozenset(k for _, k in records if k is not None)
    return Kept(done, frozenset(failed))


def _replace(dst: Path, data: bytes) -> None:
    tmp = dst.with_name(dst.name + ".resume-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def _record_key(line: str) -> str | None:
    """The input id a record was made from (records without one, from before ids existed,
    name their input `line`); None for anything that is not our record."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("id") is not None:
        return key_of(data["id"])
    if isinstance(data.get("line"), int):
        return key_of(data["line"])
    return None


def _is_error(line: str) -> bool:
    return "error" in json.loads(line)


def dump(record: dict[str, object]) -> str:
    """One output line."""
    return json.dumps(record, ensure_ascii=False) + "\n"
