"""`parafill batch write | plan | ner`: the document pipelines of `parafill batch` (a topic, a
plan, a text per line), each with the options of the command it batches; and the `batch`
command group itself, which parafill.cli.batch adds the question pipelines to.
"""

from __future__ import annotations

from typing import Annotated

import typer

from parafill.cli.common import (
    ApiKeyOpt,
    AttentionOpt,
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
    fail,
    ner_engine,
    remote,
)
from parafill.cli.jobs import (
    ConcurrencyOpt,
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
from parafill.jobs import Documents, Entities, Plans, RayConfig
from parafill.orchestrator.runner import RunConfig
from parafill.planners.document import DocumentPlanner, OutlineLimits
from parafill.planners.ner import NerConfig, check_config
from parafill.planners.ner_data import WNUT_LABELS

group = typer.Typer(
    no_args_is_help=True,
    help="Run every line of a JSONL file through one pipeline (resumable; see each PIPELINE).",
)


@group.callback()
def on_ray(
    ctx: typer.Context,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Run on Ray (parafill[ray]): 'local', or a cluster address."),
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="Actors, each with its backend.", min=1)] = 1,
    ray_cpus_per_actor: Annotated[float, typer.Option(help="CPUs Ray gives each actor.")] = 1.0,
    ray_gpus_per_actor: Annotated[float, typer.Option(help="GPUs Ray gives each actor.")] = 0.0,
    ray_num_cpus: Annotated[
        int | None, typer.Option(help="--ray local: Ray's CPU count (default max(4, cores)).")
    ] = None,
    ray_batch_size: Annotated[
        int, typer.Option(help="Documents per actor call, run at once.", min=1)
    ] = 4,
    ray_calls_per_actor: Annotated[
        int, typer.Option(help="Batches each actor runs at once, on its one backend.", min=1)
    ] = 2,
) -> None:
    """`parafill batch [--ray ADDRESS ...] PIPELINE ...`: the Ray options come before PIPELINE."""
    if ray is not None:
        ctx.obj = RayConfig(ray, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor,
                            ray_num_cpus, ray_batch_size,
                            calls_per_actor=ray_calls_per_actor)  # fmt: skip


@group.command("write")
def batch_write(
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
    max_sections: Annotated[int, typer.Option(help="Cap on top-level sections.")] = 5,
    max_subsections: Annotated[int, typer.Option(help="Cap on subsections per section.")] = 3,
    section_tokens: Annotated[int, typer.Option(help="Token budget per (sub)section.")] = 160,
    outline_tokens: Annotated[int, typer.Option(help="Token budget of the outline.")] = 120,
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
    """Each line's "topic" as a Markdown document, as `parafill write` writes it (the record's
    "answer")."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    try:
        limits = OutlineLimits(max_sections=max_sections, max_subsections=max_subsections)
        planner = DocumentPlanner(limits, outline_tokens=outline_tokens,
                                  section_tokens=section_tokens,
                                  summary_tokens=max(8, section_tokens // 4),
                                  frame_tokens=section_tokens)  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    run, local, server_ = engine(opts)
    go(f, Documents(planner, run), local, server_)


@group.command("plan")
def batch_plan(
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
    """Each line a plan in JSON, as `parafill plan` takes a file (or an object whose "plan" is
    one), with an optional "id"."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    at = remote(server, server_model, api_key)
    opts = engine_opts(model, mode, filler, server=at, weights=weights,
                       draft_model=draft_model, self_layers=self_layers,
                       attention=attention)  # fmt: skip
    run, local, server_ = engine(opts)
    go(f, Plans(run), local, server_)


@group.command("ner")
def batch_ner(
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
    labels: Annotated[str, typer.Option(help="Comma-separated entity types.")] = ",".join(
        WNUT_LABELS
    ),
    mode: Annotated[str, typer.Option(help="parallel (PaDeLLM) | ar (one output).")] = "parallel",
    max_mentions: Annotated[int, typer.Option(help="Most mentions per label.")] = 4,
    max_nodes: Annotated[int, typer.Option(help="Most plan nodes.")] = 64,
    model: Annotated[str | None, typer.Option(help="Local HF model dir or .gguf.")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter directory.")] = None,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Plain model.")] = False,
    weights: WeightsOpt = None,
    attention: AttentionOpt = None,
    draft_model: DraftModelOpt = None,
    self_layers: SelfLayersOpt = None,
    filler: FillerOpt = None,
    server: ServerOpt = None,
    server_model: ServerModelOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Each line's "text" (and optional "labels", a list or comma-separated) as `parafill ner`
    extracts entities; a line's labels replace --labels for that line."""
    f = files(input, output, resume, overwrite, retry_failed, ordered, concurrency, timeout,
              max_chars, as_json)  # fmt: skip
    names = tuple(s.strip() for s in labels.split(",") if s.strip())
    cfg = NerConfig(names, max_mentions=max_mentions, max_nodes=max_nodes)
    at = remote(server, server_model, api_key)
    try:
        check_config(cfg)
        if mode not in ("parallel", "ar"):
            raise ValueError(f"unknown mode {mode!r}: use parallel or ar")
        drafting = (draft_model, self_layers, filler)
        local = ner_engine(model, (adapter, no_adapter), weights, attention, drafting, at)
    except ValueError as exc:
        fail(str(exc))
    go(f, Entities(cfg, mode, RunConfig(filler=filler)), local, at)
