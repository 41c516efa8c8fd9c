"""`parafill run` (a question: the router picks skeleton-of-thought or a direct answer) and
`parafill plan` (a hand-written JSON plan).

Both only check their options and build the planner; running and printing live in
`parafill.cli.answer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
import typer

from parafill.cli.answer import answer
from parafill.cli.common import (
    ApiKeyOpt,
    AttentionOpt,
    CompareOpt,
    DraftModelOpt,
    FillerOpt,
    GuardOpt,
    JsonOpt,
    ModelOpt,
    ModeOpt,
    SelfLayersOpt,
    ServerModelOpt,
    ServerOpt,
    WeightsOpt,
    engine_opts,
    err,
    guard,
    remote,
)
from parafill.orchestrator.plan import Plan, check_hooks
from parafill.planners.router import RouterPlanner
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command("plan")(run_plan_file)


def run(
    question: str,
    model: ModelOpt = None,
    compare: CompareOpt = False,
    as_json: JsonOpt = False,
    max_points: int = 8,
    point_tokens: int = 96,
    skeleton_tokens: int = 128,
    direct_tokens: int = 512,
    mode: ModeOpt = "rows",
    weights: WeightsOpt = None,
    attention: AttentionOpt = None,
    draft_model: DraftModelOpt = None,
    self_layers: SelfLayersOpt = None,
    plan: Annotated[
        str, typer.Option("--plan", help="auto (router decides) | always (decompose) | never.")
    ] = "auto",
    filler: FillerOpt = None,
    stop_on_repeat: GuardOpt = 32,
    server: ServerOpt = None,
    server_model: ServerModelOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Answer QUESTION: the router decides whether skeleton-of-thought (outline, then fill
    every point in parallel) pays, or whether to answer directly; the result says why."""
    if plan not in ("auto", "always", "never"):
        err.print(f"[red]error:[/red] --plan must be auto, always or never, not {plan!r}")
        raise typer.Exit(2)
    skeleton = SkeletonPlanner(max_points, 2, skeleton_tokens, point_tokens, direct_tokens)
    planner = RouterPlanner(plan, skeleton=skeleton, direct=DirectPlanner(direct_tokens))  # type: ignore[arg-type]
    direct = DirectPlanner(direct_tokens) if compare else None
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, stop_on_repeat, at, weights, draft_model, self_layers,
                       attention)  # fmt: skip
    guard(lambda: anyio.run(answer, question, planner, direct, opts, as_json))


def run_plan_file(
    path: Path,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    mode: ModeOpt = "rows",
    weights: WeightsOpt = None,
    attention: AttentionOpt = None,
    draft_model: DraftModelOpt = None,
    self_layers: SelfLayersOpt = None,
    filler: FillerOpt = None,
    server: ServerOpt = None,
    server_model: ServerModelOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Run a hand-written JSON plan (nodes with dependencies; see README)."""
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    try:
        plan = Plan.from_json(path.read_text())
        check_hooks(plan.nodes, ())  # a plan file runs with no expand hooks
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] cannot use plan {str(path)!r}: {exc}")
        raise typer.Exit(2) from exc
    guard(lambda: anyio.run(answer, plan, None, None, opts, as_json))
