"""A list that starts over: the guard a node asks for with `Node.stop_repeated_line`.

Small models writing an outline often repeat a point and then loop on it ("3. A hero\n4. A
hero\n5. A hero ..."); the points are deduplicated when parsed, so everything from the first
repeated line on is decoded for nothing. The guard holds the node's text back line by line and
says where to cut: at the start of the first complete line that equals an earlier one, compared
without its numbering or bullet, case and surrounding space. The runner then stops the stream
(the backend cancels the request) and keeps the text before that line.
"""

from __future__ import annotations

import re

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])?\s*")


def item_key(line: str) -> str:
    """A line as a list item: without its numbering or bullet, case or surrounding space."""
    return _ITEM.sub("", line, count=1).strip().lower()


class LineGuard:
    """Feed it a node's text as it streams; `feed` returns the text that may be shown now
    (complete lines) and whether the node should stop (a line repeated an earlier one)."""

    def __init__(self) -> None:
        self.kept: list[str] = []  # complete lines kept, newline included
        self.partial = ""  # the line being written
        self.seen: set[str] = set()
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        self.partial += text
        shown: list[str] = []
        while (end := self.partial.find("\n")) >= 0:
            line, self.partial = self.partial[: end + 1], self.partial[end + 1 :]
            key = item_key(line)
            if key and key in self.seen:
                self.stopped, self.partial = True, ""
                break
            if key:
                self.seen.add(key)
            shown.append(line)
        self.kept += shown
        return "".join(shown), self.stopped

    def rest(self) -> str:
        """At the end of the stream: the last line, unfinished (nothing if the guard stopped)."""
        last, self.partial = self.partial, ""
        self.kept.append(last)
        return last

    @property
    def text(self) -> str:
        return "".join(self.kept)
