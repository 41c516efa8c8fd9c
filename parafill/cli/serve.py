"""`parafill serve`: the OpenAI-compatible HTTP server (parafill.server) run by uvicorn.

Opens the local engine once, then serves until Ctrl-C; binds 127.0.0.1 unless told otherwise.
The API key comes from --api-key or PARAFILL_API_KEY (none: no key is asked for). A connection
whose request line and headers take longer than --header-timeout is closed (uvicorn has no such
limit of its own).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio
import h11
import typer
import uvicorn
from rich.markup import escape
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from parafill.backends.engine.kv import BudgetError, parse_size
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.model import ATTENTION
from parafill.backends.engine.quant import WeightFormatError
from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.cli.common import (
    DraftModelOpt,
    EngineRefused,
    SelfLayersOpt,
    WeightsOpt,
    converting,
    err,
    local_drafting,
    local_weights,
)
from parafill.fillers import check as check_filler
from parafill.planners.skeleton import SkeletonPlanner
from parafill.server import ServerSettings, create_app

_QUANT = re.compile(r"\.(q\d\w*|f16|f32|bf16)$", re.I)


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head (request line and
    headers), counted from the connection or the request's first byte, not reset by later
    bytes: the connection is closed when it passes. uvicorn has no such timeout (its
    keep-alive timer runs only between requests, and stops at the first byte of the next), so
    a client that sends half a head, or trickles it, or nothing, holds a connection forever."""

    head_timeout = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the head is not all here yet
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        # a timer on the protocol's loop, as uvicorn's keep-alive timer is: protocol callbacks
        # run outside any task, so there is no task group or cancel scope to put it in
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout, self._late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


