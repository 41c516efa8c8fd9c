"""The public Python API: `arun` (async), `stream` (async events), and ONE sync wrapper `run`.

`target` is a question (planned by `planner`; by default the router, as `parafill run` does:
skeleton-of-thought where decomposing pays, else a direct answer) or a hand-built `Plan`.
Without a `backend`, the local engine is opened for the call and closed after it: on `model`
(default: the embedded SmolLM2), or with every engine setting from `local` (a `LocalConfig`:
packing, KV budget, prefill chunk, static / compiled decode, speculation).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import replace
from functools import partial

import anyio
import torch
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from parafill.backends.base import Backend
from parafill.backends.local import LocalBackend, LocalConfig, weights_for
from parafill.errors import real_error
from parafill.orchestrator.events import Event
from parafill.orchestrator.plan import Plan, RunResult
from parafill.orchestrator.runner import Emit, Expander, RunConfig, run_plan
from parafill.planners.base import Planner
from parafill.planners.costs import BATCHING_SERVER, cache_path, cached
from parafill.planners.router import RouterPlanner


async def arun(
    target: str | Plan,
    *,
    backend: Backend | None = None,
    model: str | None = None,
    local: LocalConfig | None = None,
    planner: Planner | None = None,
    expanders: Mapping[str, Expander] | None = None,
    config: RunConfig | None = None,
    on_event: Emit | None = None,
) -> RunResult:
    """Plan (if `target` is a question) and run it; returns the assembled result.

    A question is planned by `planner`, by default `RouterPlanner()`: its notes say which path
    it took and why. On the local engine opened here, the router decides list-like questions by
    that engine's step costs, measured once per model, packing mode and device and cached
    (`$PARAFILL_CACHE/costs`); on a `backend` you pass that batches requests (its
    `capabilities`), the router assumes a batching server's costs unless given `cost=`."""
    if local is not None and model is not None:
        raise ValueError("give the model in `local` (LocalConfig(model=...)) or `model`, not both")
    chosen = planner or RouterPlanner()
    async with AsyncExitStack() as stack:
        if backend is None:
            cfg = local or LocalConfig(model=model)
            backend = await stack.enter_async_context(LocalBackend.open(cfg))
            chosen = await with_costs(chosen, target, backend, cfg)
        else:
            chosen = assumed_costs(chosen, backend)
        if isinstance(target, Plan):
            plan, hooks = target, dict(expanders or {})
        else:
            plan, hooks = chosen.plan(target), {**chosen.expanders, **(expanders or {})}
        return await run_plan(plan, backend, config, expanders=hooks, emit=on_event)


async def with_costs(
    planner: Planner,
    target: str | Plan,
    backend: Backend,
    local: LocalConfig,
    announce: Callable[[str], None] | None = None,
) -> Planner:
    """`planner`, given the step costs of `backend` (the local engine opened with `local`) where
    it is a router that needs them to decide `target`; read from the cache, else measured now
    (`announce` is told first) and cached. Any other planner or target: `planner` itself."""
    if not isinstance(planner, RouterPlanner) or not isinstance(target, str):
        return planner
    if not planner.needs_costs(target):
        return planner
    key = cost_key(local)
    if announce is not None and not cache_path(key).exists():
        announce("router: measuring this backend's step time once (cached)...")
    return replace(planner, cost=await cached(backend, key))


def assumed_costs(planner: Planner, backend: Backend) -> Planner:
    """A router without costs, on a backend it cannot time cheaply: where the backend batches
    concurrent requests (vLLM, SGLang, llama.cpp with slots), the batching-server cost model;
    else the router as it is (it decomposes list-like requests)."""
    if isinstance(planner, RouterPlanner) and planner.cost is None:
        if backend.capabilities.batched and not isinstance(backend, LocalBackend):
            return replace(planner, cost=BATCHING_SERVER)
    return planner


def cost_key(local: LocalConfig) -> str:
    """What identifies the local engine's step costs: model, packing mode, device kind and
    weight format (fp32 keys carry none, as before formats existed)."""
    device = local.device.split(":")[0]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = weights_for(local, device)
    fmt = "" if weights == "fp32" else f"-{weights}"
    return f"{local.model or 'embedded-smollm2'}-{local.mode}-{device}{fmt}"


@asynccontextmanager
async def stream(target: str | Plan, **kwargs: object) -> AsyncIterator[ObjectReceiveStream[Event]]:
    """`async with stream(q) as events: async for ev in events: ...` — the last event is
    RunFinished; a failed run raises its error from the `async with` block after the events
    end. Leaving the block early (a `break`) cancels the run; nothing is raised for that."""
    send, recv = anyio.create_memory_object_stream[Event](math.inf)
    failed: list[BaseException] = []

    async def produce() -> None:
        async with send:
            try:
                await arun(target, on_event=partial(_offer, send), **kwargs)  # type: ignore[arg-type]
            except Exception as exc:  # raised from the `async with`, not from the task group
                failed.append(real_error(exc))

    own: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        try:
            with recv:
                yield recv
        except Exception as exc:  # the caller's own error: out as itself once the run stops
            own = exc
        finally:
            tg.cancel_scope.cancel()  # a no-op when the run is over; else the caller left early
    if own is not None:
        raise own
    if failed:
        raise failed[0]


async def _offer(send: MemoryObjectSendStream[Event], ev: Event) -> None:
    """Hand an event to the caller; one who has left (the run is being cancelled) gets none."""
    with suppress(anyio.BrokenResourceError):
        await send.send(ev)


def run(target: str | Plan, **kwargs: object) -> RunResult:
    """Synchronous wrapper over `arun` (same arguments)."""
    return anyio.run(partial(arun, target, **kwargs))  # type: ignore[arg-type]
