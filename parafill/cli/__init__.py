"""The `parafill` command line: run a question (skeleton-of-thought) or a JSON plan, or every
line of a JSONL file (`parafill batch`).

Progress goes to stderr (a live view on a terminal, plain lines when piped); the answer, the
summary and `--json` output go to stdout.
"""

# This docstring is the app's --help text. The package: common.py (the consoles, the values
# options become, error handling), groups.py (`@takes`: a group of options into a command),
# options.py (the engine's and the server's options), planning.py (the planners' options),
# answer.py + view.py (running and showing a plan), and one module per command group, each with
# `register(app)`; they import from those, never from here.

from __future__ import annotations

import sys

import typer

from parafill.cli import batch, ner, plans, run, serve, write

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
for _group in (run, serve, ner, plans, write, batch):  # the order `parafill --help` lists them in
    _group.register(app)


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


__all__ = ["app", "main"]
