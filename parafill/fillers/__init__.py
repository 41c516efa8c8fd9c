"""Fillers by name: `autoregressive` (the reference: no drafts), `ngram`, `jacobi`, and the
model drafters `self` (the target with layers skipped) and `draft` (a second model).

`make(name, sources)` gives a fresh proposer for one sequence (None for the reference);
`check(name)` refuses unknown names with the known ones listed.
"""

from __future__ import annotations

from parafill.fillers.base import Draft, Factory, Outcome, Proposer, Sources
from parafill.fillers.jacobi import Jacobi
from parafill.fillers.model import ModelDrafts, model_drafts, self_drafts
from parafill.fillers.ngram import NGram

FILLERS: dict[str, Factory | None] = {
    "autoregressive": None,
    "ngram": NGram,
    "jacobi": Jacobi,
    "self": self_drafts,
    "draft": model_drafts,
}


class FillerError(ValueError):
    """An unknown filler name."""


def check(name: str) -> str:
    """The name, if it is a known filler; a clear error naming the known ones otherwise."""
    if name not in FILLERS:
        raise FillerError(f"unknown filler {name!r} (known: {', '.join(FILLERS)})")
    return name


def make(name: str, sources: Sources | None = None) -> Proposer | None:
    """A fresh proposer for one sequence; None for `autoregressive` (the reference)."""
    factory = FILLERS[check(name)]
    return None if factory is None else factory(sources or Sources())


__all__ = [
    "FILLERS",
    "Draft",
    "FillerError",
    "ModelDrafts",
    "Outcome",
    "Proposer",
    "Sources",
    "check",
    "make",
]