@dataclass(frozen=True)
class Listen:
    """Where uvicorn serves, and how long a request's head (its line and headers) may take."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "warning"
    header_timeout: float = 30.0

    def config(self, app: ASGIApp) -> uvicorn.Config:
        http = type("HeadDeadline", (_HeadDeadline,), {"head_timeout": self.header_timeout})
        return uvicorn.Config(
            app, host=self.host, port=self.port, log_level=self.log_level, http=http
        )


def served_name(model: str | None) -> str:
    """What /v1/models calls the model: its directory name or GGUF file stem, no quant tag."""
    if model is None:
        return "SmolLM2-135M-Instruct"
    path = Path(model)
    return _QUANT.sub("", path.stem if path.suffix == ".gguf" else path.name)


def serve(
    model: Annotated[
        str | None, typer.Option(help="Local HF model directory or .gguf file.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="PARAFILL_API_KEY", help="Require this Bearer key.")
    ] = None,
    mode: Annotated[str, typer.Option(help="Engine packing: rows | tree.")] = "rows",
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask.")] = 1024,
    default_max_tokens: Annotated[int, typer.Option(help="When a request does not say.")] = 256,
    budget_tokens: Annotated[int, typer.Option(help="KV cache size in tokens.")] = 16384,
    kv_budget: Annotated[
        str | None,
        typer.Option(help="KV cache size in bytes instead, e.g. 2GiB, 512MiB, 1.5GB."),
    ] = None,
    rows: Annotated[int, typer.Option(help="rows mode: concurrent sequences.")] = 16,
    name: Annotated[str | None, typer.Option(help="Model id in /v1/models.")] = None,
    skeleton_tokens: Annotated[int, typer.Option(help="parafill-sot skeleton cap.")] = 128,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    header_timeout: Annotated[
        float,
        typer.Option(help="Seconds a request's line and headers may take (then: closed)."),
    ] = 30.0,
    filler: Annotated[
        str,
        typer.Option(
            help="How requests decode unless they say (field 'filler'): "
            "autoregressive | ngram | jacobi | self | draft (draft: needs --draft-model)."
        ),
    ] = "autoregressive",
    max_body_size: Annotated[
        str, typer.Option(help="Largest request body, e.g. 4MiB, 16MB (larger: HTTP 413).")
    ] = "4MiB",
    decode: Annotated[
        str,
        typer.Option(help="Decode-only steps: auto (static on a GPU) | eager | static."),
    ] = "auto",
    compile: Annotated[
        bool, typer.Option(help="Static decode: torch.compile the step first (slow start).")
    ] = False,
    prefill_chunk: Annotated[int, typer.Option(help="Prompt tokens fed per step.")] = 512,
    weights: WeightsOpt = None,
    attention: Annotated[
        str,
        typer.Option(
            help="Attention and KV cache precision: auto (fp64 with int8/int4 weights, so every "
            "packing mode and filler stays token-exact) | native (the model's dtype: faster, "
            "not exact across modes with packed weights) | fp64."
        ),
    ] = "auto",
    draft_model: DraftModelOpt = None,
    self_layers: SelfLayersOpt = None,
) -> None:
    """Serve /v1/chat/completions, /v1/completions and /v1/models (OpenAI-compatible)."""
    if mode not in ("rows", "tree") or decode not in ("auto", "eager", "static"):
        err.print(
            f"[red]error:[/red] --mode must be rows or tree (not {mode!r}) and --decode "
            f"auto, eager or static (not {decode!r})"
        )
        raise typer.Exit(2)
    if attention not in ATTENTION:
        err.print(f"[red]error:[/red] --attention must be auto, native or fp64, not {attention!r}")
        raise typer.Exit(2)
    if not 0 < header_timeout < float("inf"):
        err.print(f"[red]error:[/red] --header-timeout must be seconds > 0, not {header_timeout}")
        raise typer.Exit(2)
    if prefill_chunk < 1:
        err.print(f"[red]error:[/red] --prefill-chunk must be at least 1, not {prefill_chunk}")
        raise typer.Exit(2)
    budget_bytes = _size("--kv-budget", kv_budget) if kv_budget is not None else None
    max_body = _size("--max-body-size", max_body_size)
    try:
        check_filler(filler)
    except ValueError as exc:
        err.print(f"[red]error:[/red] --filler: {exc}")
        raise typer.Exit(2) from exc
    try:
        fmt = local_weights(weights)
        drafter, layers = local_drafting(draft_model, self_layers, filler)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    local = LocalConfig(
        filler=filler,
        model=model,
        mode=mode,  # type: ignore[arg-type]
        budget_tokens=budget_tokens,
        budget_bytes=budget_bytes,
        rows=rows,
        decode=decode,  # type: ignore[arg-type]
        compile=compile,
        prefill_chunk=prefill_chunk,
        weights=fmt,
        attention=attention,  # type: ignore[arg-type]
        draft_model=drafter,
        self_layers=layers,
    )
    settings = ServerSettings(
        model_name=name or served_name(model),
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        api_key=api_key or None,
        max_body=max_body,
        sot=SkeletonPlanner(skeleton_tokens=skeleton_tokens),
    )
    try:
        anyio.run(_serve, local, settings, Listen(host, port, log_level, header_timeout))
    except (ModelNotFound, BudgetError, WeightFormatError, EngineRefused) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _size(flag: str, text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {flag}: {exc}")
        raise typer.Exit(2) from exc
    if size <= 0:
        err.print(f"[red]error:[/red] {flag} must be more than 0 bytes, not {text!r}")
        raise typer.Exit(2)
    return size


async def _serve(local: LocalConfig, settings: ServerSettings, where: Listen) -> None:
    host, port = where.host, where.port
    opened = False
    try:
        async with LocalBackend.open(local, on_convert=converting) as b:
            opened = True
            uv = where.config(create_app(b, settings))
            key = " (API key required)" if settings.api_key else ""
            err.print(
                f"parafill serve: {settings.model_name!r} and 'parafill-sot' on "
                f"http://{host}:{port}/v1{key}; {_kv(b.limits)}"
            )
            await uvicorn.Server(uv).serve()
    except ValueError as exc:  # refused while opening (a draft model with another tokenizer)
        if opened:
            raise
        raise EngineRefused(str(exc)) from exc


def _kv(lim: Limits) -> str:
    if lim.kv_bytes is None:  # no preallocated cache: the HF fallback
        return f"KV budget {lim.kv_tokens} tokens (HF fallback)"
    return f"KV cache {lim.kv_rows} x {lim.kv_row_tokens} tokens, {lim.kv_bytes / 2**20:.1f} MiB"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
