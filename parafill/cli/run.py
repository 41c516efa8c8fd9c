"""`parafill run` (a question: the router picks skeleton-of-thought or a direct answer) and
`parafill plan` (a hand-written JSON plan).

Both only check their options and build the planner; running and printing live in
`parafill.cli.answer`.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import typer

from parafill.cli.answer import answer
from parafill.cli.common import EngineOpts, err, guard
from parafill.cli.groups import takes
from parafill.cli.options import CompareOpt, JsonOpt, engine_options
from parafill.cli.planning import router_options
from parafill.orchestrator.plan import Plan, check_hooks
from parafill.planners.router import RouterPlanner
from parafill.planners.static import DirectPlanner


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command("plan")(run_plan_file)


@takes(planner=router_options, engine=engine_options)
def run(
    question: str,
    planner: RouterPlanner,
    engine: EngineOpts,
    compare: CompareOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer QUESTION: the router decides whether skeleton-of-thought (outline, then fill
    every point in parallel) pays, or whether to answer directly; the result says why."""
    direct = DirectPlanner(planner.direct.max_tokens) if compare else None
    guard(lambda: anyio.run(answer, question, planner, direct, engine, as_json))


@takes(engine=engine_options)
def run_plan_file(path: Path, engine: EngineOpts, as_json: JsonOpt = False) -> None:
    """Run a hand-written JSON plan (nodes with dependencies; see README)."""
    try:
        plan = Plan.from_json(path.read_text())
        check_hooks(plan.nodes, ())  # a plan file runs with no expand hooks
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] cannot use plan {str(path)!r}: {exc}")
        raise typer.Exit(2) from exc
    guard(lambda: anyio.run(answer, plan, None, None, engine, as_json))
