"""`parafill dag` (steps that use earlier results, run as a DAG) and `parafill reason`
(N branches in parallel, then a vote or a synthesis).

Both reuse `parafill run`'s machinery (`parafill.cli.answer`, `parafill.cli.common`): the
backend (local or `--server`), the live view, the summary, `--json`, `--compare` and the error
handling. Nothing here runs a plan itself.
"""

from __future__ import annotations

import anyio
import typer

from parafill.cli.answer import answer
from parafill.cli.common import EngineOpts, guard
from parafill.cli.groups import takes
from parafill.cli.options import CompareOpt, JsonOpt, engine_options
from parafill.cli.planning import DirectTokensOpt, dag_options, reasoning_options
from parafill.planners.dag import DagPlanner
from parafill.planners.reasoning import ReasoningPlanner
from parafill.planners.static import DirectPlanner


@takes(planner=dag_options, engine=engine_options)
def dag(
    question: str,
    planner: DagPlanner,
    engine: EngineOpts,
    compare: CompareOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer QUESTION with numbered steps that use earlier results ($1, $2); every step runs
    as soon as the steps it uses are done, then a join step writes the answer."""
    direct = DirectPlanner(planner.direct_tokens) if compare else None
    guard(lambda: anyio.run(answer, question, planner, direct, engine, as_json))


@takes(planner=reasoning_options, engine=engine_options)
def reason(
    question: str,
    planner: ReasoningPlanner,
    engine: EngineOpts,
    compare: CompareOpt = False,
    as_json: JsonOpt = False,
    direct_tokens: DirectTokensOpt = 512,
) -> None:
    """Answer QUESTION with N reasoning branches in parallel, then a majority vote over their
    short answers (recorded in the notes) or a synthesis of the drafts."""
    direct = DirectPlanner(direct_tokens) if compare else None
    guard(lambda: anyio.run(answer, question, planner, direct, engine, as_json))


def register(app: typer.Typer) -> None:
    app.command("dag")(dag)
    app.command("reason")(reason)
