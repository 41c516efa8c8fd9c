"""parafill: plan, then fill in parallel."""

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
from parafill.planners.skeleton import SkeletonPlanner, parse_points
from parafill.planners.static import DirectPlanner

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
