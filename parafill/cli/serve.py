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
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from parafill.backends.engine.kv import BudgetError, parse_size
from parafill.backends.engine.limits import Limits
from parafill.backends.engine.quant import WeightFormatError
from parafill.backends.engine.weights import ModelNotFound
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.cli.common import (
    EngineRefused,
    LocalOpts,
    check_fill,
    check_mode,
    converting,
    err,
    fail,
)
from parafill.cli.groups import takes
from parafill.cli.options import ModeOpt, ServeFillerOpt, local_options
from parafill.cli.planning import SkeletonTokensOpt
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


@takes(local=local_options)
def serve(
    local: LocalOpts,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="PARAFILL_API_KEY", help="Require this Bearer key.")
    ] = None,
    mode: ModeOpt = "rows",
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask.")] = 1024,
    default_max_tokens: Annotated[int, typer.Option(help="When a request does not say.")] = 256,
    budget_tokens: Annotated[int, typer.Option(help="KV cache size in tokens.")] = 16384,
    kv_budget: Annotated[
        str | None,
        typer.Option(help="KV cache size in bytes instead, e.g. 2GiB, 512MiB, 1.5GB."),
    ] = None,
    rows: Annotated[int, typer.Option(help="rows mode: concurrent sequences.")] = 16,
    name: Annotated[str | None, typer.Option(help="Model id in /v1/models.")] = None,
    skeleton_tokens: SkeletonTokensOpt = 128,  # parafill-sot's
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    header_timeout: Annotated[
        float,
        typer.Option(help="Seconds a request's line and headers may take (then: closed)."),
    ] = 30.0,
    filler: ServeFillerOpt = "autoregressive",
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
) -> None:
    """Serve /v1/chat/completions, /v1/completions and /v1/models (OpenAI-compatible)."""
    try:
        check_mode(mode)
        check_fill(filler, local, None)
        _check_serving(decode, header_timeout, prefill_chunk)
    except ValueError as exc:
        fail(str(exc))
    budget_bytes = _size("--kv-budget", kv_budget) if kv_budget is not None else None
    config = local.config(filler=filler, mode=mode, budget_tokens=budget_tokens,
                          budget_bytes=budget_bytes, rows=rows, decode=decode, compile=compile,
                          prefill_chunk=prefill_chunk)  # fmt: skip
    settings = ServerSettings(
        model_name=name or served_name(local.model),
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        api_key=api_key or None,
        max_body=_size("--max-body-size", max_body_size),
        sot=SkeletonPlanner(skeleton_tokens=skeleton_tokens),
    )
    try:
        anyio.run(_serve, config, settings, Listen(host, port, log_level, header_timeout))
    except (ModelNotFound, BudgetError, WeightFormatError, EngineRefused) as exc:
        fail(str(exc))


def _check_serving(decode: str, header_timeout: float, prefill_chunk: int) -> None:
    """ValueError for a --decode, --header-timeout or --prefill-chunk that cannot be."""
    if decode not in ("auto", "eager", "static"):
        raise ValueError(f"expected --decode auto, eager or static (not {decode!r})")
    if not 0 < header_timeout < float("inf"):
        raise ValueError(f"--header-timeout must be seconds > 0, not {header_timeout}")
    if prefill_chunk < 1:
        raise ValueError(f"--prefill-chunk must be at least 1, not {prefill_chunk}")


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
