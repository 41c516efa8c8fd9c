"""The Planner protocol: a request in, a validated Plan (plus the growth hooks it names) out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from parafill.orchestrator.plan import Expander, Plan


class Planner(Protocol):
    def plan(self, question: str) -> Plan: ...

    @property
    def expanders(self) -> Mapping[str, Expander]: ...
