"""Running a JSONL file from the command line, for `parafill batch` and `parafill ner --input`:
check the input and the output before the model loads, open the backend (local or
`--server`) only when something is left to run, run `parafill.jobs`, turn refusals into exit
2 and failed documents into exit 1. The options both commands share live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.markup import escape

from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalConfig
from parafill.cli.backend import open_backend
from parafill.cli.common import Remote, ServerUnavailable, err
from parafill.errors import real_error
from parafill.jobs import BatchConfig, Pipeline, Summary, load_job, run_job
from parafill.jobs.progress import Report

OutputOpt = Annotated[Path | None, typer.Option("--output", help="JSONL to write.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="--output exists: keep its records, do the rest.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="--output exists: replace its records.")
]
ConcurrencyOpt = Annotated[int, typer.Option(help="Documents in flight at once.", min=1)]


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
    try:
        return anyio.run(_run, run, pipeline, report)
    except Exception as exc:  # the backend's task group wraps what failed under it
        known = ModelNotFound | ServerUnavailable | ValueError | OSError
        if not isinstance(real := real_error(exc), known):
            raise
        err.print(f"[red]error:[/red] {escape(str(real))}")
        raise typer.Exit(2) from real


async def _run(run: FileRun, pipeline: Pipeline, report: Report) -> Summary:
    job = await load_job(run.src, run.dst, run.config)  # before the model loads
    if not job.docs:  # nothing left: no model to load
        return await run_job(job, pipeline, None, report)  # type: ignore[arg-type]
    async with open_backend(run.local, run.server, logprobs=run.logprobs) as backend:
        return await run_job(job, pipeline, backend, report)
