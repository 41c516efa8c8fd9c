"""Running a JSONL file from the command line, for `parafill batch` and `parafill ner --input`:
check the input and the output before the model loads, open the backend (local or
`--server`) only when something is left to run, run `parafill.jobs` (here, or on Ray), turn
refusals into exit 2 and failed documents into exit 1. The option groups of every `parafill
batch` subcommand are here too: the files (`files_options`, some shared with `parafill ner
--input`) and Ray (`ray_options`, also taken before PIPELINE).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.markup import escape

from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalConfig
from parafill.cli.backend import open_backend
from parafill.cli.common import EngineOpts, Remote, ServerUnavailable, err, fail, out
from parafill.cli.options import JsonOpt
from parafill.errors import real_error
from parafill.jobs import BatchConfig, Pipeline, RayConfig, Summary, load_job, ray_batch, run_job
from parafill.jobs.progress import Report, progress_for
from parafill.jobs.ray_runner import without_announce

RAY = "Ray"  # the --help panel of the Ray options
OutputOpt = Annotated[Path | None, typer.Option("--output", help="JSONL to write.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="--output exists: keep its records, do the rest.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="--output exists: replace its records.")
]
ConcurrencyOpt = Annotated[
    int, typer.Option("--concurrency", help="Documents in flight at once.", min=1)
]


@dataclass(frozen=True)
class Files:
    """The file options every subcommand takes."""

    src: Path
    dst: Path | None
    config: BatchConfig
    as_json: bool


def files_options(
    input: Annotated[Path, typer.Option("--input", help="JSONL: one document per line.")],
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="With --resume: run error records' ids again.")
    ] = False,
    ordered: Annotated[
        bool, typer.Option("--ordered", help="Write records in input order.")
    ] = False,
    concurrency: ConcurrencyOpt = 8,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds per document (then an error record)."),
    ] = None,
    max_chars: Annotated[
        int | None, typer.Option("--max-chars", help="A longer input line is an error record.")
    ] = None,
    as_json: JsonOpt = False,
) -> Files:
    """The options every `parafill batch` subcommand takes; exit 2 for what they refuse."""
    if retry_failed and not resume:
        fail("--retry-failed needs --resume")
    if timeout is not None and timeout <= 0:
        fail("--timeout must be more than 0 seconds")
    cfg = BatchConfig(concurrency, ordered, timeout, max_chars, resume, overwrite, retry_failed)
    return Files(input, output, cfg, as_json)


def ray_options(
    ctx: typer.Context,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Run on Ray (parafill[ray]): 'local', or a cluster address.",
            rich_help_panel=RAY,
        ),
    ] = None,
    ray_actors: Annotated[
        int,
        typer.Option(
            "--ray-actors", help="Actors, each with its backend.", min=1, rich_help_panel=RAY
        ),
    ] = 1,
    ray_cpus_per_actor: Annotated[
        float,
        typer.Option(
            "--ray-cpus-per-actor", help="CPUs Ray gives each actor.", rich_help_panel=RAY
        ),
    ] = 1.0,
    ray_gpus_per_actor: Annotated[
        float,
        typer.Option(
            "--ray-gpus-per-actor", help="GPUs Ray gives each actor.", rich_help_panel=RAY
        ),
    ] = 0.0,
    ray_num_cpus: Annotated[
        int | None,
        typer.Option(
            "--ray-num-cpus",
            help="--ray local: Ray's CPU count (default max(4, cores)).",
            rich_help_panel=RAY,
        ),
    ] = None,
    ray_batch_size: Annotated[
        int,
        typer.Option(
            "--ray-batch-size",
            help="Documents per actor call, run at once.",
            min=1,
            rich_help_panel=RAY,
        ),
    ] = 4,
    ray_calls_per_actor: Annotated[
        int,
        typer.Option(
            "--ray-calls-per-actor",
            help="Batches each actor runs at once, on its one backend.",
            min=1,
            rich_help_panel=RAY,
        ),
    ] = 2,
) -> RayConfig | None:
    """Where the job runs: here, or on Ray with --ray. The options go before PIPELINE
    (`parafill batch --ray local ner ...`) or after it; one given in both places: after wins."""
    v = _here_or_above(ctx, locals())  # this group's options, by name (and ctx)
    if v["ray"] is None:
        return None
    return RayConfig(v["ray"], v["ray_actors"], v["ray_cpus_per_actor"], v["ray_gpus_per_actor"],
                     v["ray_num_cpus"], v["ray_batch_size"],
                     calls_per_actor=v["ray_calls_per_actor"])  # fmt: skip


def _here_or_above(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """`values`, the options of `ctx`'s command; one not given there but taken by the command
    above it (`parafill batch`, before PIPELINE) has the value given above."""
    above = ctx.parent.params if ctx.parent is not None else {}

    def given(name: str) -> bool:  # on the command line or from the environment
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    return {k: v if given(k) or k not in above else above[k] for k, v in values.items()}


def go(f: Files, pipeline: Pipeline, engine: EngineOpts, ray: RayConfig | None) -> None:
    """Run the file (on Ray with --ray); the summary; exit 1 when a document failed."""
    server = engine.server
    run = FileRun(f.src, f.dst, f.config, engine.local(), server, logprobs=server is not None)
    if ray is None:
        summary = run_file(run, pipeline, progress_for(err))
    else:
        summary = _refusals(partial(run_on_ray, run, pipeline, ray, progress_for(err)))
    if f.as_json:
        out.print_json(json.dumps(summary.as_dict()))
    if not summary.ok:
        raise typer.Exit(1)


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
