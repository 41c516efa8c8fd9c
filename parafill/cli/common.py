"""What every `parafill` command shares: the one pair of consoles (answers to stdout, progress
and errors to stderr), the options of commands that open the local engine (`--model`, `--mode`,
`--weights`, `--filler`, `--draft-model`, `--self-layers`, `--json`, `--compare`) or a server
instead (`--server`, `--server-model`, `--api-key`), checked before anything loads, and the
error handling that turns a failed run into a message and an exit code. No command lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from parafill.backends.engine.model import ATTENTION
from parafill.backends.engine.quant import WeightFormatError, check_format
from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalConfig
from parafill.errors import real_error
from parafill.fillers import check as check_filler
from parafill.orchestrator.plan import PlanError
from parafill.orchestrator.runner import RunFailed
from parafill.planners.ner import default_adapter

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Local HF model directory or .gguf file.")
]
ModeOpt = Annotated[str, typer.Option("--mode", help="Engine packing: rows | tree.")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="Weight format of the local engine on the CPU: fp32 | bf16 | int8 | int4 (int4 "
        "keeps a GGUF's own 4-bit blocks). Default: int4 for the embedded model, fp32 for "
        "--model or an adapter.",
    ),
]
AttentionOpt = Annotated[
    str | None,
    typer.Option(
        "--attention",
        help="Attention and KV cache precision of the local engine: auto (fp64 with int8/int4 "
        "weights, so every packing mode and filler stays token-exact) | native (the model's "
        "dtype: faster, not exact across modes with packed weights) | fp64.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
CompareOpt = Annotated[bool, typer.Option(help="Also answer directly; print both times.")]
FillerOpt = Annotated[
    str | None,
    typer.Option(
        "--filler",
        help="How every node decodes: autoregressive | ngram | jacobi | self | draft "
        "(default: each node's own, chosen by the planner). self: the model drafts for itself "
        "with layers skipped (--self-layers); draft: --draft-model drafts.",
    ),
]
DraftModelOpt = Annotated[
    str | None,
    typer.Option(
        "--draft-model",
        help="A smaller local model (HF directory or .gguf) with the same tokenizer, for "
        "--filler draft (or nodes and requests that name it).",
    ),
]
SelfLayersOpt = Annotated[
    str | None,
    typer.Option(
        "--self-layers",
        help="Layers the self filler drafts with, comma-separated (e.g. 0,2,4,29); the "
        "others are skipped (default: calibrated on first use and cached).",
    ),
]


GuardOpt = Annotated[
    int,
    typer.Option(
        "--stop-on-repeat",
        min=0,
        help="Loop guard: a node stops once its last N output tokens already occurred in "
        "its output (0: off). --compare uses it on both sides.",
    ),
]


ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Run on an OpenAI-compatible server at this URL (llama.cpp's llama-server, vLLM, "
        "parafill serve, ...) instead of the local engine.",
    ),
]
ServerModelOpt = Annotated[
    str | None,
    typer.Option("--server-model", help="Model name to ask --server for (default: its first)."),
]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="Key for --server.")
]


@dataclass(frozen=True)
class Remote:
    """An OpenAI-compatible server to run on instead of the local engine (`--server`)."""

    url: str
    model: str | None = None  # None: the first model the server lists
    api_key: str | None = None


class ServerUnavailable(RuntimeError):
    """`--server` could not be asked for its models (down, wrong URL, refused key)."""


class EngineRefused(ValueError):
    """The local engine would not open with these settings (a draft model with another
    tokenizer than the model's, ...): a usage error, not a crash."""


@dataclass(frozen=True)
class EngineOpts:
    """What the backend is opened with, from the command line: the local engine, or `server`."""

    model: str | None = None
    mode: str = "rows"
    filler: str | None = None  # overrides every node's filler
    stop_on_repeat: int = 32  # the loop guard of every node (RunConfig.stop_on_repeat)
    server: Remote | None = None
    weights: str = "auto"  # the local engine's projection weights (LocalConfig.weights)
    draft_model: str | None = None  # the `draft` filler's model (LocalConfig.draft_model)
    self_layers: tuple[int, ...] | None = None  # the `self` filler's layers; None: calibrate
    attention: str = "auto"  # LocalConfig.attention

    def local(self) -> LocalConfig:
        mode = self.mode  # checked by engine_opts
        return LocalConfig(
            model=self.model,
            mode=mode,  # type: ignore[arg-type]
            weights=self.weights,
            draft_model=self.draft_model,
            self_layers=self.self_layers,
            attention=self.attention,  # type: ignore[arg-type]
        )


def remote(server: str | None, model: str | None, api_key: str | None) -> Remote | None:
    """The `--server` options (None without --server), or exit 2 with the reason."""
    if server is None:
        if model is not None:
            fail("--server-model needs --server")
        return None
    if not server.startswith(("http://", "https://")):
        fail(f"--server must be an http:// or https:// URL, not {server!r}")
    return Remote(server, model, api_key)


def engine_opts(
    model: str | None,
    mode: str,
    filler: str | None,
    stop_on_repeat: int = 32,
    server: Remote | None = None,
    weights: str | None = None,
    draft_model: str | None = None,
    self_layers: str | None = None,
    attention: str | None = None,
) -> EngineOpts:
    """The options, or exit 2 with the reason (an unknown filler, mode or weight format, a local
    model or weight format and a server both, a bad --self-layers, a --draft-model that is not
    there or missing for --filler draft, --attention with a server). `weights` / `attention`
    None: not given ("auto")."""
    try:
        if filler is not None:
            check_filler(filler)
        if mode not in ("rows", "tree"):
            raise ValueError(f"--mode must be rows or tree, not {mode!r}")
        fmt = local_weights(weights, server)
        precision = local_attention(attention, server)
        drafter, layers = local_drafting(draft_model, self_layers, filler, server)
        if server is not None and model is not None:
            raise ValueError("--model is a local model: with --server, use --server-model")
    except ValueError as exc:
        fail(str(exc))
    return EngineOpts(model, mode, filler, stop_on_repeat, server, fmt, drafter, layers, precision)


def local_weights(weights: str | None, server: Remote | None = None) -> str:
    """The `--weights` format ("auto" when not given: LocalConfig.weights); ValueError for an
    unknown one, or for one given together with `--server`."""
    if weights is None:
        return "auto"
    try:
        fmt = check_format(weights)
    except ValueError as exc:
        raise ValueError(f"--weights: {exc}") from exc
    if server is not None:
        raise ValueError("--weights applies to the local engine, not to --server")
    return fmt


def local_attention(attention: str | None, server: Remote | None = None) -> str:
    """The `--attention` precision ("auto" when not given: LocalConfig.attention); ValueError
    for an unknown one, or for one given together with `--server`."""
    if attention is None:
        return "auto"
    if attention not in ATTENTION:
        raise ValueError(f"--attention must be auto, native or fp64, not {attention!r}")
    if server is not None:
        raise ValueError("--attention applies to the local engine, not to --server")
    return attention


def ner_engine(
    model: str | None,
    adapter: tuple[str | None, bool],
    weights: str | None,
    attention: str | None,
    drafting: tuple[str | None, str | None, str | None],
    server: Remote | None,
) -> LocalConfig:
    """The local engine of `parafill ner` and `parafill batch ner`: `adapter` (--adapter,
    --no-adapter; neither: the shipped one for the embedded model; none with a server, which runs
    its own model as it is), `drafting` (--draft-model,
    --self-layers, --filler). ValueError for what the options refuse."""
    draft_model, self_layers, filler = drafting
    if filler is not None:
        check_filler(filler)
    fmt = local_weights(weights, server)
    precision = local_attention(attention, server)
    drafter, layers = local_drafting(draft_model, self_layers, filler, server)
    given, no_adapter = adapter
    if server is not None and (model or given):
        raise ValueError("--model / --adapter are local: with --server, use --server-model")
    chosen = None if no_adapter or server else given or default_adapter(model)
    return LocalConfig(
        model=model,
        adapter=chosen,
        weights=fmt,
        draft_model=drafter,
        self_layers=layers,
        attention=precision,  # type: ignore[arg-type]
    )


def local_drafting(
    draft_model: str | None,
    self_layers: str | None,
    filler: str | None,
    server: Remote | None = None,
) -> tuple[str | None, tuple[int, ...] | None]:
    """The `--draft-model` path and the `--self-layers` indices (None: not given); ValueError
    for either given with `--server`, a draft model that does not exist, layers that are not
    distinct non-negative integers, or `filler` draft without a draft model."""
    for flag, given in (("--draft-model", draft_model), ("--self-layers", self_layers)):
        if given is not None and server is not None:
            raise ValueError(f"{flag} applies to the local engine, not to --server")
    if draft_model is not None and not Path(draft_model).exists():
        raise ValueError(f"--draft-model {draft_model!r}: no such file or directory")
    if filler == "draft" and draft_model is None and server is None:
        raise ValueError("--filler draft needs a draft model: add --draft-model PATH")
    return draft_model, None if self_layers is None else parse_layers(self_layers)


def parse_layers(text: str) -> tuple[int, ...]:
    """`--self-layers` "0,2,4": the layer indices, sorted (the layers run in model order);
    ValueError unless they are distinct non-negative integers, at least one."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError("--self-layers needs at least one layer index, e.g. 0,2,4")
    try:
        layers = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--self-layers must be comma-separated layer indices (integers), not {text!r}"
        ) from None
    if bad := [n for n in layers if n < 0]:
        raise ValueError(f"--self-layers: layer indices start at 0, not {bad[0]}")
    if dupes := sorted({n for n in layers if layers.count(n) > 1}):
        raise ValueError(f"--self-layers names layer {dupes[0]} more than once")
    return tuple(sorted(layers))


def fail(message: str) -> NoReturn:
    """Exit 2 (a usage error) with `message` on stderr."""
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)


def converting(message: str) -> None:
    """Shown while a GGUF model is converted (once; later loads read the cached copy)."""
    err.print(f"[yellow]{message}[/yellow]")


def guard(fn: Callable[[], object]) -> None:
    """Run `fn`; a missing or refused model or an invalid plan exits 2, a failed node exits 1 after
    printing the nodes that finished and what they answered."""
    try:
        fn()
    except Exception as exc:  # the backend's task group wraps what failed under it
        real = real_error(exc)
        if isinstance(real, ModelNotFound | ServerUnavailable | WeightFormatError | EngineRefused):
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
