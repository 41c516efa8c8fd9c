"""`parafill batch PIPELINE --input in.jsonl --output out.jsonl`: every line of a JSONL file
through one pipeline, resumable, with a progress bar on stderr and the summary (`--json`: as
JSON on stdout). Here the question pipelines (run, sot, dag, reason) and the group's
registration; write, plan and ner are in batch_docs.py, the file options and running in
`parafill.cli.jobs`, the runner in `parafill.jobs`. Exit 1 when a document failed, 2 when the
job could not start.
"""

from __future__ import annotations

from typing import Annotated

import typer

from parafill.cli.batch_docs import group
from parafill.cli.common import (
    ApiKeyOpt,
    AttentionOpt,
    DraftModelOpt,
    EngineOpts,
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
    fail,
    remote,
)
from parafill.cli.jobs import (
    ConcurrencyOpt,
    Files,
    InputOpt,
    MaxCharsOpt,
    OrderedOpt,
    OutputOpt,
    OverwriteOpt,
    ResumeOpt,
    RetryOpt,
    TimeoutOpt,
    engine,
    files,
    go,
)
from parafill.jobs import Questions
from parafill.planners.dag import DagPlanner
from parafill.planners.reasoning import Mode, ReasoningPlanner
from parafill.planners.router import RouterPlanner
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner


def _questions(f: Files, planner: object, opts: EngineOpts) -> None:
    run, local, server = engine(opts)
    pipeline = Questions(planner, run, local, announce=lambda m: err.print(f"[dim]{m}[/dim]"))  # type: ignore[arg-type]
    go(f, pipeline, local, server)


@group.command("run")
def batch_run(
    input: InputOpt,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    retry_failed: RetryOpt = False,
    ordered: OrderedOpt = False,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = None,
    max_chars: MaxCharsOpt = None,
    as_json: JsonOpt = False,
    plan: Annotated[
        str, typer.Option("--plan", help="auto (router decides) | always (decompose) | never.")
    ] = "auto",
    max_points: int = 8,
    point_tokens: int = 96,
    skeleton_tokens: int = 128,
    direct_tokens: int = 512,
    model: ModelOpt = None,
    mode: ModeOpt = "rows",
    weights: WeightsOpt = None,
    attention: AttentionOpt = None,
    draft_model: DraftModelOpt = None,
    self_layers: SelfLayersOpt = None,
    filler: FillerOpt = None,
    stop_on_repeat: GuardOpt = 32,
    server: ServerOpt = None,
    server_model: ServerModelOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Each line's "question" answered as `parafill run` does (the router: skeleton-of-thought
    or a direct answer)."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    if plan not in ("auto", "always", "never"):
        fail(f"--plan must be auto, always or never, not {plan!r}")
    skeleton = SkeletonPlanner(max_points, 2, skeleton_tokens, point_tokens, direct_tokens)
    planner = RouterPlanner(plan, skeleton=skeleton, direct=DirectPlanner(direct_tokens))  # type: ignore[arg-type]
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, stop_on_repeat, at, weights, draft_model, self_layers,
                       attention)  # fmt: skip
    _questions(f, planner, opts)


@group.command("sot")
def batch_sot(
    input: InputOpt,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    retry_failed: RetryOpt = False,
    ordered: OrderedOpt = False,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = None,
    max_chars: MaxCharsOpt = None,
    as_json: JsonOpt = False,
    max_points: int = 8,
    point_tokens: int = 96,
    skeleton_tokens: int = 128,
    direct_tokens: int = 512,
    model: ModelOpt = None,
    mode: ModeOpt = "rows",
    weights: WeightsOpt = None,
    attention: AttentionOpt = None,
    draft_model: DraftModelOpt = None,
    self_layers: SelfLayersOpt = None,
    filler: FillerOpt = None,
    stop_on_repeat: GuardOpt = 32,
    server: ServerOpt = None,
    server_model: ServerModelOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Each line's "question" by skeleton-of-thought, always (no router)."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    planner = SkeletonPlanner(max_points, 2, skeleton_tokens, point_tokens, direct_tokens)
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, stop_on_repeat, at, weights, draft_model, self_layers,
                       attention)  # fmt: skip
    _questions(f, planner, opts)


@group.command("dag")
def batch_dag(
    input: InputOpt,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    retry_failed: RetryOpt = False,
    ordered: OrderedOpt = False,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = None,
    max_chars: MaxCharsOpt = None,
    as_json: JsonOpt = False,
    max_steps: int = 8,
    max_depth: int = 5,
    plan_tokens: int = 96,
    step_tokens: int = 64,
    join_tokens: int = 160,
    direct_tokens: int = 512,
    model: ModelOpt = None,
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
    """Each line's "question" as `parafill dag` answers it (steps using earlier results)."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    planner = DagPlanner(
        max_steps, max_depth, 2, plan_tokens, step_tokens, join_tokens, direct_tokens
    )
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    _questions(f, planner, opts)


@group.command("reason")
def batch_reason(
    input: InputOpt,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    retry_failed: RetryOpt = False,
    ordered: OrderedOpt = False,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = None,
    max_chars: MaxCharsOpt = None,
    as_json: JsonOpt = False,
    branches: Annotated[int, typer.Option(help="Parallel branches (1..16).")] = 4,
    join: Annotated[str, typer.Option(help="auto | vote | synthesis")] = "auto",
    temperature: Annotated[float, typer.Option(help="> 0 samples the branches.")] = 0.0,
    branch_tokens: int = 128,
    join_tokens: int = 192,
    model: ModelOpt = None,
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
    """Each line's "question" as `parafill reason` answers it (branches, then vote or
    synthesis)."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    if join not in ("auto", "vote", "synthesis"):
        fail(f"--join must be auto, vote or synthesis, not {join!r}")
    if not 1 <= branches <= 16:
        fail(f"--branches must be 1..16, not {branches}")
    how: Mode = join  # type: ignore[assignment]  # checked above
    planner = ReasoningPlanner(branches, how, branch_tokens=branch_tokens,
                               join_tokens=join_tokens, temperature=temperature)  # fmt: skip
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    _questions(f, planner, opts)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="batch")
