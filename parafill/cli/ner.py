"""`parafill ner`: named entities of one text, or of every line of a JSONL file.

JSONL in: one object per line with "text" (and optionally "id"); out: the same id and text
with "entities" and "notes", in input order. The file runs on `parafill.jobs`, the runner of
`parafill batch` (`parafill batch ner` is the same job with error records): `--concurrency`
documents are in flight at once, so the engine decodes their nodes together. A bad line (not
UTF-8, not JSON, no "text") is reported on stderr with its line number and skipped (no record;
exit 1 at the end); each record names its input `id` (the line number when the line has none),
so `--resume` after a killed run keeps the finished records (a half-written last line is cut
off) and processes only the ids that have none. An --output that is the --input, or that
already holds records without --resume or --overwrite, is refused before the model loads.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.markup import escape

from parafill.backends.engine.weights import ModelNotFound
from parafill.cli.backend import open_backend
from parafill.cli.common import EngineOpts, ServerUnavailable, err, fail
from parafill.cli.groups import takes
from parafill.cli.jobs import (
    ConcurrencyOpt,
    FileRun,
    OutputOpt,
    OverwriteOpt,
    ResumeOpt,
    run_file,
)
from parafill.cli.options import ner_engine_options
from parafill.cli.planning import ner_options
from parafill.errors import real_error
from parafill.jobs import BatchConfig, DocDone, Entities, JobEvent, Started
from parafill.jobs.records import check_output
from parafill.planners.ner import NerResult, extract


@takes(task=ner_options, engine=ner_engine_options)
def ner(
    text: Annotated[str | None, typer.Argument(help="The text (or use --input).")] = None,
    *,
    input: Annotated[Path | None, typer.Option("--input", help="JSONL of {text, id}.")] = None,
    output: OutputOpt = None,
    task: Entities,
    engine: EngineOpts,
    concurrency: ConcurrencyOpt = 8,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Extract named entities (PaDeLLM-NER: counts, then every mention in parallel)."""
    if (text is None) == (input is None):
        fail("give either TEXT or --input FILE (not both)")
    pipeline = replace(task, run_config=engine.run_config())
    if text is not None:
        _one_text(text, pipeline, engine)
        return
    assert input is not None
    try:  # refused here too, so a bad --output never waits for a model
        check_output(input, output, resume, overwrite)
    except ValueError as exc:
        fail(str(exc))
    # one runner for every pipeline; `parafill ner --input` keeps its own messages and writes
    # no error records (a bad line is reported and run again by --resume)
    batch = BatchConfig(concurrency, ordered=True, resume=resume, overwrite=overwrite,
                        error_records=False)  # fmt: skip
    run = FileRun(input, output, batch, engine.local(), engine.server, logprobs=True)
    if not run_file(run, pipeline, _Report()).ok:
        raise typer.Exit(1)


def _one_text(text: str, pipeline: Entities, engine: EngineOpts) -> None:
    async def main() -> NerResult:
        async with open_backend(engine.local(), engine.server, logprobs=True) as backend:
            return await extract(text, backend, pipeline.config, pipeline.mode,
                                 pipeline.run_config)  # fmt: skip

    try:
        result = anyio.run(main)
    except Exception as exc:  # the backend's task group wraps what failed under it
        known = ModelNotFound | ServerUnavailable | ValueError | OSError
        if not isinstance(real := real_error(exc), known):
            raise
        err.print(f"[red]error:[/red] {escape(str(real))}")
        raise typer.Exit(2) from real
    _print(result)


class _Report:
    """`parafill ner --input`'s messages: bad lines and the count at the end, on stderr."""

    name = ""

    def __call__(self, ev: JobEvent) -> None:
        if isinstance(ev, Started):
            self.name = ev.name
            if ev.skipped:
                err.print(f"{ev.name}: resuming: {ev.skipped} documents already done",
                          markup=False)  # fmt: skip
        elif isinstance(ev, DocDone):
            if ev.error is not None:
                err.print(f"{self.name}:{ev.line}: skipped: {ev.error}", markup=False)
        else:
            s = ev.summary
            err.print(f"{self.name}: processed {s.done}, skipped {s.failed}", markup=False)


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


def register(app: typer.Typer) -> None:
    app.command("ner")(ner)
