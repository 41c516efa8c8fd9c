"""The options of the commands that open a backend, each declared once: the local engine's
(`local_options`: --model, --weights, --attention, --draft-model, --self-layers), a server's
(`remote_options`: --server, --server-model, --api-key), and the two groups commands take,
`engine_options` (+ --mode, --filler, --stop-on-repeat) and `ner_engine_options` (+ --adapter,
--no-adapter, --filler). Each group checks its options where they enter (exit 2 with the
reason, before anything loads) and gives one frozen value. `@takes` (parafill.cli.groups)
puts a group's options into a command; planners' options are in parafill.cli.planning.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from parafill.cli.common import (
    EngineOpts,
    LocalOpts,
    Remote,
    check_fill,
    check_mode,
    fail,
    local_attention,
    local_drafting,
    local_weights,
)
from parafill.cli.groups import takes
from parafill.planners.ner import default_adapter

ENGINE = "Engine"  # the --help panels the groups' options are listed in
SERVER = "Server"


def _filler(how: str, default: str = "") -> Any:  # typer.Option is typed Any
    return typer.Option(
        "--filler",
        rich_help_panel=ENGINE,
        help=f"{how}: autoregressive | ngram | jacobi | self | draft{default}. self: the model "
        "drafts for itself with layers skipped (--self-layers); draft: --draft-model drafts.",
    )


ModeOpt = Annotated[
    str, typer.Option("--mode", help="Engine packing: rows | tree.", rich_help_panel=ENGINE)
]
FillerOpt = Annotated[
    str | None,
    _filler("How every node decodes", " (default: each node's own, chosen by the planner)"),
]
ServeFillerOpt = Annotated[str, _filler("How requests decode unless they say (field 'filler')")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
CompareOpt = Annotated[
    bool, typer.Option("--compare/--no-compare", help="Also answer directly; print both times.")
]


def local_options(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Local HF model directory or .gguf file.", rich_help_panel=ENGINE
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            rich_help_panel=ENGINE,
            help="Weight format of the local engine on the CPU: fp32 | bf16 | int8 | int4 (int4 "
            "keeps a GGUF's own 4-bit blocks). Default: int4 for the embedded model, fp32 for "
            "--model or an adapter.",
        ),
    ] = None,
    attention: Annotated[
        str | None,
        typer.Option(
            "--attention",
            rich_help_panel=ENGINE,
            help="Attention and KV cache precision of the local engine: auto (ordered fp32 "
            "attention on the CPU, token-exact in every packing mode and filler; fp64 with "
            "int8/int4 weights where parafill's CPU kernels cannot be built) | ordered | native "
            "(torch's kernels in the model's dtype: not exact across modes with packed weights) "
            "| fp64.",
        ),
    ] = None,
    draft_model: Annotated[
        str | None,
        typer.Option(
            "--draft-model",
            rich_help_panel=ENGINE,
            help="A smaller local model (HF directory or .gguf) with the same tokenizer, for "
            "--filler draft (or nodes and requests that name it).",
        ),
    ] = None,
    self_layers: Annotated[
        str | None,
        typer.Option(
            "--self-layers",
            rich_help_panel=ENGINE,
            help="Layers the self filler drafts with, comma-separated (e.g. 0,2,4,29); the "
            "others are skipped (default: calibrated on first use and cached).",
        ),
    ] = None,
) -> LocalOpts:
    """The local engine's options, each checked on its own (exit 2 with the reason)."""
    try:
        fmt, precision = local_weights(weights), local_attention(attention)
        layers = local_drafting(draft_model, self_layers)
    except ValueError as exc:
        fail(str(exc))
    return LocalOpts(model, fmt, precision, draft_model, layers)


def remote_options(
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            rich_help_panel=SERVER,
            help="Run on an OpenAI-compatible server at this URL (llama.cpp's llama-server, "
            "vLLM, parafill serve, ...) instead of the local engine.",
        ),
    ] = None,
    server_model: Annotated[
        str | None,
        typer.Option(
            "--server-model",
            help="Model name to ask --server for (default: its first).",
            rich_help_panel=SERVER,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="OPENAI_API_KEY", help="Key for --server.", rich_help_panel=SERVER
        ),
    ] = None,
) -> Remote | None:
    """The server to run on instead of the local engine (None without --server), or exit 2
    with the reason."""
    if server is None:
        if server_model is not None:
            fail("--server-model needs --server")
        return None
    if not server.startswith(("http://", "https://")):
        fail(f"--server must be an http:// or https:// URL, not {server!r}")
    return Remote(server, server_model, api_key)


@takes(local=local_options, server=remote_options)
def engine_options(
    local: LocalOpts,
    *,
    mode: ModeOpt = "rows",
    filler: FillerOpt = None,
    stop_on_repeat: Annotated[
        int,
        typer.Option(
            "--stop-on-repeat",
            min=0,
            rich_help_panel=ENGINE,
            help="Loop guard: a node stops once its last N output tokens already occurred in "
            "its output (0: off). --compare uses it on both sides.",
        ),
    ] = 32,
    server: Remote | None,
) -> EngineOpts:
    """What the commands that run plans run on: the local engine or `--server`, never both;
    exit 2 with the reason."""
    try:
        check_fill(filler, local, server)
        config = local.config(mode=check_mode(mode))
        local.refuse_server(server)
        if server is not None and local.model is not None:
            raise ValueError("--model is a local model: with --server, use --server-model")
    except ValueError as exc:
        fail(str(exc))
    return EngineOpts(config, filler, stop_on_repeat, server)


@takes(local=local_options, server=remote_options)
def ner_engine_options(
    local: LocalOpts,
    *,
    adapter: Annotated[
        str | None,
        typer.Option("--adapter", help="LoRA adapter directory.", rich_help_panel=ENGINE),
    ] = None,
    no_adapter: Annotated[
        bool, typer.Option("--no-adapter", help="Plain model.", rich_help_panel=ENGINE)
    ] = False,
    filler: FillerOpt = None,
    server: Remote | None,
) -> EngineOpts:
    """What `parafill ner` and `parafill batch ner` run on: the adapter is --adapter, none with
    --no-adapter or a server (which runs its own model as it is), else the one shipped for the
    embedded model; exit 2 with the reason."""
    try:
        check_fill(filler, local, server)
        local.refuse_server(server)
        if server is not None and (local.model or adapter):
            raise ValueError("--model / --adapter are local: with --server, use --server-model")
    except ValueError as exc:
        fail(str(exc))
    chosen = None if no_adapter or server else adapter or default_adapter(local.model)
    return EngineOpts(local.config(adapter=chosen), filler, server=server)
