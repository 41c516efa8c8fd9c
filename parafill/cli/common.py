"""What every `parafill` command shares: the one pair of consoles (answers to stdout, progress
and errors to stderr), the values the shared options become (`LocalOpts`, `EngineOpts`,
`Remote`) and the checks of each option, and the error handling that turns a failed run into a
message and an exit code. The options themselves are declared in `parafill.cli.options`; no
command lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

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
from parafill.orchestrator.runner import RunConfig, RunFailed

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
class LocalOpts:
    """The local engine's own options (`--model`, `--weights`, `--attention`, `--draft-model`,
    `--self-layers`), each checked; None: not given (LocalConfig's default)."""

    model: str | None = None
    weights: str | None = None
    attention: str | None = None
    draft_model: str | None = None
    self_layers: tuple[int, ...] | None = None

    def config(self, **engine: Any) -> LocalConfig:
        """The local engine's config: these options and `engine`'s fields (mode, ...)."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return LocalConfig(**{k: v for k, v in given.items() if v is not None}, **engine)

    def refuse_server(self, server: Remote | None) -> None:
        """ValueError if one of the engine's options (but --model) is given with a server."""
        flags = ("--weights", "--attention", "--draft-model", "--self-layers")
        values = (self.weights, self.attention, self.draft_model, self.self_layers)
        for flag, value in zip(flags, values, strict=True):
            if value is not None and server is not None:
                raise ValueError(f"{flag} applies to the local engine, not to --server")


@dataclass(frozen=True)
class EngineOpts:
    """What a command runs on, from its options: the local engine's config, or `server`; and
    how every node runs (the filler that overrides each node's, the loop guard)."""

    config: LocalConfig = field(default_factory=LocalConfig)
    filler: str | None = None  # overrides every node's filler
    stop_on_repeat: int = 32  # the loop guard of every node (RunConfig.stop_on_repeat)
    server: Remote | None = None

    def local(self) -> LocalConfig:
        return self.config

    def run_config(self) -> RunConfig:
        return RunConfig(filler=self.filler, stop_on_repeat=self.stop_on_repeat)


def check_mode(mode: str) -> str:
    """The engine's packing `--mode`; ValueError unless rows or tree."""
    if mode not in ("rows", "tree"):
        raise ValueError(f"--mode must be rows or tree, not {mode!r}")
    return mode


def check_fill(filler: str | None, local: LocalOpts, server: Remote | None) -> None:
    """ValueError for an unknown `--filler`, or `draft` with no model to draft with."""
    if filler is not None:
        check_filler(filler)
    if filler == "draft" and local.draft_model is None and server is None:
        raise ValueError("--filler draft needs a draft model: add --draft-model PATH")


def local_weights(weights: str | None) -> str | None:
    """The `--weights` format (None: not given, LocalConfig's "auto"); ValueError for an
    unknown one."""
    if weights is None:
        return None
    try:
        return check_format(weights)
    except ValueError as exc:
        raise ValueError(f"--weights: {exc}") from exc


def local_attention(attention: str | None) -> str | None:
    """The `--attention` precision (None: not given, LocalConfig's "auto"); ValueError for an
    unknown one."""
    if attention is not None and attention not in ATTENTION:
        raise ValueError(f"--attention must be one of {', '.join(ATTENTION)}, not {attention!r}")
    return attention


def local_drafting(draft_model: str | None, self_layers: str | None) -> tuple[int, ...] | None:
    """The `--self-layers` indices (None: not given); ValueError for a `--draft-model` that
    does not exist, or layers that are not distinct non-negative integers."""
    if draft_model is not None and not Path(draft_model).exists():
        raise ValueError(f"--draft-model {draft_model!r}: no such file or directory")
    return None if self_layers is None else parse_layers(self_layers)


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
