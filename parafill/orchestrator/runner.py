"""The runner: the one module that owns tasks. Drives a Scheduler with an anyio task group.

Up to `max_concurrency` ready nodes run at once, the first in plan order (a CapacityLimiter
guards the same bound). What finished is applied once per tick in plan order, not arrival
order, so a run's plan, notes and answer reproduce. Per-node timeouts and retries; a node that
finally fails cancels the rest and raises `RunFailed`, whose result holds the finished nodes'
results and names the cancelled ones. Events go to an optional callback. Compute nodes call
their function (`computes`, over the built-ins) and make no backend request.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field, replace

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from parafill.backends.base import (
    Backend,
    BackendError,
    Chunk,
    FillStats,
    Message,
    Metered,
    Request,
    Sampling,
    applies,
)
from parafill.fillers import FILLERS
from parafill.orchestrator.checks import Fields
from parafill.orchestrator.compute import BUILTINS
from parafill.orchestrator.events import (
    Event,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    NodeText,
    PlanGrew,
    RunFinished,
)
from parafill.orchestrator.plan import (
    Compute,
    Expander,
    Node,
    NodeResult,
    Plan,
    RunResult,
    check_computes,
    check_hooks,
    render_prompt,
)
from parafill.orchestrator.repeats import LineGuard
from parafill.orchestrator.scheduler import Scheduler, Status

__all__ = ["Compute", "Emit", "Expander", "RunConfig", "RunFailed", "run_plan"]

Emit = Callable[[Event], Awaitable[None]]
# once per run, after the planners' notes: the plan's output constraints were dropped
UNCONSTRAINED = (
    "output constraints ignored: this backend cannot constrain decoding (or not with every "
    "kind of constraint these nodes had); their outputs were parsed as free text"
)


@dataclass(frozen=True)
class RunConfig:
    max_concurrency: int = 64
    node_timeout: float | None = None  # seconds per attempt
    retries: int = 0  # extra attempts after a retryable failure
    retry_delay: float = 0.5  # first backoff; doubles per attempt
    seed: int | None = None
    filler: str | None = None  # every node decodes with this filler (else each node's own)
    # generation guards for every node (see Decoding): HF's repetition penalty (1: off) and
    # the loop guard, which stops a node whose last N output tokens already occurred in its
    # output (the local engine; a remote server gets the penalty but not the guard)
    repetition_penalty: float = 1.0
    stop_on_repeat: int = 32

    def __post_init__(self) -> None:
        check = Fields("RunConfig")
        check.integer("max_concurrency", self.max_concurrency, 1)
        if self.node_timeout is not None:  # None: no deadline
            check.number("node_timeout", self.node_timeout, 0.0, open_=True)
        check.integer("retries", self.retries, 0)  # -1 would make no attempt at all
        check.number("retry_delay", self.retry_delay, 0.0)
        check.seed("seed", self.seed)
        check.choice("filler", self.filler, FILLERS)
        check.number("repetition_penalty", self.repetition_penalty, 0.0, open_=True)
        check.integer("stop_on_repeat", self.stop_on_repeat, 0)


class RunFailed(RuntimeError):
    """A node failed for good. `result` holds every node that did finish."""

    def __init__(self, node: str, error: str, result: RunResult) -> None:
        super().__init__(f"node {node!r} failed: {error}")
        self.node = node
        self.error = error
        self.result = result


@dataclass(frozen=True)
class _Failure:
    node: str
    error: str


_Outcome = NodeResult | _Failure


async def _ignore(_: Event) -> None:
    return None


@dataclass(frozen=True)
class _Hooks:
    """The named functions a plan's nodes may use: expand hooks and compute functions."""

    expanders: Mapping[str, Expander]
    computes: Mapping[str, Compute]
    # nodes whose constraint the backend could not apply (their hooks see them without it)
    dropped: set[str] = field(default_factory=set)


@dataclass
class _Ctx:
    backend: Backend
    config: RunConfig
    emit: Emit
    limiter: anyio.CapacityLimiter
    done: MemoryObjectSendStream[_Outcome]
    unconstrained: bool = False  # a node's constraint was dropped (the backend has none)


