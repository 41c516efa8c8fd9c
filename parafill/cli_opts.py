"""Options shared by the commands that open the local engine (`--model`, `--mode`,
`--filler`), checked before anything loads. No command lives here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from parafill.backends.local import LocalConfig
from parafill.fillers import check as check_filler

err = Console(stderr=True, highlight=False, soft_wrap=True)

FillerOpt = Annotated[
    str | None,
    typer.Option(
        "--filler",
        help="How every node decodes: autoregressive | ngram | jacobi "
        "(default: each node's own, chosen by the planner).",
    ),
]


@dataclass(frozen=True)
class EngineOpts:
    """What the local backend is opened with, from the command line."""

    model: str | None = None
    mode: str = "rows"
    filler: str | None = None  # overrides every node's filler

    def local(self) -> LocalConfig:
        return LocalConfig(model=self.model, mode=self.mode)  # type: ignore[arg-type]


def engine_opts(model: str | None, mode: str, filler: str | None) -> EngineOpts:
    """The options, or exit 2 with the reason (an unknown filler or mode)."""
    try:
        if filler is not None:
            check_filler(filler)
        if mode not in ("rows", "tree"):
            raise ValueError(f"--mode must be rows or tree, not {mode!r}")
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return EngineOpts(model, mode, filler)
