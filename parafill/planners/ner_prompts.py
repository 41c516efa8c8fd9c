"""PaDeLLM-NER prompts (shared by the planner and the adapter's training script) and parsers
for what the model really writes: counts ("2", "two", junk), mentions, and AR entity lists.

Prompts put the text first and the label last, so every label's prompt shares the text
prefix and a prefix-sharing engine prefills it once. Parsers never raise; they return notes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from parafill.planners.ner_data import Entity

SYSTEM = "You find named entities in tweets."
_HEAD = "Tweet: {text}\nEntity type: {label}\nHow many {label} entities?"
COUNT_PROMPT = _HEAD
MENTION_PROMPT = _HEAD + " {n}\nWrite {label} entity {k} of {n}."
AR_PROMPT = (
    "Tweet: {text}\nEntity types: {labels}\n"
    "List every entity as 'type: entity', one per line. Write 'none' if there are none."
)
NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}
# digits may run into what follows ("0user": the model ran past its end of turn)
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}|(?:" + "|".join(NUMBER_WORDS) + r")\b)", re.I)
_NONE = re.compile(r"^\s*(none|no entities|n/?a|nothing|-)\s*\.?\s*$", re.I)


def count_prompt(text: str, label: str) -> str:
    return COUNT_PROMPT.format(text=text, label=label)


def mention_prompt(text: str, label: str, k: int, n: int) -> str:
    return MENTION_PROMPT.format(text=text, label=label, k=k, n=n)


def ar_prompt(text: str, labels: Sequence[str]) -> str:
    return AR_PROMPT.format(text=text, labels=", ".join(labels))


def ar_answer(entities: Sequence[Entity]) -> str:
    """The AR target: 'label: mention' lines in order of appearance, or 'none'."""
    return "\n".join(f"{e.label}: {e.text}" for e in entities) or "none"


def parse_count(output: str, label: str) -> tuple[int, str | None]:
    """The first number (digits or a word) in the output; anything else counts 0, noted."""
    if _NONE.match(output):
        return 0, None
    m = _NUMBER.search(output)
    if m is None:
        return 0, f"count for {label!r} unparseable ({output.strip()[:40]!r}); taken as 0"
    word = m.group(1).lower()
    return (int(word) if word.isdigit() else NUMBER_WORDS[word]), None


def locate(mention: str, text: str) -> str | None:
    """The mention as it occurs in the text (exact, else case-insensitive), or None."""
    if not mention:
        return None
    if mention in text:
        return mention
    at = text.lower().find(mention.lower())
    return text[at : at + len(mention)] if at >= 0 else None


def parse_mention(output: str, text: str, where: str) -> tuple[str | None, str | None]:
    """One mention from a mention node's output; one not found in the text is dropped."""
    raw = output.strip().splitlines()[0].strip() if output.strip() else ""
    mention = raw.strip(" \"'`*.,;:")
    if not mention or _NONE.match(mention):
        return None, f"{where}: empty mention dropped"
    found = locate(mention, text) or locate(raw, text)
    if found is None:
        return None, f"{where}: {mention[:40]!r} is not in the text; dropped"
    return found, None


def parse_ar(output: str, text: str, labels: Sequence[str]) -> tuple[list[Entity], list[str]]:
    """'label: mention' lines; unknown labels and mentions not in the text are dropped."""
    entities: list[Entity] = []
    notes: list[str] = []
    for line in output.splitlines():
        line = line.strip().lstrip("-*\u2022 ").strip()
        if not line or _NONE.match(line):
            continue
        label, sep, rest = line.partition(":")
        label = label.strip().lower()
        if not sep or label not in labels:
            notes.append(f"ar: line {line[:40]!r} has no known 'type:'; dropped")
            continue
        mention, note = parse_mention(rest, text, f"ar {label}")
        if mention is None:
            notes.append(note or "")
        elif (e := Entity(label, mention)) not in entities:
            entities.append(e)
    return entities, notes
