"""NER values and the WNUT-16 CoNLL reader, with the one fixed train / held-out split.

Entities are (label, surface text) pairs; a tweet's text is its tokens joined by single
spaces, so every gold mention occurs verbatim in it. Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WNUT_LABELS = (
    "person",
    "geo-loc",
    "company",
    "facility",
    "product",
    "musicartist",
    "movie",
    "sportsteam",
    "tvshow",
    "other",
)
# The fixed split of wnut16_dev.conll (1,795 tweets): the adapter trains on the first 1,295
# tweets only; the last 500 are held out for evaluation and never trained on.
TRAIN_TWEETS = 1295
HELD_OUT_TWEETS = 500


@dataclass(frozen=True, order=True)
class Entity:
    label: str
    text: str


@dataclass(frozen=True)
class Tweet:
    tokens: tuple[str, ...]
    entities: tuple[Entity, ...]  # in order of appearance (duplicates kept)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def mentions(self, label: str) -> list[str]:
        """This label's mentions in order of appearance, each once."""
        out: list[str] = []
        for e in self.entities:
            if e.label == label and e.text not in out:
                out.append(e.text)
        return out


def read_conll(path: str | Path) -> list[Tweet]:
    """token<TAB>BIO-tag lines, a blank line between tweets. A malformed line raises a
    ValueError naming its line number."""
    tweets: list[Tweet] = []
    rows: list[tuple[str, str]] = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            if rows:
                tweets.append(_tweet(rows))
            rows = []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not (parts[1] == "O" or parts[1][:2] in ("B-", "I-")):
            raise ValueError(f"{path}:{no}: expected 'token<TAB>BIO-tag', got {line!r}")
        rows.append((parts[0], parts[1]))
    if rows:
        tweets.append(_tweet(rows))
    return tweets


def _tweet(rows: list[tuple[str, str]]) -> Tweet:
    entities: list[Entity] = []
    span: list[str] = []
    label = ""
    for token, tag in [*rows, ("", "O")]:  # the sentinel closes a trailing span
        if span and not (tag.startswith("I-") and tag[2:] == label):
            entities.append(Entity(label, " ".join(span)))
            span = []
        if tag.startswith("B-") or (tag.startswith("I-") and not span):
            label, span = tag[2:], [token]  # a stray I- starts a span, as conlleval does
        elif tag.startswith("I-"):
            span.append(token)
    return Tweet(tuple(t for t, _ in rows), tuple(entities))


def split(tweets: list[Tweet]) -> tuple[list[Tweet], list[Tweet]]:
    """(training tweets, held-out tweets) of the WNUT-16 dev file."""
    if len(tweets) < TRAIN_TWEETS + HELD_OUT_TWEETS:
        n = TRAIN_TWEETS + HELD_OUT_TWEETS
        raise ValueError(f"expected at least {n} tweets, got {len(tweets)}")
    return tweets[:TRAIN_TWEETS], tweets[TRAIN_TWEETS : TRAIN_TWEETS + HELD_OUT_TWEETS]


@dataclass(frozen=True)
class Score:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def score(gold: list[set[Entity]], predicted: list[set[Entity]]) -> Score:
    """Entity-level micro scores: an entity counts when its span text and type both match
    exactly, per document (a span repeated in one document counts once)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold documents but {len(predicted)} predictions")
    tp = sum(len(g & p) for g, p in zip(gold, predicted, strict=True))
    return Score(tp, sum(map(len, predicted)) - tp, sum(map(len, gold)) - tp)