async def run_plan(
    plan: Plan,
    backend: Backend,
    config: RunConfig | None = None,
    *,
    expanders: Mapping[str, Expander] | None = None,
    computes: Mapping[str, Compute] | None = None,
    emit: Emit | None = None,
) -> RunResult:
    """Run `plan` on `backend` until every reachable node is done (or one fails). A node
    whose `expand` names none of `expanders`, or a compute node whose `fn` names none of the
    built-in compute functions and `computes`, is a PlanError before any node runs."""
    cfg = config or RunConfig()
    sched = Scheduler(plan)
    hooks = _Hooks(expanders or {}, {**BUILTINS, **(computes or {})})
    check_hooks(plan.nodes, hooks.expanders)
    check_computes(plan.nodes, hooks.computes)
    emit = emit or _ignore
    t0, fp0 = time.perf_counter(), _passes(backend)
    send, recv = anyio.create_memory_object_stream[_Outcome](math.inf)
    # the backend says how many requests it takes at once; more would only queue inside it
    limit = max(1, min(cfg.max_concurrency, backend.capabilities.max_concurrency))
    ctx = _Ctx(backend, cfg, emit, anyio.CapacityLimiter(limit), send)
    failure: _Failure | None = None
    async with send, recv, anyio.create_task_group() as tg:
        while failure is None:
            for node in sched.take(limit - sched.active):
                _start(node, sched, hooks, ctx, tg)
            if not sched.active:
                break
            arrived = [await recv.receive(), *_arrived(recv)]
            failure = await _apply(arrived, sched, hooks, emit)
        tg.cancel_scope.cancel()
    if failure is not None:
        sched.cancel_unfinished()  # before the result is built, so it lists them
        raise RunFailed(failure.node, failure.error, _result(sched, t0, fp0, ctx))
    result = _result(sched, t0, fp0, ctx)
    await emit(RunFinished(result))
    return result


def _start(node: Node, sched: Scheduler, hooks: _Hooks, ctx: _Ctx, tg: TaskGroup) -> None:
    """Start one taken node: a compute node calls its function, any other streams a request."""
    if node.kind == "compute":
        tg.start_soon(_run_compute, node, sched.inputs(node), hooks.computes[node.fn or ""], ctx)
        return
    request = _request(node, sched.inputs(node), ctx.config)
    if (note := _filler_note(request, ctx.backend, sched.notes)) is not None:
        sched.note(note, node.id)
    if request.constraint is not None and not applies(ctx.backend, request.constraint):
        request = replace(request, constraint=None)  # degrade: the planners parse free text
        ctx.unconstrained = True
        hooks.dropped.add(node.id)
    tg.start_soon(_run_node, node, request, ctx)


def _arrived(recv: MemoryObjectReceiveStream[_Outcome]) -> list[_Outcome]:
    """Everything already waiting in the stream, without blocking."""
    return [recv.receive_nowait() for _ in range(recv.statistics().current_buffer_used)]


async def _apply(
    arrived: list[_Outcome], sched: Scheduler, hooks: _Hooks, emit: Emit
) -> _Failure | None:
    """Apply what arrived in one tick in plan order, not arrival order (with the scheduler's
    order-independent growth placement, a run's plan, notes and answer do not depend on which
    node finished first). Returns the first failure in that order; once there is one, later
    results are still recorded but not expanded."""
    failure: _Failure | None = None
    for outcome in sorted(arrived, key=lambda o: sched.position(_node_id(o))):
        if isinstance(outcome, _Failure):
            sched.fail(outcome.node, outcome.error)
            failure = failure or outcome
            continue
        sched.finish(outcome)
        await emit(NodeFinished(outcome))
        if failure is None and (failure := await _expand(outcome, sched, hooks, emit)):
            sched.fail(failure.node, failure.error)
    return failure


def _node_id(outcome: _Outcome) -> str:
    return outcome.node if isinstance(outcome, _Failure) else outcome.id


async def _expand(
    outcome: NodeResult, sched: Scheduler, hooks: _Hooks, emit: Emit
) -> _Failure | None:
    node = sched.node(outcome.id)
    if node.expand is None:
        return None
    hook = hooks.expanders.get(node.expand)
    if hook is None:
        return _Failure(node.id, f"no expander named {node.expand!r} is registered")
    if node.constraint is not None and node.id in hooks.dropped:
        node = replace(node, constraint=None)  # the hook sees the node as it ran
    try:
        growth = hook(node, outcome.text)
        check_hooks(growth.nodes, hooks.expanders)
        check_computes(growth.nodes, hooks.computes)
        sched.grow(growth, node.id)
    except (ValueError, TypeError) as exc:  # a Node or Growth the hook made badly, too
        return _Failure(node.id, f"growth from node output is invalid: {exc}")
    labels = tuple(n.prefix or n.id for n in growth.nodes)
    await emit(PlanGrew(node.id, tuple(n.id for n in growth.nodes), growth.note, labels))
    return None


def _request(node: Node, outputs: Mapping[str, str], cfg: RunConfig) -> Request:
    user = render_prompt(node, outputs)
    msgs = ((Message("system", node.system),) if node.system else ()) + (Message("user", user),)
    if node.prefix:  # the answer starts with the prefix; the model continues it
        msgs += (Message("assistant", node.prefix),)
    seed = node.seed if node.seed is not None else cfg.seed
    sampling = Sampling(
        node.max_tokens,
        node.temperature,
        seed=seed,
        stop=node.stop,
        repetition_penalty=cfg.repetition_penalty,
        stop_on_repeat=cfg.stop_on_repeat,
    )
    return Request(msgs, sampling, filler=cfg.filler or node.filler, constraint=node.constraint)


