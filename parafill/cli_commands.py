"""Registry of the subcommands that live in their own modules (serve, ner, write, ...).

Each module exposes `register(app)`; add one line to `register_all` per module.
"""

from __future__ import annotations

import typer

from parafill import cli_ner, cli_plans, cli_serve, cli_write


def register_all(app: typer.Typer) -> None:
    """Attach every out-of-module subcommand to the `parafill` app."""
    _ = app  # modules add one line each below
    cli_serve.register(app)
    cli_ner.register(app)
    cli_plans.register(app)
    cli_write.register(app)
