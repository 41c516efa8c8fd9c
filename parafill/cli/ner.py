"""`parafill ner`: named entities of one text, or of every line of a JSONL file.

JSONL in: one object per line with "text" (and optionally "id"); out: the same id and text
with "entities" and "notes", in input order. `--concurrency` documents are in flight at once,
so the engine decodes their nodes together. A bad line is reported on stderr with its line
number and skipped; the other lines are processed; each finished document is written as soon
as those before it are; a summary ends the run (exit 1 if any was skipped). Each record names
its input `line`, so `--resume` after a killed run keeps the finished records (a half-written
last line is cut off) and processes only the lines that have none. Finished work is never
erased by accident: an --output that is the --input, or that already holds records without
--resume or --overwrite, is refused before the model loads; the input is read before the output
is opened.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import anyio
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parafill.backends.base import Backend
from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalConfig
from parafill.cli.backend import open_backend
from parafill.cli.common import (
    ApiKeyOpt,
    FillerOpt,
    Remote,
    ServerModelOpt,
    ServerOpt,
    ServerUnavailable,
    WeightsOpt,
    err,
    local_weights,
    remote,
)
from parafill.errors import real_error
from parafill.fillers import check as check_filler
from parafill.orchestrator.runner import RunConfig, RunFailed
from parafill.planners.ner import NerConfig, NerResult, check_config, default_adapter, extract
from parafill.planners.ner_data import WNUT_LABELS


class DocIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | int | None = None
    text: str = Field(min_length=1)


@dataclass(frozen=True)
class Job:
    config: NerConfig
    mode: str
    local: LocalConfig
    concurrency: int = 1
    resume: bool = False
    run: RunConfig = RunConfig()  # --filler
    server: Remote | None = None  # --server: run there instead of on `local`


def ner(
    text: Annotated[str | None, typer.Argument(help="The text (or use --input).")] = None,
    labels: Annotated[str, typer.Option(help="Comma-separated entity types.")] = ",".join(
        WNUT_LABELS
    ),
    input: Annotated[Path | None, typer.Option("--input", help="JSONL of {text, id}.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="JSONL to write.")] = None,
    mode: Annotated[str, typer.Option(help="parallel (PaDeLLM) | ar (one output).")] = "parallel",
    model: Annotated[str | None, typer.Option(help="Local HF model dir or .gguf.")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter directory.")] = None,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Plain model.")] = False,
    weights: WeightsOpt = None,
    max_mentions: Annotated[int, typer.Option(help="Most mentions per label.")] = 4,
    max_nodes: Annotated[int, typer.Option(help="Most plan nodes.")] = 64,
    concurrency: Annotated[
        int, typer.Option(help="--input: documents in flight at once.", min=1)
    ] = 8,
    resume: Annotated[
        bool, typer.Option("--resume", help="--output exists: keep its records, do the rest.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="--output exists: replace its records.")
    ] = False,
    filler: FillerOpt = None,
    server: ServerOpt = None,
    server_model: ServerModelOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Extract named entities (PaDeLLM-NER: counts, then every mention in parallel)."""
    names = tuple(s.strip() for s in labels.split(",") if s.strip())
    cfg = NerConfig(names, max_mentions=max_mentions, max_nodes=max_nodes)
    at = remote(server, server_model, api_key)
    # the LoRA adapter is the local model's; a server runs its own model as it is
    chosen = None if no_adapter or at else adapter or default_adapter(model)
    try:
        check_config(cfg)
        if mode not in ("parallel", "ar"):
            raise ValueError(f"unknown mode {mode!r}: use parallel or ar")
        if (text is None) == (input is None):
            raise ValueError("give either TEXT or --input FILE (not both)")
        if resume and output is None:
            raise ValueError("--resume needs --output (the file to continue)")
        _check_files(input, output, resume, overwrite)
        if filler is not None:
            check_filler(filler)
        fmt = local_weights(weights, at)
        if at is not None and (model or adapter):
            raise ValueError("--model / --adapter are local: with --server, use --server-model")
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    local = LocalConfig(model=model, adapter=chosen, weights=fmt)
    job = Job(cfg, mode, local, concurrency, resume, RunConfig(filler=filler), at)
    try:
        skipped = anyio.run(_main, job, text, input, output)
    except Exception as exc:  # the backend's task group wraps what failed under it
        known = ModelNotFound | ServerUnavailable | ValueError | OSError
        if not isinstance(real := real_error(exc), known):
            raise
        err.print(f"[red]error:[/red] {real}")
        raise typer.Exit(2) from real
    if skipped:
        raise typer.Exit(1)


