"""Answer a question or run a plan on the local engine (or `--server`) and print the result:
the machinery `run`, `plan`, `dag` and `reason` share (live view on stderr; answer, notes,
summary, `--compare` and `--json` on stdout). Planners and the router's cost model come from
the caller and `parafill.api`; nothing here decides how to plan.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from parafill.backends.base import Backend
from parafill.cli.backend import costed, open_backend, units
from parafill.cli.common import EngineOpts, err, out
from parafill.cli.view import RunView, repetition, summary
from parafill.orchestrator.plan import Plan, RunResult
from parafill.orchestrator.runner import RunConfig, run_plan
from parafill.planners.base import Planner


async def answer(
    target: str | Plan,
    planner: Planner | None,
    direct: Planner | None,
    opts: EngineOpts,
    as_json: bool,
) -> None:
    """Run `target` (planned by `planner` if a question), and with `direct` too if given."""
    run = opts.run_config()
    local = opts.local()
    async with open_backend(local, opts.server) as b:
        if planner is not None:
            planner = await costed(planner, target, b, local, _measuring)
        result = await _one(target, planner, b, run, show=True)
        baseline = await _one(target, direct, b, run, show=False) if direct else None
        reps = [repetition(units(b, r.answer)) for r in (result, baseline) if r]
    if as_json:
        out.print_json(json.dumps(_as_dict(result, baseline)))
        return
    out.print(result.answer, markup=False)
    if result.notes:
        out.print(f"\n[dim]{'; '.join(result.notes)}[/dim]")
    if baseline is None:
        out.print(f"[bold]parafill[/bold]: {summary(result)}")
        return
    # both sides ran with the same loop guard; a looping side would carry the ratio
    out.print(f"[bold]parafill[/bold]: {summary(result)} · 8-gram repetition {reps[0]:.2f}")
    out.print(f"[bold]direct[/bold]:   {summary(baseline)} · 8-gram repetition {reps[1]:.2f}")
    ratio = baseline.seconds / max(result.seconds, 1e-9)
    out.print(f"speed-up vs direct: {ratio:.2f}× (wall time, same model, {_same(opts)})")


def _same(opts: EngineOpts) -> str:
    if opts.server is not None:  # a server has no loop guard; its tokenizer is not here
        return "same server; no loop guard; repetition over words"
    guard = f"loop guard {opts.stop_on_repeat} tokens" if opts.stop_on_repeat else "no loop guard"
    return f"engine and {guard}"


async def _one(
    target: str | Plan, planner: Planner | None, backend: Backend, run: RunConfig, show: bool
) -> RunResult:
    plan = target if isinstance(target, Plan) else planner.plan(target)  # type: ignore[union-attr]
    hooks = dict(planner.expanders) if planner else {}
    view = RunView.create(err) if show else None
    try:
        return await run_plan(plan, backend, run, expanders=hooks, emit=view)
    finally:
        if view:
            view.close()


def _measuring(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def _as_dict(result: RunResult, baseline: RunResult | None) -> dict[str, object]:
    def one(r: RunResult) -> dict[str, object]:
        return {
            "answer": r.answer,
            "seconds": r.seconds,
            "tokens": r.tokens,
            "forward_passes": r.forward_passes,
            "notes": list(r.notes),
            "nodes": {k: asdict(v) for k, v in r.results.items()},
            "plan": json.loads(r.plan.to_json()),
        }

    data = one(result)
    if baseline is not None:
        data["direct"] = one(baseline)
        data["speedup"] = baseline.seconds / max(result.seconds, 1e-9)
    return data
