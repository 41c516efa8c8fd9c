"""Incremental detokenizing: the increments join to the whole decode, stop strings cut where
the whole text first holds one, and each step decodes a short window, not the whole output."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from parafill.backends.detok import Detokenizer
from parafill.backends.engine.weights import resolve

TEXTS = [
    "The quick brown fox jumps over the lazy dog.  Twice!\n\n- one\n- two",
    "def f(x):\n    return {'a': [1, 2, 3]}  # héllo wörld",
    "Emoji 🎉🚀 and CJK 你好世界, then café, naïve, Ωmega — done.",
    "   leading spaces, then STOP here and STOP again",
]


@pytest.fixture(scope="module")
def smol() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve(None))


@pytest.fixture(scope="module")
def sentencepiece_like() -> PreTrainedTokenizerBase:
    """A Metaspace BPE (SentencePiece's scheme: a word's space is part of its first token and
    dropped at the start of a decode), trained here on the test texts."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"])
    tok.train_from_iterator(TEXTS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def _feed(
    tok: PreTrainedTokenizerBase, ids: Sequence[int], stop: Sequence[str], seed: int
) -> tuple[list[str], bool]:
    detok, rng, out, at = Detokenizer(tok, stop), random.Random(seed), [], 0
    while at < len(ids):
        n = rng.choice([1, 1, 1, 2, 3])
        text, stopped = detok.add(ids[at : at + n], final=at + n >= len(ids))
        out.append(text)
        at += n
        if stopped:
            return out, True
    return out, False


def _whole_stop(text: str, stop: Sequence[str]) -> str | None:
    lead = len(text) - len(text.lstrip())
    cuts = [c for c in (text.find(s, lead) for s in stop) if c >= 0]
    return text[: min(cuts)] if cuts else None


@pytest.mark.parametrize("which", ["smol", "sentencepiece_like"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_increments_join_to_the_whole_decode(
    which: str, seed: int, request: pytest.FixtureRequest
) -> None:
    tok = request.getfixturevalue(which)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        parts, stopped = _feed(tok, ids, [], seed)
        assert not stopped
        assert "".join(parts) == tok.decode(ids, skip_special_tokens=True)
        # a character split over tokens is never sent half
        assert not any("\ufffd" in p for p in parts)


@pytest.mark.parametrize("stop", [["STOP"], ["again", "STOP"], ["!\n\n"], ["🚀"], ["ld"]])
@pytest.mark.parametrize("seed", [0, 3])
def test_stop_strings_cut_where_the_whole_text_first_holds_one(
    smol: PreTrainedTokenizerBase, stop: list[str], seed: int
) -> None:
    for text in TEXTS:
        ids = smol.encode(text, add_special_tokens=False)
        whole = smol.decode(ids, skip_special_tokens=True)
        parts, stopped = _feed(smol, ids, stop, seed)
        want = _whole_stop(whole, stop)
        assert stopped == (want is not None)
        assert "".join(parts) == (whole if want is None else want)
        # text that could begin a stop string is held back: no prefix of a stop was sent
        # and then taken back (the joined parts are exactly the cut text above)


def test_a_stop_string_in_leading_whitespace_does_not_match(
    smol: PreTrainedTokenizerBase,
) -> None:
    ids = smol.encode("\n\nAnswer: yes", add_special_tokens=False)
    parts, stopped = _feed(smol, ids, ["\n"], 0)
    assert not stopped and "".join(parts) == "\n\nAnswer: yes"


def test_each_step_decodes_a_short_window(smol: PreTrainedTokenizerBase) -> None:
    """2,000 tokens one at a time: every decode reads a few ids (the whole output each step
    made detokenizing quadratic in the output's length)."""
    seen: list[int] = []

    class Spy:
        def decode(self, ids: list[int], **kw: object) -> str:
            seen.append(len(ids))
            return str(smol.decode(ids, **kw))  # type: ignore[arg-type]

    ids = smol.encode(" ".join(TEXTS) * 40, add_special_tokens=False)[:2000]
    detok = Detokenizer(Spy(), ["<END>"])  # type: ignore[arg-type]
    parts = [detok.add([i], final=n == len(ids) - 1)[0] for n, i in enumerate(ids)]
    assert "".join(parts) == smol.decode(ids, skip_special_tokens=True)
    assert max(seen) <= 8
