"""Running a JSONL file from the command line, for `parafill batch` and `parafill ner --input`:
check the input and the output before the model loads, open the backend (local or
`--server`) only when something is left to run, run `parafill.jobs`, turn refusals into exit
2 and failed documents into exit 1. The file options of every `parafill batch` subcommand
(and of `parafill ner --input`) live here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
import click
import typer
from rich.markup import escape

from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalConfig
from parafill.cli.backend import open_backend
from parafill.cli.common import EngineOpts, Remote, ServerUnavailable, err, fail, out
from parafill.errors import real_error
from parafill.jobs import BatchConfig, Pipeline, RayConfig, Summary, load_job, ray_batch, run_job
from parafill.jobs.progress import Report, progress_for
from parafill.jobs.ray_runner import without_announce
from parafill.orchestrator.runner import RunConfig

OutputOpt = Annotated[Path | None, typer.Option("--output", help="JSONL to write.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="--output exists: keep its records, do the rest.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="--output exists: replace its records.")
]
ConcurrencyOpt = Annotated[int, typer.Option(help="Documents in flight at once.", min=1)]
InputOpt = Annotated[Path, typer.Option("--input", help="JSONL: one document per line.")]
RetryOpt = Annotated[
    bool, typer.Option("--retry-failed", help="With --resume: run error records' ids again.")
]
OrderedOpt = Annotated[bool, typer.Option("--ordered", help="Write records in input order.")]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Seconds per document (then an error record).")
]
MaxCharsOpt = Annotated[
    int | None, typer.Option("--max-chars", help="A longer input line is an error record.")
]


@dataclass(frozen=True)
class Files:
    """The file options every subcommand takes."""

    src: Path
    dst: Path | None
    config: BatchConfig
    as_json: bool


def files(  # the options every `parafill batch` subcommand takes
    src: Path,
    dst: Path | None,
    resume: bool,
    overwrite: bool,
    retry_failed: bool,
    ordered: bool,
    concurrency: int,
    timeout: float | None,
    max_chars: int | None,
    as_json: bool,
) -> Files:
    if retry_failed and not resume:
        fail("--retry-failed needs --resume")
    if timeout is not None and timeout <= 0:
        fail("--timeout must be more than 0 seconds")
    cfg = BatchConfig(concurrency, ordered, timeout, max_chars, resume, overwrite, retry_failed)
    return Files(src, dst, cfg, as_json)


def go(f: Files, pipeline: Pipeline, local: LocalConfig, server: Remote | None) -> None:
    """Run the file (on Ray when `parafill batch --ray` said so); the summary; exit 1 when a
    document failed."""
    run = FileRun(f.src, f.dst, f.config, local, server, logprobs=server is not None)
    ctx = click.get_current_context(silent=True)
    on_ray = ctx.obj if ctx is not None and isinstance(ctx.obj, RayConfig) else None
    if on_ray is None:
        summary = run_file(run, pipeline, progress_for(err))
    else:
        summary = _refusals(partial(run_on_ray, run, pipeline, on_ray, progress_for(err)))
    if f.as_json:
        out.print_json(json.dumps(summary.as_dict()))
    if not summary.ok:
        raise typer.Exit(1)


def engine(opts: EngineOpts) -> tuple[RunConfig, LocalConfig, Remote | None]:
    """What the pipeline runs with, the local engine's config, the server (if any)."""
    run = RunConfig(filler=opts.filler, stop_on_repeat=opts.stop_on_repeat)
    return run, opts.local(), opts.server


@dataclass(frozen=True)
class FileRun:
    """A JSONL file to run: where from and to, how, on what, with which report."""

    src: Path
    dst: Path | None
    config: BatchConfig
    local: LocalConfig
    server: Remote | None = None
    logprobs: bool = False  # ask a server for log-probabilities (NER's dedupe)


def run_file(run: FileRun, pipeline: Pipeline, report: Report) -> Summary:
    """The job's summary; exit 2 for what stops it from starting (duplicate ids, an output
    that would erase work, an unreadable input, no model or server)."""
    return _refusals(partial(anyio.run, _run, run, pipeline, report))


def _refusals(job: Callable[[], Summary]) -> Summary:
    try:
        return job()
    except Exception as exc:  # the backend's task group wraps what failed under it
        known = ModelNotFound | ServerUnavailable | ValueError | OSError | ImportError
        if not isinstance(real := real_error(exc), known):
            raise
        err.print(f"[red]error:[/red] {escape(str(real))}")
        raise typer.Exit(2) from real


def run_on_ray(run: FileRun, pipeline: Pipeline, config: RayConfig, report: Report) -> Summary:
    """The job on Ray: each actor opens the backend `run` names (ImportError without Ray)."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ImportError("--ray needs Ray: pip install 'parafill[ray]'") from exc
    opener = partial(open_backend, run.local, run.server, logprobs=run.logprobs)
    return ray_batch(without_announce(pipeline), run.src, run.dst, run.config, config,
                     opener=opener, report=report)  # fmt: skip


async def _run(run: FileRun, pipeline: Pipeline, report: Report) -> Summary:
    job = await load_job(run.src, run.dst, run.config)  # before the model loads
    if not job.docs:  # nothing left: no model to load
        return await run_job(job, pipeline, None, report)  # type: ignore[arg-type]
    async with open_backend(run.local, run.server, logprobs=run.logprobs) as backend:
        return await run_job(job, pipeline, backend, report)
