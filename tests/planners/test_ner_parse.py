"""NER planner logic without a model: parsers on captured real SmolLM2 outputs, plan shape and
growth, fan-out caps, the dedupe rule, the CoNLL reader and the F1 scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parafill.orchestrator.plan import NodeResult, Plan, RunResult, validate
from parafill.orchestrator.scheduler import Scheduler
from parafill.planners import ner_prompts as P
from parafill.planners.ner import NerConfig, NerPlanner, ar_plan, collect
from parafill.planners.ner_data import WNUT_LABELS, Entity, read_conll, score

CASES = json.loads((Path(__file__).parent / "data" / "ner_outputs.json").read_text())["cases"]
TEXT = "Engadget : Sky 3D enlists Stephen Fry to explain the technology"


def _case(source: str, index: int) -> dict[str, object]:
    return next(c for c in CASES if c["source"] == source and c["held_out_index"] == index)


# ---- parsing what the real model wrote -----------------------------------------------------


def test_adapter_counts_and_mentions_parse_to_the_gold_entities() -> None:
    case = _case("adapter", 5)  # "... Stephen Fry ..." → person count 1, mention "Stephen Fry"
    nodes = case["nodes"]
    counts = {k: P.parse_count(v, k) for k, v in nodes.items() if k.startswith("count:")}
    assert counts["count:person"] == (1, None)
    assert all(n == 0 and note is None for k, (n, note) in counts.items() if k != "count:person")
    span, note = P.parse_mention(nodes["mention:person:1"], case["text"], "m")
    assert (span, note) == ("Stephen Fry", None)
    assert ["person", "Stephen Fry"] in case["gold"]


def test_counts_run_past_end_of_turn_still_parse() -> None:
    # adapter-v1 wrote "0user" / "1user": digits glued to the next turn's role name
    nodes = _case("adapter-v1", 3)["nodes"]
    assert P.parse_count(nodes["count:geo-loc"], "geo-loc") == (1, None)
    assert P.parse_count(nodes["count:person"], "person") == (0, None)


def test_plain_model_prose_counts_become_zero_with_a_note() -> None:
    nodes = _case("plain", 4)["nodes"]  # "The tweet mentions a" etc.
    for node_id, output in nodes.items():
        n, note = P.parse_count(output, node_id)
        assert n == 0 and note is not None and "unparseable" in note


@pytest.mark.parametrize(
    ("output", "expected"),
    [("2", 2), ("two", 2), ("Two.", 2), ("There are 3 entities", 3), ("none", 0), (" 4\n", 4)],
)
def test_count_forms(output: str, expected: int) -> None:
    assert P.parse_count(output, "x") == (expected, None)


def test_ar_output_with_a_broken_line_keeps_the_good_one() -> None:
    case = _case("adapter", 12)  # "geo-loc: Champlain\ngeo-loc: Intervals: Champlain campus"
    entities, notes = P.parse_ar(case["ar"], case["text"], WNUT_LABELS)
    assert entities == [Entity("geo-loc", "Champlain")]
    assert len(notes) == 1 and "'Intervals: Champlain campus' is not in the text" in notes[0]


def test_ar_plain_model_rewrite_is_dropped() -> None:
    case = _case("plain", 4)  # the plain model rewrites the tweet instead of listing
    entities, notes = P.parse_ar(case["ar"], case["text"], WNUT_LABELS)
    assert entities == [] and notes


def test_ar_unknown_label_and_case_insensitive_match() -> None:
    out = "person: stephen fry\nanimal: Sky\nnone"
    entities, notes = P.parse_ar(out, TEXT, WNUT_LABELS)
    assert entities == [Entity("person", "Stephen Fry")]  # the text's own casing
    assert notes == ["ar: line 'animal: Sky' has no known 'type:'; dropped"]


def test_mention_not_in_text_is_dropped_with_a_note() -> None:
    assert P.parse_mention("Barack Obama", TEXT, "mention:person:1") == (
        None,
        "mention:person:1: 'Barack Obama' is not in the text; dropped",
    )
    assert P.parse_mention('"Sky 3D".', TEXT, "m")[0] == "Sky 3D"


# ---- plan shape, growth, caps -------------------------------------------------------------


def test_count_prompts_share_the_text_prefix_and_end_with_the_label() -> None:
    plan = NerPlanner(NerConfig(labels=("person", "company"))).plan(TEXT)
    validate(plan)
    assert [n.id for n in plan.nodes] == ["count:person", "count:company"]
    a, b = (n.prompt for n in plan.nodes)
    shared = len("Tweet: " + TEXT + "\nEntity type: ")
    assert a[:shared] == b[:shared] and a[shared:] != b[shared:]
    assert all(n.expand == "ner-count" for n in plan.nodes)
    assert [n.args for n in plan.nodes] == [
        (("label", "person"), ("text", TEXT)),
        (("label", "company"), ("text", TEXT)),
    ]


def test_count_output_grows_one_node_per_mention() -> None:
    planner = NerPlanner(NerConfig(labels=("person", "company"), max_mentions=3))
    sched = Scheduler(planner.plan(TEXT))
    node = sched.plan.node("count:company")
    growth = planner.expanders["ner-count"](node, "2")
    assert [n.id for n in growth.nodes] == ["mention:company:1", "mention:company:2"]
    assert "Write company entity 2 of 2." in growth.nodes[1].prompt
    sched.grow(growth)  # valid growth of the running plan
    capped = planner.expanders["ner-count"](node, "7")
    assert len(capped.nodes) == 3 and "capped at max_mentions 3" in (capped.note or "")
    junk = planner.expanders["ner-count"](node, "The entity type is")
    assert junk.nodes == () and "unparseable" in (junk.note or "")


def test_fan_out_cap_is_refused_up_front_with_numbers() -> None:
    with pytest.raises(ValueError, match=r"10 labels x \(1 count \+ 8 mentions\) = 90 nodes"):
        NerPlanner(NerConfig(max_mentions=8, max_nodes=64)).plan(TEXT)
    with pytest.raises(ValueError, match="duplicate labels"):
        NerPlanner(NerConfig(labels=("person", "person"))).plan(TEXT)
    with pytest.raises(ValueError, match="text is empty"):
        NerPlanner().plan("   ")
    assert ar_plan(TEXT, NerConfig()).answer == ("entities",)


# ---- dedupe -------------------------------------------------------------------------------


def _run(outputs: dict[str, str]) -> RunResult:
    results = {k: NodeResult(k, v, 1, 0.0) for k, v in outputs.items()}
    return RunResult("", results, Plan(()), 0.0)


def test_dedupe_smaller_k_wins_then_label_order() -> None:
    labels = ("person", "company", "product")
    run = _run(
        {
            "mention:company:1": "Sky 3D",
            "mention:product:2": "Sky 3D",  # same span, later mention: loses to company
            "mention:person:1": "Engadget",
            "mention:company:2": "Engadget",  # person wrote it at k=1: person wins
            "mention:product:1": "Stephen Fry",
            "mention:person:2": "Stephen Fry",  # product at k=1 wins over person at k=2
            "mention:company:3": "Engadget",
        }
    )
    entities, notes = collect(run, TEXT, labels)
    assert entities == [
        Entity("person", "Engadget"),
        Entity("company", "Sky 3D"),
        Entity("product", "Stephen Fry"),
    ]
    assert "'Sky 3D': product dropped, company kept (earlier mention)" in notes
    tie = collect(
        _run({"mention:product:1": "Sky 3D", "mention:company:1": "Sky 3D"}), TEXT, labels
    )
    assert tie[0] == [Entity("company", "Sky 3D")]  # tie at k=1: the label listed first


def test_dedupe_by_probability_when_the_backend_reports_it() -> None:
    """PaDeLLM's rule: the claim with the higher mean token log-probability wins, whatever k."""
    labels = ("person", "company")
    results = {
        "mention:person:1": NodeResult("mention:person:1", "Sky 3D", 4, 0.0, logprob=-2.0),
        "mention:company:2": NodeResult("mention:company:2", "Sky 3D", 2, 0.0, logprob=-0.2),
        "mention:person:2": NodeResult("mention:person:2", "Engadget", 3, 0.0, logprob=-0.3),
    }
    run = RunResult("", results, Plan(()), 0.0)
    entities, notes = collect(run, TEXT, labels)
    assert entities == [Entity("person", "Engadget"), Entity("company", "Sky 3D")]
    assert "'Sky 3D': person dropped, company kept (more probable)" in notes
    # one mention without a log-probability: the whole text falls back to the k rule
    results["mention:person:2"] = NodeResult("mention:person:2", "Engadget", 3, 0.0)
    entities, _ = collect(RunResult("", results, Plan(()), 0.0), TEXT, labels)
    assert Entity("person", "Sky 3D") in entities


# ---- data and scorer ----------------------------------------------------------------------


def test_conll_reader_spans_and_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "a.conll"
    good.write_text("Empire\tB-facility\nState\tI-facility\n=\tO\nESB\tB-facility\n\nhi\tO\n")
    tweets = read_conll(good)
    assert [t.entities for t in tweets] == [
        (Entity("facility", "Empire State"), Entity("facility", "ESB")),
        (),
    ]
    bad = tmp_path / "b.conll"
    bad.write_text("a\tO\nb c d\n")
    with pytest.raises(ValueError, match=r"b.conll:2: expected 'token<TAB>BIO-tag'"):
        read_conll(bad)


def test_scorer_on_hand_made_cases() -> None:
    a, b, c = Entity("person", "A"), Entity("geo-loc", "B"), Entity("company", "C")
    s = score([{a, b}, {c}], [{a, Entity("person", "B")}, set()])
    assert (s.tp, s.fp, s.fn) == (1, 1, 2)  # wrong type for B counts as fp + fn
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(0.4)
    assert score([set()], [set()]).f1 == 0.0
    with pytest.raises(ValueError, match="2 gold documents but 1 predictions"):
        score([{a}, {b}], [{a}])
