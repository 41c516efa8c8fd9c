"""parafill: plan, then fill in parallel.

Names are imported on first use, so importing one part (the plan model, the step scheduler)
does not load torch and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parafill.api import arun, run, stream
    from parafill.backends.base import Backend, Capabilities, Chunk, Message, Request, Sampling
    from parafill.backends.local import LocalBackend, LocalConfig
    from parafill.orchestrator.events import (
        Event,
        NodeFailed,
        NodeFinished,
        NodeStarted,
        NodeText,
        PlanGrew,
        RunFinished,
    )
    from parafill.orchestrator.plan import Growth, Node, NodeResult, Plan, PlanError, RunResult
    from parafill.orchestrator.runner import RunConfig, RunFailed
    from parafill.planners.router import RouterPlanner
    from parafill.planners.skeleton import SkeletonPlanner, parse_points
    from parafill.planners.static import DirectPlanner

_WHERE = {
    "arun": "parafill.api",
    "run": "parafill.api",
    "stream": "parafill.api",
    "Backend": "parafill.backends.base",
    "Capabilities": "parafill.backends.base",
    "Chunk": "parafill.backends.base",
    "Message": "parafill.backends.base",
    "Request": "parafill.backends.base",
    "Sampling": "parafill.backends.base",
    "LocalBackend": "parafill.backends.local",
    "LocalConfig": "parafill.backends.local",
    "Event": "parafill.orchestrator.events",
    "NodeFailed": "parafill.orchestrator.events",
    "NodeFinished": "parafill.orchestrator.events",
    "NodeStarted": "parafill.orchestrator.events",
    "NodeText": "parafill.orchestrator.events",
    "PlanGrew": "parafill.orchestrator.events",
    "RunFinished": "parafill.orchestrator.events",
    "Growth": "parafill.orchestrator.plan",
    "Node": "parafill.orchestrator.plan",
    "NodeResult": "parafill.orchestrator.plan",
    "Plan": "parafill.orchestrator.plan",
    "PlanError": "parafill.orchestrator.plan",
    "RunResult": "parafill.orchestrator.plan",
    "RunConfig": "parafill.orchestrator.runner",
    "RunFailed": "parafill.orchestrator.runner",
    "RouterPlanner": "parafill.planners.router",
    "SkeletonPlanner": "parafill.planners.skeleton",
    "parse_points": "parafill.planners.skeleton",
    "DirectPlanner": "parafill.planners.static",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'parafill' has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)


__all__ = [
    "Backend",
    "Capabilities",
    "Chunk",
    "DirectPlanner",
    "Event",
    "Growth",
    "LocalBackend",
    "LocalConfig",
    "Message",
    "Node",
    "NodeFailed",
    "NodeFinished",
    "NodeResult",
    "NodeStarted",
    "NodeText",
    "Plan",
    "PlanError",
    "PlanGrew",
    "Request",
    "RouterPlanner",
    "RunConfig",
    "RunFailed",
    "RunFinished",
    "RunResult",
    "Sampling",
    "SkeletonPlanner",
    "arun",
    "parse_points",
    "run",
    "stream",
]
