"""`parafill batch PIPELINE --input in.jsonl --output out.jsonl`: every line of a JSONL file
through one pipeline, resumable, with a progress bar on stderr and the summary (`--json`: as
JSON on stdout). Exit 1 when a document failed, 2 when the job could not start.

Every subcommand is made from one row of `PIPELINES`: the file options and the Ray options
(parafill.cli.jobs), the options of the command it batches (the same group: `batch dag` takes
`parafill dag`'s), the engine's options, and how those make the pipeline (parafill.jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import typer

from parafill.cli.common import EngineOpts, err
from parafill.cli.groups import takes
from parafill.cli.jobs import Files, files_options, go, ray_options
from parafill.cli.options import engine_options, ner_engine_options
from parafill.cli.planning import (
    dag_options,
    document_options,
    ner_options,
    reasoning_options,
    router_options,
    skeleton_options,
)
from parafill.jobs import Documents, Entities, Pipeline, Plans, Questions, RayConfig
from parafill.planners.base import Planner
from parafill.planners.document import DocumentPlanner


@dataclass(frozen=True)
class Batched:
    """One `parafill batch` subcommand: its help, the option group that builds what the
    pipeline needs from a line (a planner), the engine's group, and the pipeline."""

    name: str
    help: str
    options: Callable[..., Any]
    pipeline: Callable[[Any, EngineOpts], Pipeline]
    engine: Callable[..., EngineOpts] = engine_options


def _questions(planner: Planner, engine: EngineOpts) -> Pipeline:
    def announce(message: str) -> None:
        err.print(f"[dim]{message}[/dim]")

    return Questions(planner, engine.run_config(), engine.local(), announce=announce)


def _documents(planner: DocumentPlanner, engine: EngineOpts) -> Pipeline:
    return Documents(planner, engine.run_config())


def _plans(_: None, engine: EngineOpts) -> Pipeline:
    return Plans(engine.run_config())


def _entities(entities: Entities, engine: EngineOpts) -> Pipeline:
    return replace(entities, run_config=engine.run_config())


def _no_options() -> None:
    return None


PIPELINES = (
    Batched("run", 'Each line\'s "question" answered as `parafill run` does (the router: '
            "skeleton-of-thought or a direct answer).", router_options, _questions),
    Batched("sot", 'Each line\'s "question" by skeleton-of-thought, always (no router).',
            skeleton_options, _questions),
    Batched("dag", 'Each line\'s "question" as `parafill dag` answers it (steps using earlier '
            "results).", dag_options, _questions),
    Batched("reason", 'Each line\'s "question" as `parafill reason` answers it (branches, then '
            "vote or synthesis).", reasoning_options, _questions),
    Batched("write", 'Each line\'s "topic" as a Markdown document, as `parafill write` writes '
            'it (the record\'s "answer").', document_options, _documents),
    Batched("plan", 'Each line a plan in JSON, as `parafill plan` takes a file (or an object '
            'whose "plan" is one), with an optional "id".', _no_options, _plans),
    Batched("ner", 'Each line\'s "text" (and optional "labels", a list or comma-separated) as '
            "`parafill ner` extracts entities; a line's labels replace --labels for that line.",
            ner_options, _entities, ner_engine_options),
)  # fmt: skip


def subcommand(row: Batched) -> Callable[..., None]:
    """The `parafill batch` subcommand of `row`, with every option it takes."""

    def command(files: Files, task: Any, engine: EngineOpts, ray: RayConfig | None) -> None:
        go(files, row.pipeline(task, engine), engine, ray)

    command.__doc__ = row.help
    command.__name__ = command.__qualname__ = f"batch_{row.name}"
    return takes(files=files_options, task=row.options, engine=row.engine, ray=ray_options)(command)


def _before_pipeline(ray: RayConfig | None) -> None:
    """`parafill batch [--ray ADDRESS ...] PIPELINE ...`: the Ray options go before PIPELINE or
    after it."""  # each subcommand reads them (parafill.cli.jobs.ray_options)


group = typer.Typer(
    no_args_is_help=True,
    help="Run every line of a JSONL file through one pipeline (resumable; see each PIPELINE).",
)
group.callback()(takes(ray=ray_options)(_before_pipeline))
for _row in PIPELINES:
    group.command(_row.name)(subcommand(_row))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="batch")