async def _main(job: Job, text: str | None, src: Path | None, dst: Path | None) -> int:
    if text is not None:
        async with open_backend(job.local, job.server, logprobs=True) as backend:
            _print(await extract(text, backend, job.config, job.mode, job.run))
        return 0
    assert src is not None
    with src.open(encoding="utf-8") as fin:  # all of it, before the model loads or --output opens
        lines = fin.readlines()
    async with open_backend(job.local, job.server, logprobs=True) as backend:
        done = _finished_lines(dst) if job.resume and dst is not None else set()
        if done:
            err.print(f"{dst}: resuming: {len(done)} documents already done", markup=False)
        mode = "a" if job.resume else "w"
        sink = dst.open(mode, encoding="utf-8") if dst else nullcontext(sys.stdout)
        with sink as fout:
            return await _jsonl(job, backend, lines, fout, str(src), done)


def _check_files(src: Path | None, dst: Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse, before the model loads, what would erase work: --output being the --input, or
    an --output holding records that neither --resume nor --overwrite says what to do with."""
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if src is None or dst is None or not dst.exists():
        return
    if src.resolve() == dst.resolve() or _same_file(src, dst):
        raise ValueError(f"--output {dst} is the --input file: writing it would erase the input")
    if dst.is_file() and dst.stat().st_size > 0 and not (resume or overwrite):
        raise ValueError(
            f"--output {dst} already holds records: pass --resume to keep them and do the "
            "rest, or --overwrite to replace them"
        )


def _same_file(a: Path, b: Path) -> bool:
    """Also a hard link or a symlink to the same file."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # the input is missing: reported when it is read
        return False


def _finished_lines(dst: Path) -> set[int]:
    """Input line numbers that `dst` already has records for; a half-written last line (the
    run was killed mid-write) is cut off so the file can be appended to."""
    if not dst.exists():
        return set()
    raw = dst.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        dst.write_bytes(keep)
    return {n for line in keep.decode("utf-8").splitlines() if (n := _line_of(line)) is not None}


def _line_of(record: str) -> int | None:
    """The input line a record was made from; None for anything that is not our record."""
    try:
        return int(json.loads(record)["line"])
    except (ValueError, KeyError, TypeError):
        return None


def _print(result: NerResult) -> None:
    for e in result.entities:  # tab-separated for pipes (rich would expand the tab)
        sys.stdout.write(f"{e.label}\t{e.text}\n")
    if not result.entities:
        err.print("(no entities)")
    for note in result.notes:
        err.print(f"[dim]note: {note}[/dim]", markup=True)
    err.print(
        f"[dim]{len(result.entities)} entities · {result.tokens} tokens · "
        f"{result.seconds:.2f} s[/dim]"
    )


async def _jsonl(
    job: Job,
    backend: Backend,
    fin: Iterable[str],
    fout: IO[str],
    name: str,
    skip: set[int] | None = None,
) -> int:
    order: deque[int] = deque()  # line numbers in flight or waiting to be written, in order
    ready: dict[int, dict[str, object] | None] = {}  # finished (None: skipped)
    counts = {"done": 0, "skipped": 0}
    room = anyio.Semaphore(job.concurrency)

    def write_ready() -> None:
        while order and order[0] in ready:
            record = ready.pop(order.popleft())
            if record is not None:
                fout.write(json.dumps(record, ensure_ascii=False) + "\n")
                fout.flush()  # finished documents are kept even if a later one fails
                counts["done"] += 1

    async def one(no: int, line: str) -> None:
        record: dict[str, object] | None = None
        try:
            doc = DocIn.model_validate_json(line)
            record = _record(
                no, doc, await extract(doc.text, backend, job.config, job.mode, job.run)
            )
        except (ValidationError, ValueError, RunFailed) as exc:
            err.print(f"{name}:{no}: skipped: {_reason(exc)}", markup=False)
            counts["skipped"] += 1
        finally:
            ready[no] = record
            write_ready()
            room.release()

    async with anyio.create_task_group() as tg:
        for no, line in enumerate(fin, 1):
            if not line.strip() or (skip and no in skip):
                continue
            await room.acquire()
            order.append(no)
            tg.start_soon(one, no, line)
    err.print(f"{name}: processed {counts['done']}, skipped {counts['skipped']}", markup=False)
    return counts["skipped"]


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "line"
        return f"{where}: {first['msg']}"
    return str(exc)


def _record(no: int, doc: DocIn, result: NerResult) -> dict[str, object]:
    return {
        "line": no,
        "id": doc.id,
        "text": doc.text,
        "entities": [{"label": e.label, "text": e.text} for e in result.entities],
        "notes": list(result.notes),
        "seconds": round(result.seconds, 3),
    }


def register(app: typer.Typer) -> None:
    app.command("ner")(ner)
