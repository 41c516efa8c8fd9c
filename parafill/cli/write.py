"""`parafill write "topic" --out doc.md`: plan a document, fill its sections in parallel with a
live view, write the Markdown file and print the run summary.

It only wires the document planner to the backend (local or `--server`) and the shared run
view; planning and assembling live in `parafill.planners.document`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
import typer

from parafill.backends.engine.weights import ModelNotFound
from parafill.cli.backend import open_backend
from parafill.cli.common import EngineOpts, EngineRefused, ServerUnavailable, err, out
from parafill.cli.groups import takes
from parafill.cli.options import engine_options
from parafill.cli.planning import document_options
from parafill.cli.view import RunView, summary
from parafill.orchestrator.plan import RunResult
from parafill.orchestrator.runner import RunFailed, run_plan
from parafill.planners.document import DocumentPlanner


def register(app: typer.Typer) -> None:
    app.command("write")(write)


@takes(planner=document_options, engine=engine_options)
def write(
    topic: str,
    planner: DocumentPlanner,
    engine: EngineOpts,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Markdown file to write (default: print it).")
    ] = None,
) -> None:
    """Write a Markdown document on TOPIC: outline, then every section filled in parallel."""
    if out_path is not None and not out_path.parent.is_dir():
        err.print(f"[red]error:[/red] cannot write {str(out_path)!r}: its folder does not exist")
        raise typer.Exit(2)
    try:
        result = anyio.run(_write, topic, planner, engine)
    except (ModelNotFound, ServerUnavailable, EngineRefused) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except RunFailed as exc:  # keep what was written: the file gets every finished part
        err.print(f"[red]error:[/red] {exc}")
        _emit(planner, exc.result, out_path)
        raise typer.Exit(1) from exc
    _emit(planner, result, out_path)


async def _write(topic: str, planner: DocumentPlanner, opts: EngineOpts) -> RunResult:
    async with open_backend(opts.local(), opts.server) as backend:
        view = RunView.create(err)
        try:
            plan = planner.plan(topic)
            return await run_plan(
                plan,
                backend,
                opts.run_config(),
                expanders=planner.expanders,
                emit=view,
            )
        finally:
            view.close()


def _emit(planner: DocumentPlanner, result: RunResult, path: Path | None) -> None:
    document = planner.markdown(result)
    if result.notes:
        out.print(f"[dim]{'; '.join(result.notes)}[/dim]")
    if path is None:
        out.print(document, markup=False)
    else:
        path.write_text(document, encoding="utf-8")
        headings = sum(1 for line in document.splitlines() if line.startswith("## "))
        out.print(f"wrote {path} ({headings} sections, {len(document.split())} words)")
    out.print(f"[bold]parafill write[/bold]: {summary(result)}")
