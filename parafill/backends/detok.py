"""Incremental detokenizing: token ids in, text increments out, stop strings held back.

Each `add` decodes a short window of ids (the tokens since the last complete text and a few
before them for context), not the whole output: decoding every id again per step grew with
the output's length (SmolLM2's tokenizer: 38 us at 128 tokens, 550 us at 2,048, on the
event loop's thread once per token of every stream). The window's text minus its context's
text is the new text, as vLLM and TGI detokenize; the context keeps tokenizers that drop a
leading space at the start of a decode (SentencePiece) and multi-byte characters split over
tokens right. Stop strings are looked for only where new text could complete one.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_BROKEN = "\ufffd"  # what decoding gives for an incomplete UTF-8 sequence


class Detokenizer:
    """Turns token ids into text increments; holds back text that may start a stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.hold = max((len(s) - 1 for s in self.stop), default=0)
        self.ids: list[int] = []
        self.text = ""  # all complete text so far
        self.context = 0  # ids[context:done] decode to the text before the window's new part
        self.done = 0  # ids[:done] are in `text`
        self.lead: int | None = None  # leading whitespace of `text` (None: all whitespace yet)
        self.searched = 0  # stop strings start at or after this in `text` if anywhere
        self.sent = 0

    def add(self, ids: Sequence[int], final: bool = False) -> tuple[str, bool]:
        """Returns (new text, stopped)."""
        self.ids += ids
        before = self._decode(self.ids[self.context : self.done])
        after = self._decode(self.ids[self.context :])
        if not after.startswith(before):  # the window changed its context's text (a
            # tokenizer's clean-up of spaces, say): the whole output decoded, once
            whole = self._decode(self.ids)
            if final or not whole.endswith(_BROKEN):
                self.text, self.context, self.done = whole, len(self.ids) - 1, len(self.ids)
        elif len(after) > len(before) and (final or not after.endswith(_BROKEN)):
            self.text += after[len(before) :]
            self.context, self.done = self.done, len(self.ids)
        if self.lead is None and self.text.strip():
            self.lead = len(self.text) - len(self.text.lstrip())
        if self.lead is not None:  # stops never match in leading whitespace
            start = max(self.lead, self.searched)
            cuts = [c for c in (self.text.find(s, start) for s in self.stop) if c >= 0]
            if cuts:
                return self._emit(self.text[: min(cuts)]), True
            self.searched = max(start, len(self.text) - self.hold)
        if final or not self.hold:
            return self._emit(self.text), False
        return self._emit(self.text[: len(self.text) - self.hold]), False

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)) if ids else ""

    def _emit(self, text: str) -> str:
        new = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return new
