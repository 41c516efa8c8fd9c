"""The plan file boundary: pydantic models of Plan and Node (and a node's constraint), to and
from JSON. Validation of the plan itself (ids, dependencies, kinds) is plan.py's; this module
only converts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field

from parafill.orchestrator.plan import Node, Plan

if TYPE_CHECKING:  # parafill.constraints imports torch: loaded only when a plan file has one
    from parafill.constraints.spec import Constraint


class ConstraintModel(BaseModel):
    """`{"kind": "regex", "source": "..."}`; a JSON schema's source may be the schema itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    source: str | dict[str, Any]
    stop: str | None = None
    unit: str = "words"
    whitespace: str = "compact"

    def to_constraint(self) -> Constraint:
        from parafill.constraints.spec import Constraint

        src = self.source
        text = (
            src if isinstance(src, str) else json.dumps(src, sort_keys=True, separators=(",", ":"))
        )
        # the kind and options are checked with the plan (a PlanError naming the node)
        return Constraint(cast(Any, self.kind), text, self.stop, cast(Any, self.unit),
                          cast(Any, self.whitespace))  # fmt: skip


class NodeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    prompt: str = ""  # compute nodes have none
    deps: list[str] = Field(default_factory=list)
    max_tokens: int = 256
    filler: str | None = None
    system: str | None = None
    expand: str | None = None
    prefix: str = ""
    temperature: float = 0.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    kind: str = "generate"
    fn: str | None = None
    args: dict[str, str] = Field(default_factory=dict)
    constraint: ConstraintModel | None = None
    stop_repeated_line: bool = False


class PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    nodes: list[NodeModel]
    answer: list[str] = Field(default_factory=list)
    separator: str = "\n\n"
    notes: list[str] = Field(default_factory=list)

    @staticmethod
    def from_plan(plan: Plan) -> PlanModel:
        nodes = [
            NodeModel.model_validate(
                {
                    **_fields(n),
                    "deps": list(n.deps),
                    "stop": list(n.stop),
                    "args": dict(n.args),
                    "constraint": _constraint_fields(n.constraint),
                }
            )
            for n in plan.nodes
        ]
        return PlanModel(
            nodes=nodes, answer=list(plan.answer), separator=plan.separator, notes=list(plan.notes)
        )

    def to_plan(self) -> Plan:
        nodes = tuple(
            Node(
                **{
                    **n.model_dump(),
                    "deps": tuple(n.deps),
                    "stop": tuple(n.stop),
                    "args": tuple(n.args.items()),
                    "constraint": n.constraint and n.constraint.to_constraint(),
                }
            )
            for n in self.nodes
        )
        return Plan(nodes, tuple(self.answer), self.separator, tuple(self.notes))


def _fields(n: Node) -> dict[str, object]:
    return {k: getattr(n, k) for k in Node.__dataclass_fields__}


def _constraint_fields(c: Constraint | None) -> dict[str, object] | None:
    if c is None:
        return None
    return {"kind": c.kind, "source": c.source, "stop": c.stop, "unit": c.unit,
            "whitespace": c.whitespace}  # fmt: skip
