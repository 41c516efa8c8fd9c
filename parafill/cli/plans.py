"""`parafill dag` (steps that use earlier results, run as a DAG) and `parafill reason`
(N branches in parallel, then a vote or a synthesis).

Both reuse `parafill run`'s machinery (`parafill.cli.answer`, `parafill.cli.common`): the
backend (local or `--server`), the live view, the summary, `--json`, `--compare` and the error
handling. Nothing here runs a plan itself.
"""

from __future__ import annotations

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
from parafill.planners.dag import DagPlanner
from parafill.planners.reasoning import Mode, ReasoningPlanner
from parafill.planners.static import DirectPlanner


def dag(
    question: str,
    model: ModelOpt = None,
    compare: CompareOpt = False,
    as_json: JsonOpt = False,
    max_steps: int = 8,
    max_depth: int = 5,
    plan_tokens: int = 96,
    step_tokens: int = 64,
    join_tokens: int = 160,
    direct_tokens: int = 512,
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
    """Answer QUESTION with numbered steps that use earlier results ($1, $2); every step runs
    as soon as the steps it uses are done, then a join step writes the answer."""
    planner = DagPlanner(
        max_steps, max_depth, 2, plan_tokens, step_tokens, join_tokens, direct_tokens
    )
    direct = DirectPlanner(direct_tokens) if compare else None
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    guard(lambda: anyio.run(answer, question, planner, direct, opts, as_json))


def reason(
    question: str,
    branches: Annotated[int, typer.Option(help="Parallel branches (1..16).")] = 4,
    join: Annotated[str, typer.Option(help="auto | vote | synthesis")] = "auto",
    temperature: Annotated[float, typer.Option(help="> 0 samples the branches.")] = 0.0,
    model: ModelOpt = None,
    compare: CompareOpt = False,
    as_json: JsonOpt = False,
    branch_tokens: int = 128,
    join_tokens: int = 192,
    direct_tokens: int = 512,
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
    """Answer QUESTION with N reasoning branches in parallel, then a majority vote over their
    short answers (recorded in the notes) or a synthesis of the drafts."""
    if join not in ("auto", "vote", "synthesis"):
        err.print(f"[red]error:[/red] --join must be auto, vote or synthesis, not {join!r}")
        raise typer.Exit(2)
    if not 1 <= branches <= 16:
        err.print(f"[red]error:[/red] --branches must be 1..16, not {branches}")
        raise typer.Exit(2)
    how: Mode = join  # type: ignore[assignment]  # checked above
    planner = ReasoningPlanner(
        branches, how, branch_tokens=branch_tokens, join_tokens=join_tokens,
        temperature=temperature,
    )  # fmt: skip
    direct = DirectPlanner(direct_tokens) if compare else None
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    guard(lambda: anyio.run(answer, question, planner, direct, opts, as_json))


def register(app: typer.Typer) -> None:
    app.command("dag")(dag)
    app.command("reason")(reason)
