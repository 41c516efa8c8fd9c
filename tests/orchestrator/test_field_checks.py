"""Every RunConfig / Node / Plan field is checked where the value is made: a wrong type or
range is a TypeError / ValueError naming the field and the value, never a hang, an
AttributeError mid-run or a string silently split into characters."""

import json
import math
import re

import anyio
import pytest

from parafill.backends.fake import FakeBackend
from parafill.orchestrator.plan import Growth, Node, Plan, PlanError
from parafill.orchestrator.runner import RunConfig, RunFailed, run_plan

pytestmark = pytest.mark.anyio

PLAN = Plan((Node("a", "hello"),))

# ---- RunConfig ---------------------------------------------------------------------------


async def test_negative_retries_is_refused_instead_of_hanging() -> None:
    """`attempts = retries + 1` was 0: no request was sent and the run waited forever."""
    with anyio.fail_after(5), pytest.raises(ValueError) as err:
        await run_plan(PLAN, FakeBackend(delay=0), RunConfig(retries=-1))
    assert str(err.value) == "RunConfig.retries must be an integer >= 0, got -1"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_concurrency", 0, ValueError),
        ("max_concurrency", -4, ValueError),
        ("max_concurrency", 2.5, TypeError),
        ("max_concurrency", True, TypeError),
        ("max_concurrency", "8", TypeError),
        ("node_timeout", 0, ValueError),
        ("node_timeout", -1.0, ValueError),
        ("node_timeout", math.nan, ValueError),
        ("node_timeout", math.inf, ValueError),
        ("node_timeout", "5", TypeError),
        ("retries", -1, ValueError),
        ("retries", 1.0, TypeError),
        ("retries", False, TypeError),
        ("retry_delay", -0.5, ValueError),
        ("retry_delay", math.nan, ValueError),
        ("retry_delay", math.inf, ValueError),
        ("retry_delay", "0.5", TypeError),
        ("seed", 1.5, TypeError),
        ("seed", "7", TypeError),
        ("seed", True, TypeError),
        ("filler", "magic", ValueError),
        ("filler", 3, TypeError),
        ("repetition_penalty", 0.0, ValueError),
        ("repetition_penalty", -1.1, ValueError),
        ("repetition_penalty", math.nan, ValueError),
        ("repetition_penalty", "1.1", TypeError),
        ("stop_on_repeat", -1, ValueError),
        ("stop_on_repeat", 2.0, TypeError),
        ("stop_on_repeat", True, TypeError),
    ],
)
def test_a_bad_run_config_field_is_refused_naming_field_and_value(
    field: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error) as err:
        RunConfig(**{field: value})  # type: ignore[arg-type]
    assert f"RunConfig.{field} must be" in str(err.value)
    assert f"got {value!r}" in str(err.value)


def test_valid_run_configs_are_kept_as_given() -> None:
    RunConfig()
    cfg = RunConfig(max_concurrency=1, node_timeout=0.5, retries=3, retry_delay=0, seed=0,
                    filler="ngram", repetition_penalty=1.2, stop_on_repeat=0)  # fmt: skip
    assert (cfg.node_timeout, cfg.retry_delay, cfg.seed, cfg.stop_on_repeat) == (0.5, 0, 0, 0)
    assert RunConfig(node_timeout=3).node_timeout == 3


# ---- Node --------------------------------------------------------------------------------


def test_an_integer_id_is_a_type_error_not_an_attribute_error_later() -> None:
    with pytest.raises(TypeError, match=r"Node\.id must be a non-empty str, got 5"):
        Node(5, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("node_id", ["", "   "])
def test_a_blank_id_is_refused(node_id: str) -> None:
    with pytest.raises(PlanError, match=r"Node\.id must be a non-empty str"):
        Node(node_id, "x")


def test_a_bare_str_deps_is_refused_not_split_into_characters() -> None:
    with pytest.raises(TypeError, match=r"node 'c': Node\.deps must be a tuple or list of str"):
        Node("c", "x", deps="ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Node\.deps\[1\] must be a str, got 2"):
        Node("c", "x", deps=("a", 2))  # type: ignore[arg-type]


def test_a_list_of_deps_or_stops_is_kept_as_a_tuple() -> None:
    node = Node("c", "x", deps=["a", "b"], stop=["\n"])  # type: ignore[arg-type]
    assert node.deps == ("a", "b") and node.stop == ("\n",)
    assert node == Node("c", "x", ("a", "b"), stop=("\n",))
    hash(node)  # still a frozen value


@pytest.mark.parametrize(
    ("value", "error"), [(2.5, TypeError), (True, TypeError), ("8", TypeError), (0, PlanError)]
)
def test_max_tokens_must_be_a_positive_int(value: object, error: type[Exception]) -> None:
    message = rf"node 'a': Node\.max_tokens must be an integer >= 1, got {re.escape(repr(value))}"
    with pytest.raises(error, match=message):
        Node("a", "x", max_tokens=value)  # type: ignore[arg-type]


def test_an_empty_stop_string_is_refused_naming_the_node() -> None:
    with pytest.raises(PlanError, match=r"node 'a': Node\.stop\[1\] must be a non-empty str") as e:
        Node("a", "x", stop=("\n", ""))
    assert e.value.node == "a"
    with pytest.raises(TypeError, match=r"Node\.stop must be a tuple or list of str, got '\\n'"):
        Node("a", "x", stop="\n")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("prompt", "ab\ud800cd", r"Node\.prompt has a lone surrogate '\\ud800' at index 2"),
        ("system", "\udfff", r"Node\.system has a lone surrogate '\\udfff' at index 0"),
        ("prefix", "x\ud83d", r"Node\.prefix has a lone surrogate '\\ud83d' at index 1"),
        ("stop", ("ok", "\ud800"), r"Node\.stop\[1\] has a lone surrogate"),
        ("args", (("q", "\ud800"),), r"Node\.args\[0\] has a lone surrogate"),
    ],
)
def test_a_lone_surrogate_is_refused_saying_where(field: str, value: object, where: str) -> None:
    with pytest.raises(PlanError, match=where) as err:
        Node(**{"id": "a", "prompt": "x", field: value})  # type: ignore[arg-type]
    assert err.value.node == "a" and "UTF-8" in str(err.value)


