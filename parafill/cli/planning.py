"""The planners' options, each declared once, as option groups (parafill.cli.groups): the
router, skeleton-of-thought (inside the router too), DAG, reasoning, document and NER. Each
checks its options (exit 2 with the reason) and builds the planner, or the NER pipeline; a
command and its `parafill batch` twin take the same group. Nothing here runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from parafill.cli.common import fail
from parafill.cli.groups import takes
from parafill.jobs import Entities
from parafill.planners.dag import DagPlanner
from parafill.planners.document import DocumentPlanner, OutlineLimits
from parafill.planners.ner import NerConfig, check_config
from parafill.planners.ner_data import WNUT_LABELS
from parafill.planners.reasoning import Mode, ReasoningPlanner
from parafill.planners.router import Route, RouterPlanner
from parafill.planners.skeleton import SkeletonPlanner
from parafill.planners.static import DirectPlanner

DirectTokensOpt = Annotated[
    int, typer.Option("--direct-tokens", help="Token budget of a direct answer.")
]
SkeletonTokensOpt = Annotated[
    int, typer.Option("--skeleton-tokens", help="Token budget of the skeleton (the outline).")
]


def skeleton_options(
    max_points: int = 8,
    point_tokens: int = 96,
    skeleton_tokens: SkeletonTokensOpt = 128,
    direct_tokens: DirectTokensOpt = 512,
) -> SkeletonPlanner:
    return SkeletonPlanner(max_points, 2, skeleton_tokens, point_tokens, direct_tokens)


@takes(skeleton=skeleton_options)
def router_options(
    plan: Annotated[
        str, typer.Option("--plan", help="auto (router decides) | always (decompose) | never.")
    ] = "auto",
    *,
    skeleton: SkeletonPlanner,
) -> RouterPlanner:
    if plan not in ("auto", "always", "never"):
        fail(f"--plan must be auto, always or never, not {plan!r}")
    route: Route = plan  # type: ignore[assignment]  # checked above
    return RouterPlanner(route, skeleton=skeleton, direct=DirectPlanner(skeleton.direct_tokens))


def dag_options(
    max_steps: int = 8,
    max_depth: int = 5,
    plan_tokens: int = 96,
    step_tokens: int = 64,
    join_tokens: int = 160,
    direct_tokens: DirectTokensOpt = 512,
) -> DagPlanner:
    return DagPlanner(max_steps, max_depth, 2, plan_tokens, step_tokens, join_tokens, direct_tokens)


def reasoning_options(
    branches: Annotated[int, typer.Option(help="Parallel branches (1..16).")] = 4,
    join: Annotated[str, typer.Option(help="auto | vote | synthesis")] = "auto",
    temperature: Annotated[float, typer.Option(help="> 0 samples the branches.")] = 0.0,
    branch_tokens: int = 128,
    join_tokens: int = 192,
) -> ReasoningPlanner:
    if join not in ("auto", "vote", "synthesis"):
        fail(f"--join must be auto, vote or synthesis, not {join!r}")
    if not 1 <= branches <= 16:
        fail(f"--branches must be 1..16, not {branches}")
    how: Mode = join  # type: ignore[assignment]  # checked above
    return ReasoningPlanner(branches, how, branch_tokens=branch_tokens,
                            join_tokens=join_tokens, temperature=temperature)  # fmt: skip


def document_options(
    max_sections: Annotated[int, typer.Option(help="Cap on top-level sections.")] = 5,
    max_subsections: Annotated[int, typer.Option(help="Cap on subsections per section.")] = 3,
    section_tokens: Annotated[int, typer.Option(help="Token budget per (sub)section.")] = 160,
    outline_tokens: Annotated[int, typer.Option(help="Token budget of the outline.")] = 120,
) -> DocumentPlanner:
    try:
        limits = OutlineLimits(max_sections=max_sections, max_subsections=max_subsections)
        return DocumentPlanner(limits, outline_tokens=outline_tokens,
                               section_tokens=section_tokens,
                               summary_tokens=max(8, section_tokens // 4),
                               frame_tokens=section_tokens)  # fmt: skip
    except ValueError as exc:
        fail(str(exc))


def ner_options(
    labels: Annotated[str, typer.Option(help="Comma-separated entity types.")] = ",".join(
        WNUT_LABELS
    ),
    mode: Annotated[str, typer.Option(help="parallel (PaDeLLM) | ar (one output).")] = "parallel",
    max_mentions: Annotated[int, typer.Option(help="Most mentions per label.")] = 4,
    max_nodes: Annotated[int, typer.Option(help="Most plan nodes.")] = 64,
) -> Entities:
    """The NER pipeline (its run config comes from the engine's options)."""
    names = tuple(s.strip() for s in labels.split(",") if s.strip())
    cfg = NerConfig(names, max_mentions=max_mentions, max_nodes=max_nodes)
    try:
        check_config(cfg)
        if mode not in ("parallel", "ar"):
            raise ValueError(f"unknown mode {mode!r}: use parallel or ar")
    except ValueError as exc:
        fail(str(exc))
    return Entities(cfg, mode)
