"""Field checks for the orchestrator's values, run once where a value is made (`__post_init__`).

A wrong type is a TypeError, a wrong value a ValueError (or the caller's subclass, PlanError
for nodes); each message names the field and the value. Checks across fields and nodes
(dependencies, cycles, kinds) are plan.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import TypeVar

_T = TypeVar("_T")

_SEQUENCES = (tuple, list)  # what a sequence field takes (a bare str would be split into chars)


class Fields:
    """The checks for one value: errors read `{owner}.{field} must be ..., got {value!r}`.
    A plain class, not a dataclass: one is made per Node, so it must cost next to nothing."""

    __slots__ = ("invalid", "owner")

    def __init__(self, owner: str, invalid: Callable[[str], ValueError] = ValueError) -> None:
        self.owner = owner  # "RunConfig", "Node" or "node 'a': Node"
        self.invalid = invalid

    def _type(self, name: str, want: str, value: object) -> TypeError:
        return TypeError(f"{self.owner}.{name} must be {want}, got {value!r}")

    def _value(self, name: str, want: str, value: object) -> ValueError:
        return self.invalid(f"{self.owner}.{name} must be {want}, got {value!r}")

    def integer(self, name: str, value: object, least: int) -> None:
        want = f"an integer >= {least}"
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._type(name, want, value)
        if value < least:
            raise self._value(name, want, value)

    def seed(self, name: str, value: object) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self._type(name, "None or an integer", value)

    def real(self, name: str, value: object, want: str = "a number") -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._type(name, want, value)
        return value

    def number(self, name: str, value: object, least: float, *, open_: bool = False) -> None:
        """A finite real number >= `least` (> `least` where `open_`)."""
        want = f"a finite number {'>' if open_ else '>='} {least:g}"
        x = self.real(name, value, want)
        if not math.isfinite(x) or x < least or (open_ and x == least):
            raise self._value(name, want, value)

    def flag(self, name: str, value: object) -> None:
        if not isinstance(value, bool):
            raise self._type(name, "True or False", value)

    def text(
        self, name: str, value: object, *, optional: bool = False, empty: bool = True,
        blank: bool = True,
    ) -> None:  # fmt: skip
        """A str that UTF-8 can encode (no lone surrogate); "" refused unless `empty`, only
        whitespace unless `blank`."""
        want = "None or a str" if optional else "a str" if empty and blank else "a non-empty str"
        if value is None and optional:
            return
        if not isinstance(value, str):
            raise self._type(name, want, value)
        if (not empty and not value) or (not blank and not value.strip()):
            raise self._value(name, want, value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a tokenizer or server would fail on it, obscurely
            bad = value[exc.start]
            raise self.invalid(
                f"{self.owner}.{name} has a lone surrogate {bad!r} at index {exc.start}, which "
                "UTF-8 cannot encode (a str built from broken UTF-16 or surrogateescape bytes)"
            ) from None

    def items(self, name: str, value: object, kind: type[_T], want: str) -> tuple[_T, ...]:
        """A tuple or list of `kind`s, returned as a tuple."""
        if not isinstance(value, _SEQUENCES):
            hint = f" (one {want}: write ({value!r},))" if isinstance(value, str) else ""
            raise TypeError(f"{self.owner}.{name} must be a tuple or list of {want}, got "
                            f"{value!r}{hint}")  # fmt: skip
        for i, item in enumerate(value):
            if not isinstance(item, kind):  # names built only here: this runs per node
                raise self._type(f"{name}[{i}]", f"a {want}", item)
        return tuple(value)

    def instance(self, name: str, value: object, kind: type, want: str) -> None:
        if not isinstance(value, kind):
            raise self._type(name, want, value)

    def texts(self, name: str, value: object, *, empty: bool = True) -> tuple[str, ...]:
        """A tuple or list of strs (each as `text`), returned as a tuple."""
        found = self.items(name, value, str, "str")
        for i, item in enumerate(found):
            if not item.isascii() or not (empty or item):  # else `text` has nothing to find
                self.text(f"{name}[{i}]", item, empty=empty)
        return found

    def pairs(self, name: str, value: object) -> tuple[tuple[str, str], ...]:
        """A tuple or list of (str, str) pairs, returned as a tuple of tuples."""
        found: list[tuple[str, str]] = []
        for i, pair in enumerate(self.items(name, value, object, "(str, str) pair")):
            at = f"{name}[{i}]"
            if not isinstance(pair, _SEQUENCES) or len(pair) != 2:
                raise self._type(at, "a (str, str) pair", pair)
            key, val = pair
            if not isinstance(key, str) or not isinstance(val, str):
                raise self._type(at, "a (str, str) pair", pair)
            self.text(at, key)
            self.text(at, val)
            found.append((key, val))
        return tuple(found)

    def choice(self, name: str, value: object, allowed: Collection[str]) -> None:
        """None or one of `allowed`."""
        want = f"None or one of {', '.join(allowed)}"
        self.text(name, value, optional=True)
        if value is not None and value not in allowed:
            raise self._value(name, want, value)