def test_a_lone_surrogate_in_the_id_is_refused() -> None:
    with pytest.raises(PlanError, match=r"Node\.id has a lone surrogate"):
        Node("a\ud800", "x")


def test_a_surrogate_pair_written_as_one_character_is_fine() -> None:
    assert Node("a", "emoji \U0001f600").prompt.endswith("\U0001f600")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", None),
        ("temperature", "0.5"),
        ("temperature", True),
        ("seed", 1.5),
        ("filler", 1),
        ("system", 3),
        ("expand", b"x"),
        ("kind", None),
        ("fn", 1),
        ("prefix", None),
        ("args", "q=x"),
        ("args", (("q",),)),
        ("args", (("q", 1),)),
        ("stop_repeated_line", "yes"),
    ],
)
def test_a_wrongly_typed_node_field_is_a_type_error_naming_it(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"node 'a': Node\.{field}(\[0\])? must be"):
        Node(**{"id": "a", "prompt": "x", field: value})  # type: ignore[arg-type]


def test_valid_nodes_are_kept_as_given() -> None:
    node = Node("a", "x", ("b",), 1, "ngram", "sys", "grow", "pre", 2, ("\n",), 0,
                args=(("q", "v"),), stop_repeated_line=True)  # fmt: skip
    assert node.temperature == 2 and node.max_tokens == 1 and node.args == (("q", "v"),)


# ---- Plan and Growth ---------------------------------------------------------------------


def test_a_bare_str_answer_is_refused_not_split() -> None:
    with pytest.raises(TypeError, match=r"Plan\.answer must be a tuple or list of str, got 'a'"):
        Plan((Node("a", "x"),), answer="a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Growth\.answer must be a tuple or list of str"):
        Growth(answer="ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Plan\.nodes\[0\] must be a Node, got 'a'"):
        Plan(("a",))  # type: ignore[arg-type]
    assert Plan([Node("a", "x")], answer=["a"]).answer == ("a",)  # type: ignore[arg-type]


# ---- where values arrive: plan files, growth -------------------------------------------


def test_a_plan_file_with_an_empty_stop_names_the_node() -> None:
    doc = {"nodes": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "stop": [""]}]}
    with pytest.raises(PlanError, match=r"node 'b': Node\.stop\[0\] must be a non-empty") as err:
        Plan.from_json(json.dumps(doc))
    assert err.value.node == "b"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": 5}, "Node.id must be a non-empty str, got 5"),
        ({"id": "k", "deps": "outline"}, "Node.deps must be a tuple or list of str"),
        ({"id": "k", "stop": ("",)}, "Node.stop[0] must be a non-empty str"),
        ({"id": "k", "max_tokens": 2.5}, "Node.max_tokens must be an integer >= 1, got 2.5"),
    ],
)
async def test_a_hook_that_grows_a_bad_node_fails_the_run_naming_the_field(
    kwargs: dict[str, object], message: str
) -> None:
    def grow(node: Node, text: str) -> Growth:
        return Growth((Node(prompt="K", **kwargs),))  # type: ignore[arg-type]

    plan = Plan((Node("outline", "O", expand="grow"),))
    with anyio.fail_after(5), pytest.raises(RunFailed) as info:
        await run_plan(plan, FakeBackend(delay=0), expanders={"grow": grow})
    assert info.value.node == "outline"
    assert "growth from node output is invalid" in info.value.error
    assert message in info.value.error
    assert set(info.value.result.results) == {"outline"}
