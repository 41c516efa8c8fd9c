"""The public Python API: `arun` (async), `stream` (async events), and ONE sync wrapper `run`.

`target` is a question (planned by `planner`, skeleton-of-thought by default) or a hand-built
`Plan`. Without a `backend`, the local engine on `model` (default: the embedded SmolLM2) is
opened for the call and closed after it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import anyio
from anyio.abc import ObjectReceiveStream

from parafill.backends.base import Backend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.orchestrator.events import Event
from parafill.orchestrator.plan import Plan, RunResult
from parafill.orchestrator.runner import Emit, Expander, RunConfig, run_plan
from parafill.planners.base import Planner
from parafill.planners.skeleton import SkeletonPlanner


async def arun(
    target: str | Plan,
    *,
    backend: Backend | None = None,
    model: str | None = None,
    planner: Planner | None = None,
    expanders: Mapping[str, Expander] | None = None,
    config: RunConfig | None = None,
    on_event: Emit | None = None,
) -> RunResult:
    """Plan (if `target` is a question) and run it; returns the assembled result."""
    if isinstance(target, Plan):
        plan, hooks = target, dict(expanders or {})
    else:
        chosen = planner or SkeletonPlanner()
        plan, hooks = chosen.plan(target), {**chosen.expanders, **(expanders or {})}
    async with AsyncExitStack() as stack:
        if backend is None:
            backend = await stack.enter_async_context(LocalBackend.open(LocalConfig(model=model)))
        return await run_plan(plan, backend, config, expanders=hooks, emit=on_event)


@asynccontextmanager
async def stream(
    target: str | Plan, **kwargs: object
) -> AsyncIterator[ObjectReceiveStream[Event]]:
    """`async with stream(q) as events: async for ev in events: ...` — the last event is
    RunFinished; a failed run raises from the `async with` block after the events end."""
    send, recv = anyio.create_memory_object_stream[Event](math.inf)

    async def produce() -> None:
        async with send:
            await arun(target, on_event=send.send, **kwargs)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg, recv:
        tg.start_soon(produce)
        yield recv


def run(target: str | Plan, **kwargs: object) -> RunResult:
    """Synchronous wrapper over `arun` (same arguments)."""
    return anyio.run(partial(arun, target, **kwargs))  # type: ignore[arg-type]
