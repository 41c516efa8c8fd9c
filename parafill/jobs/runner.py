"""The batch runner: every document of a JSONL file through one pipeline, `concurrency` at a
time (so the engine batches their nodes), each record appended as it finishes (`ordered`: in
input order) and flushed, file work in worker threads. A document that cannot be read or run
(a line not UTF-8 or not a JSON object, missing field, too long, timed out, a node failed for
good) becomes an error record and the job goes on. Every record names its input id, so a
resumed job runs only missing ids.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from pydantic import ValidationError

from parafill.backends.base import Backend, BackendError
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.errors import real_error
from parafill.jobs.pipelines import Output, Pipeline
from parafill.jobs.progress import DocDone, Finished, JobEvent, Report, Started, Summary
from parafill.jobs.records import Doc, Kept, check_output, dump, read_input, resume_output
from parafill.orchestrator.runner import RunFailed


@dataclass(frozen=True)
class BatchConfig:
    concurrency: int = 8  # documents in flight
    ordered: bool = False  # write records in input order (else as they finish)
    timeout: float | None = None  # seconds per document
    max_chars: int | None = None  # a longer input line is an error record
    resume: bool = False  # keep the output's records, run the missing ids
    overwrite: bool = False  # replace the output's records
    retry_failed: bool = False  # with resume: run the ids of error records again
    error_records: bool = True  # False: failures are reported only (`parafill ner --input`)


@dataclass(frozen=True)
class Job:
    """A checked job: the documents still to run and what the output already holds."""

    name: str
    docs: tuple[Doc, ...]
    total: int
    kept: Kept
    output: Path | None
    config: BatchConfig

    @property
    def skipped(self) -> int:
        return self.total - len(self.docs)


async def load_job(src: Path, dst: Path | None, config: BatchConfig = BatchConfig()) -> Job:
    """Read and check the input and the output (before any model loads): InputError for
    duplicate ids or an output that would erase work; OSError as it comes (a line that is
    not UTF-8 is a bad line, like one that is not JSON)."""
    return await anyio.to_thread.run_sync(_load, src, dst, config)


def _load(src: Path, dst: Path | None, config: BatchConfig) -> Job:
    if config.concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    check_output(src, dst, config.resume, config.overwrite)
    docs = read_input(src)
    kept = Kept(frozenset(), frozenset())
    if config.resume and dst is not None:
        kept = resume_output(dst, config.retry_failed)
    keys = {d.key for d in docs}
    kept = Kept(kept.done & keys, kept.failed & keys)
    todo = tuple(d for d in docs if d.key not in kept.done)
    return Job(str(src), todo, len(docs), kept, dst, config)


async def run_batch(
    pipeline: Pipeline,
    src: Path,
    dst: Path | None,
    config: BatchConfig = BatchConfig(),
    *,
    backend: Backend | None = None,
    local: LocalConfig | None = None,
    report: Report | None = None,
) -> Summary:
    """Run `pipeline` over every line of `src`, records to `dst` (None: stdout). Without a
    `backend`, the local engine (`local`, default the embedded model) is opened after the
    input is checked, and not at all when nothing is left to run."""
    job = await load_job(src, dst, config)
    if backend is not None or not job.docs:
        return await run_job(job, pipeline, backend, report)  # type: ignore[arg-type]
    async with LocalBackend.open(local or LocalConfig()) as engine:
        return await run_job(job, pipeline, engine, report)


def run_batch_sync(pipeline: Pipeline, src: Path, dst: Path | None, **kwargs: Any) -> Summary:
    """Synchronous wrapper over `run_batch` (same arguments)."""
    return anyio.run(partial(run_batch, pipeline, src, dst, **kwargs))


@dataclass(frozen=True)
class _Done:
    index: int
    doc: Doc
    record: dict[str, object]
    tokens: int
    error: str | None


async def run_job(
    job: Job, pipeline: Pipeline, backend: Backend, report: Report | None = None
) -> Summary:
    """Run a loaded job on `backend` (not used when nothing is left to run)."""
    say = partial(_tell, report)
    await say(Started(job.name, job.total, job.skipped))
    start = time.monotonic()
    counts = [0, 0, 0]  # done, failed, tokens
    if job.docs:
        pipeline = await pipeline.prepare([d.fields for d in job.docs], backend)
    send, recv = anyio.create_memory_object_stream[_Done](math.inf)
    room = anyio.Semaphore(job.config.concurrency)
    async with _sink(job) as write, anyio.create_task_group() as tg:
        tg.start_soon(_writer, recv, write, job.config, say, counts)
        async with send:
            for i, doc in enumerate(job.docs):
                await room.acquire()
                tg.start_soon(_document, i, doc, pipeline, backend, job.config, send.clone(), room)
    done, failed, tokens = counts
    summary = Summary(job.total, job.skipped, done, failed, tokens, time.monotonic() - start,
                      len(job.kept.failed))  # fmt: skip
    await say(Finished(summary))
    return summary


async def _tell(report: Report | None, ev: JobEvent) -> None:
    if report is not None and inspect.isawaitable(r := report(ev)):
        await r


async def _document(
    index: int,
    doc: Doc,
    pipeline: Pipeline,
    backend: Backend,
    config: BatchConfig,
    send: ObjectSendStream[_Done],
    room: anyio.Semaphore,
) -> None:
    async with send:
        try:
            record, tokens, error = await run_document(doc, pipeline, backend, config)
        finally:
            room.release()
        await send.send(_Done(index, doc, record, tokens, error))


async def run_document(
    doc: Doc, pipeline: Pipeline, backend: Backend, config: BatchConfig
) -> tuple[dict[str, object], int, str | None]:
    """One document's record, its tokens and its error (None for a record with an answer);
    what is not the document's fault (a bug, the engine gone) is raised."""
    try:
        out = await _run(doc, pipeline, backend, config)
    except _Failed as exc:
        failed: dict[str, object] = {"id": doc.id, "line": doc.line, "error": exc.reason,
                                     "error_kind": exc.kind}  # fmt: skip
        return failed, 0, exc.reason
    return {"id": doc.id, "line": doc.line, **out.fields}, out.tokens, None