def _filler_note(request: Request, backend: Backend, notes: list[str]) -> str | None:
    """Once per run and filler: a backend that does not speculate ignores the filler."""
    name = request.filler
    if name in (None, "autoregressive") or backend.capabilities.speculates:
        return None
    note = f"filler {name!r} ignored: this backend decodes one token per step"
    return None if note in notes else note


async def _run_node(node: Node, request: Request, ctx: _Ctx) -> None:
    attempts = ctx.config.retries + 1
    async with ctx.limiter:
        for attempt in range(1, attempts + 1):
            t0 = time.perf_counter()
            await ctx.emit(NodeStarted(node.id, attempt))
            try:
                with _deadline(ctx.config.node_timeout):
                    text, tokens, finish, logprob, fill = await _stream(node, request, ctx)
            except Exception as exc:  # classified below; never swallowed
                error, retryable = _describe(exc, ctx.config.node_timeout)
                again = retryable and attempt < attempts
                await ctx.emit(NodeFailed(node.id, error, attempt, again))
                if not again:
                    ctx.done.send_nowait(_Failure(node.id, error))  # unbounded: never blocks
                    return
                await anyio.sleep(ctx.config.retry_delay * 2 ** (attempt - 1))
                continue
            secs = time.perf_counter() - t0
            result = NodeResult(node.id, text, tokens, secs, attempt, finish, logprob, fill)
            ctx.done.send_nowait(result)
            return


async def _run_compute(node: Node, inputs: Mapping[str, str], fn: Compute, ctx: _Ctx) -> None:
    """A compute node: one call of its pure function, no backend request, no retries (the same
    inputs give the same error). Its result has 0 tokens and 0 forward passes."""
    async with ctx.limiter:
        t0 = time.perf_counter()
        await ctx.emit(NodeStarted(node.id, 1))
        try:
            text = fn(node, inputs)
            if not isinstance(text, str):
                raise TypeError(f"it returned {type(text).__name__}, not str")
        except Exception as exc:  # the node fails with the function's error; never swallowed
            error = f"compute function {node.fn!r} failed: {type(exc).__name__}: {exc}"
            await ctx.emit(NodeFailed(node.id, error, 1, False))
            ctx.done.send_nowait(_Failure(node.id, error))
            return
        if text:
            await ctx.emit(NodeText(node.id, text))
        secs = time.perf_counter() - t0
        ctx.done.send_nowait(NodeResult(node.id, text, 0, secs, finish_reason="stop"))


def _deadline(timeout: float | None) -> AbstractContextManager[object]:
    # no timeout: no cancel scope at all (a scope per node is a measurable cost at 100k nodes)
    return nullcontext() if timeout is None else anyio.fail_after(timeout)


async def _stream(
    node: Node, request: Request, ctx: _Ctx
) -> tuple[str, int, str | None, float | None, FillStats | None]:
    parts: list[str] = []
    tokens, finish, fill = 0, None, None
    logprob: float | None = None  # stays None unless the backend reports log-probabilities
    guard = LineGuard() if node.stop_repeated_line else None
    async with _closing(ctx.backend.stream(request)) as chunks:  # a stop cancels the request
        async for chunk in chunks:
            parts.append(chunk.text)
            tokens += chunk.tokens
            finish = chunk.finish_reason or finish
            fill = chunk.fill or fill
            if chunk.logprob is not None:
                logprob = (logprob or 0.0) + chunk.logprob
            shown, stop = guard.feed(chunk.text) if guard else (chunk.text, False)
            if shown:
                await ctx.emit(NodeText(node.id, shown))
            if stop:
                finish = "stop"
                break
    if guard is None:
        return "".join(parts), tokens, finish, logprob, fill
    if last := guard.rest():
        await ctx.emit(NodeText(node.id, last))
    return guard.text, tokens, finish, logprob, fill


@asynccontextmanager
async def _closing(chunks: AsyncIterator[Chunk]) -> AsyncIterator[AsyncIterator[Chunk]]:
    """The stream, closed on leaving (a backend's generator cancels its request when closed)."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def _describe(exc: Exception, timeout: float | None) -> tuple[str, bool]:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s", True
    if isinstance(exc, BackendError):
        return str(exc), exc.retryable
    return f"{type(exc).__name__}: {exc}", False


def _passes(backend: Backend) -> int | None:
    return backend.forward_passes if isinstance(backend, Metered) else None


def _result(sched: Scheduler, t0: float, fp0: int | None, ctx: _Ctx) -> RunResult:
    fp1, plan = _passes(ctx.backend), sched.plan
    return RunResult(
        answer=sched.answer(),
        results={n.id: sched.results[n.id] for n in plan.nodes if n.id in sched.results},
        plan=plan,
        seconds=time.perf_counter() - t0,
        forward_passes=None if fp0 is None or fp1 is None else fp1 - fp0,
        notes=(*sched.notes, *((UNCONSTRAINED,) if ctx.unconstrained else ())),
        failed={i: sched.errors[i] for i in sorted(sched.errors, key=sched.position)},
        cancelled=tuple(sched.in_order(Status.CANCELLED)),
    )
