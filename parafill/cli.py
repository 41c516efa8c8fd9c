"""The `parafill` command line: run a question (skeleton-of-thought) or a JSON plan.

Progress goes to stderr (a live view on a terminal, plain lines when piped); the answer, the
summary and `--json` output go to stdout.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import anyio
import torch
import typer
from rich.console import Console
from rich.markup import escape

from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalBackend
from parafill.cli_opts import EngineOpts, FillerOpt, engine_opts
from parafill.cli_view import RunView, summary
from parafill.errors import real_error
from parafill.orchestrator.plan import Plan, PlanError, RunResult, check_hooks
from parafill.orchestrator.runner import RunConfig, RunFailed, run_plan
from parafill.planners.base import Planner
from parafill.planners.costs import CostModel, cache_path, cached
from parafill.planners.router import RouterPlanner, features
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Local HF model directory or .gguf file.")
]
ModeOpt = Annotated[str, typer.Option("--mode", help="Engine packing: rows | tree.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command()
def run(
    question: str,
    model: ModelOpt = None,
    compare: Annotated[bool, typer.Option(help="Also answer directly; print both times.")] = False,
    as_json: JsonOpt = False,
    max_points: int = 8,
    point_tokens: int = 96,
    skeleton_tokens: int = 128,
    direct_tokens: int = 512,
    mode: ModeOpt = "rows",
    plan: Annotated[
        str, typer.Option("--plan", help="auto (router decides) | always (decompose) | never.")
    ] = "auto",
    filler: FillerOpt = None,
) -> None:
    """Answer QUESTION: the router decides whether skeleton-of-thought (outline, then fill
    every point in parallel) pays, or whether to answer directly; the result says why."""
    if plan not in ("auto", "always", "never"):
        err.print(f"[red]error:[/red] --plan must be auto, always or never, not {plan!r}")
        raise typer.Exit(2)
    skeleton = SkeletonPlanner(max_points, 2, skeleton_tokens, point_tokens, direct_tokens)
    planner = RouterPlanner(plan, skeleton=skeleton, direct=DirectPlanner(direct_tokens))  # type: ignore[arg-type]
    direct = DirectPlanner(direct_tokens) if compare else None
    opts = engine_opts(model, mode, filler)
    _guard(lambda: anyio.run(_run, question, planner, direct, opts, as_json))


@app.command("plan")
def run_plan_file(
    path: Path,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    mode: ModeOpt = "rows",
    filler: FillerOpt = None,
) -> None:
    """Run a hand-written JSON plan (nodes with dependencies; see README)."""
    opts = engine_opts(model, mode, filler)
    try:
        plan = Plan.from_json(path.read_text())
        check_hooks(plan.nodes, ())  # a plan file runs with no expand hooks
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] cannot use plan {str(path)!r}: {exc}")
        raise typer.Exit(2) from exc
    _guard(lambda: anyio.run(_run, plan, None, None, opts, as_json))


async def _run(
    target: str | Plan,
    planner: Planner | None,
    direct: Planner | None,
    opts: EngineOpts,
    as_json: bool,
) -> None:
    run = RunConfig(filler=opts.filler)
    convert = lambda m: err.print(f"[yellow]{m}[/yellow]")  # noqa: E731
    async with LocalBackend.open(opts.local(), on_convert=convert) as b:
        if isinstance(planner, RouterPlanner) and _needs_costs(planner, target):
            planner = replace(planner, cost=await _costs(b, opts.model, opts.mode))
        result = await _one(target, planner, b, run, show=True)
        baseline = await _one(target, direct, b, run, show=False) if direct else None
    if as_json:
        out.print_json(json.dumps(_as_dict(result, baseline)))
        return
    out.print(result.answer, markup=False)
    if result.notes:
        out.print(f"\n[dim]{'; '.join(result.notes)}[/dim]")
    out.print(f"[bold]parafill[/bold]: {summary(result)}")
    if baseline is not None:
        out.print(f"[bold]direct[/bold]:   {summary(baseline)}")
        ratio = baseline.seconds / max(result.seconds, 1e-9)
        out.print(f"speed-up vs direct: {ratio:.2f}× (wall time, same model and engine)")


async def _one(
    target: str | Plan, planner: Planner | None, backend: LocalBackend, run: RunConfig, show: bool
) -> RunResult:
    plan = target if isinstance(target, Plan) else planner.plan(target)  # type: ignore[union-attr]
    hooks = dict(planner.expanders) if planner else {}
    view = RunView.create(err) if show else None
    try:
        return await run_plan(plan, backend, run, expanders=hooks, emit=view)
    finally:
        if view:
            view.close()


def _needs_costs(planner: RouterPlanner, target: str | Plan) -> bool:
    auto = planner.mode == "auto" and planner.cost is None
    return auto and isinstance(target, str) and features(target) is None


async def _costs(backend: LocalBackend, model: str | None, mode: str) -> CostModel:
    key = f"{model or 'embedded-smollm2'}-{mode}-{_device_name()}"
    if not cache_path(key).exists():
        err.print("[dim]router: measuring this backend's step time once (cached)...[/dim]")
    return await cached(backend, key)


def _device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_dict(result: RunResult, baseline: RunResult | None) -> dict[str, object]:
    def one(r: RunResult) -> dict[str, object]:
        return {
            "answer": r.answer,
            "seconds": r.seconds,
            "tokens": r.tokens,
            "forward_passes": r.forward_passes,
            "notes": list(r.notes),
            "nodes": {k: asdict(v) for k, v in r.results.items()},
            "plan": json.loads(r.plan.to_json()),
        }

    data = one(result)
    if baseline is not None:
        data["direct"] = one(baseline)
        data["speedup"] = baseline.seconds / max(result.seconds, 1e-9)
    return data


def _guard(fn: typer.models.CommandFunctionType) -> None:
    try:
        fn()
    except Exception as exc:  # the backend's task group wraps what failed under it
        real = real_error(exc)
        if isinstance(real, ModelNotFound):
            err.print(f"[red]error:[/red] {real}")
            raise typer.Exit(2) from real
        if isinstance(real, RunFailed):
            err.print(f"[red]error:[/red] {escape(str(real))}")
            if real.result.results:
                err.print(f"finished nodes kept: {', '.join(real.result.results)}")
                out.print(real.result.answer, markup=False)
            raise typer.Exit(1) from real
        if isinstance(real, PlanError):
            err.print(f"[red]error:[/red] invalid plan: {real}")
            raise typer.Exit(2) from real
        raise


# Subcommands that live in their own modules register themselves here (one line each).
# Imported at the bottom: those modules may import helpers from this one.
from parafill import cli_commands  # noqa: E402

cli_commands.register_all(app)


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])
