"""Option groups: options that several commands take, declared once. A group is an ordinary
function whose parameters are typer options (the declarations, with their defaults) and whose
body checks them and returns one value; `@takes(name=group)` puts the group's options into a
command's signature where the command has a parameter `name`, and calls the command with the
group's value there. A group can take groups (the engine's takes the server's). No option is
declared here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def takes(**groups: Callable[..., Any]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """The decorated function, with each group's options in place of its parameter of the
    group's name; each group is called (in signature order) with its options' values."""

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(fn, eval_str=True)
        if missing := sorted(set(groups) - set(own.parameters)):
            raise TypeError(f"{fn.__name__} has no parameter {', '.join(missing)}")
        taken = {name: _options(g) for name, g in groups.items()}
        params = _spliced(fn.__name__, own, taken)
        order = [name for name in own.parameters if name in groups]

        @functools.wraps(fn)
        def command(**values: Any) -> R:
            for name in order:
                values[name] = groups[name](**{p.name: values.pop(p.name) for p in taken[name]})
            return fn(**values)

        # typer reads the signature (every option keyword-only: any order is valid Python)
        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _options(group: Callable[..., Any]) -> tuple[inspect.Parameter, ...]:
    return tuple(inspect.signature(group, eval_str=True).parameters.values())


def _spliced(
    where: str, own: inspect.Signature, taken: dict[str, tuple[inspect.Parameter, ...]]
) -> list[inspect.Parameter]:
    params = [q for p in own.parameters.values() for q in taken.get(p.name, (p,))]
    seen = [p.name for p in params]
    if twice := sorted({n for n in seen if seen.count(n) > 1}):
        raise TypeError(f"{where}: options {', '.join(twice)} come from two places")
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