class _Failed(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


async def _run(doc: Doc, pipeline: Pipeline, backend: Backend, config: BatchConfig) -> Output:
    """The document's output, or _Failed with the kind (input, timeout, run) and the reason;
    anything else (a bug, the engine gone) ends the job."""
    if doc.problem is not None:
        raise _Failed("input", doc.problem)
    if config.max_chars is not None and doc.size > config.max_chars:
        raise _Failed("input", f"document too long: {doc.size} characters, over {config.max_chars}")
    try:
        with anyio.fail_after(config.timeout):
            return await pipeline.run(doc.fields, backend)
    except Exception as exc:  # the runner's task groups wrap what failed under them
        real = real_error(exc)
        if isinstance(real, TimeoutError):
            raise _Failed("timeout", f"timed out after {config.timeout:g} s") from exc
        if isinstance(real, ValidationError):
            raise _Failed("input", _invalid(real)) from exc
        if isinstance(real, RunFailed | BackendError):
            raise _Failed("run", str(real)) from exc
        if isinstance(real, ValueError):  # a plan or option the document's fields make invalid
            raise _Failed("input", str(real)) from exc
        raise


def _invalid(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "line"
    return f"{where}: {first['msg']}"


async def _writer(
    recv: ObjectReceiveStream[_Done],
    write: Any,
    config: BatchConfig,
    say: Any,
    counts: list[int],
) -> None:
    """The one task that writes: records as they come, or held back until those before them
    are written (`ordered`)."""
    waiting: dict[int, _Done] = {}
    upto = 0
    async with recv:
        async for done in recv:
            waiting[done.index] = done
            while (nxt := upto if config.ordered else done.index) in waiting:
                one = waiting.pop(nxt)
                upto += 1
                if one.error is None or config.error_records:
                    await write(dump(one.record))
                counts[0 if one.error is None else 1] += 1
                counts[2] += one.tokens
                await say(DocDone(one.doc.line, one.doc.id, one.tokens, one.error))


@asynccontextmanager
async def _sink(job: Job) -> AsyncIterator[Any]:
    """`write(line)`: appended and flushed, in a worker thread (stdout without an output)."""
    if job.output is None:
        out = anyio.wrap_file(sys.stdout)
        yield partial(_put, out)
        return
    opened = anyio.open_file(job.output, "a" if job.config.resume else "w", encoding="utf-8")
    async with await opened as f:
        yield partial(_put, f)


async def _put(f: anyio.AsyncFile[str], line: str) -> None:
    await f.write(line)
    await f.flush()  # finished documents are kept if the job is killed after this one
