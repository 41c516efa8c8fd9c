import random

import pytest

from parafill.orchestrator.plan import Growth, Node, NodeResult, Plan, PlanError
from parafill.orchestrator.scheduler import Scheduler, Status


def _done(s: Scheduler, node_id: str, text: str = "t") -> None:
    s.start(node_id)
    s.finish(NodeResult(node_id, text, 1, 0.0))


def test_ready_respects_dependencies_in_plan_order():
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y", ("a",)), Node("c", "z"))))
    assert [n.id for n in s.ready()] == ["a", "c"]
    _done(s, "a")
    assert [n.id for n in s.ready()] == ["b", "c"]


def test_growth_adds_nodes_and_replaces_answer():
    s = Scheduler(Plan((Node("root", "x"),), answer=("root",)))
    _done(s, "root")
    s.grow(Growth((Node("p1", "a", ("root",)), Node("p2", "b", ("root",))), ("p1", "p2")))
    assert [n.id for n in s.ready()] == ["p1", "p2"]
    assert s.plan.answer == ("p1", "p2")


def test_invalid_growth_is_rejected_and_state_unchanged():
    s = Scheduler(Plan((Node("root", "x"),)))
    _done(s, "root")
    with pytest.raises(PlanError, match="duplicate node id 'root'"):
        s.grow(Growth((Node("root", "again"),)))
    assert list(s.status) == ["root"]


def test_cancel_unfinished_and_double_start():
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y"))))
    s.start("a")
    with pytest.raises(RuntimeError, match="not pending"):
        s.start("a")
    assert s.cancel_unfinished() == ["a", "b"]
    assert s.status["a"] is Status.CANCELLED


# ---- incremental ready-tracking against a naive reference ----------------------------------


class _Naive:
    """The old scheduler's semantics, by scanning every node: the reference for `ready()`."""

    def __init__(self, plan: Plan) -> None:
        self.nodes = list(plan.nodes)
        self.status = {n.id: "pending" for n in plan.nodes}

    def ready(self) -> set[str]:
        return {
            n.id
            for n in self.nodes
            if self.status[n.id] == "pending" and all(self.status[d] == "done" for d in n.deps)
        }


def _random_nodes(rng: random.Random, prefix: str, count: int, known: list[str]) -> list[Node]:
    nodes: list[Node] = []
    for i in range(count):
        pool = known + [n.id for n in nodes]
        deps = tuple(rng.sample(pool, k=min(len(pool), rng.choice((0, 1, 1, 2, 3)))))
        nodes.append(Node(f"{prefix}{i}", "p", deps, expand="grow" if rng.random() < 0.3 else None))
    return nodes


def _step(rng: random.Random, s: Scheduler, ref: _Naive, grown: list[str]) -> None:
    running = [i for i, st in ref.status.items() if st == "running"]
    ready = sorted(ref.ready())
    op = rng.random()
    if ready and (op < 0.4 or not running):
        node_id = rng.choice(ready)
        s.start(node_id)
        ref.status[node_id] = "running"
    elif running and op < 0.96:
        node_id = rng.choice(running)
        s.finish(NodeResult(node_id, "t", 1, 0.0))
        ref.status[node_id] = "done"
        if s.node(node_id).expand and rng.random() < 0.7:
            new = _random_nodes(rng, f"{node_id}.", rng.randint(0, 5), list(ref.status))
            s.grow(Growth(tuple(new)), node_id)
            grown.append(node_id)
            ref.nodes += new
            ref.status.update({n.id: "pending" for n in new})
    else:  # fail a running node, or a finished one (as when its growth is invalid)
        done = [i for i, st in ref.status.items() if st == "done"]
        pick = done if done and (rng.random() < 0.5 or not running) else running
        if pick:
            node_id = rng.choice(pick)
            s.fail(node_id, "boom")
            ref.status[node_id] = "failed"


@pytest.mark.parametrize("seed", range(20))
def test_ready_matches_a_full_scan_on_random_dags_with_growth_and_failures(seed: int) -> None:
    rng = random.Random(seed)
    s = Scheduler(Plan(tuple(_random_nodes(rng, "n", rng.randint(1, 30), []))))
    ref = _Naive(s.plan)
    grown: list[str] = []
    for _ in range(400):
        ids = [n.id for n in s.ready()]
        assert set(ids) == ref.ready()
        assert ids == sorted(ids, key=s.position)  # plan order
        plan_order = [n.id for n in s.plan.nodes]
        assert [i for i in plan_order if i in ref.ready()] == ids
        assert s.active == sum(st == "running" for st in ref.status.values())
        assert s.done == (not s.active and not ids)
        if s.done:
            break
        _step(rng, s, ref, grown)
    assert {s.status[i].value for i in ref.status} <= {"pending", "running", "done", "failed"}
    assert {i: s.status[i].value for i in ref.status} == ref.status


def test_take_starts_the_first_ready_nodes_in_plan_order() -> None:
    s = Scheduler(Plan(tuple(Node(f"n{i}", "x") for i in range(5))))
    s.start("n1")  # started by hand: take skips it
    assert [n.id for n in s.take(2)] == ["n0", "n2"]
    assert [n.id for n in s.take(10)] == ["n3", "n4"]
    assert s.take(10) == [] and s.active == 5


class _CountingDict(dict[str, Status]):
    reads = 0

    def __getitem__(self, key: str) -> Status:
        _CountingDict.reads += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Status | None = None) -> Status | None:  # type: ignore[override]
        _CountingDict.reads += 1
        return super().get(key, default)


def test_a_100k_chain_costs_a_bounded_number_of_status_reads_per_node() -> None:
    """No operation scans the plan: the old ready() read every node's status on every tick
    (5e9 reads for this chain); incremental tracking reads a few per node."""
    n = 100_000
    plan = Plan(tuple(Node(f"n{i}", "p", (f"n{i - 1}",) if i else ()) for i in range(n)))
    s = Scheduler(plan)
    s.status = _CountingDict(s.status)
    _CountingDict.reads = 0
    for _ in range(n):
        (node,) = s.take(64)
        assert s.active == 1
        s.finish(NodeResult(node.id, "t", 1, 0.0))
    assert s.done and not s.stuck and len(s.results) == n
    assert _CountingDict.reads <= 4 * n


# ---- growth: validated incrementally, placed independently of completion order -----------


def test_growth_may_depend_on_its_own_new_nodes_but_not_form_a_cycle() -> None:
    s = Scheduler(Plan((Node("root", "x"),)))
    _done(s, "root")
    with pytest.raises(PlanError, match=r"cycle: (\w -> ){3}\w") as err:
        s.grow(Growth((Node("a", "x", ("c",)), Node("b", "y", ("a",)), Node("c", "z", ("b",)))))
    assert err.value.node in {"a", "b", "c"} and list(s.status) == ["root"]
    with pytest.raises(PlanError, match="'a' depends on unknown node 'nope'"):
        s.grow(Growth((Node("a", "x", ("nope",)),)))
    s.grow(Growth((Node("a", "x", ("b", "root")), Node("b", "y")), note="forward ref is fine"))
    assert [n.id for n in s.ready()] == ["b"]


def test_an_empty_growth_may_set_a_note_and_the_answer() -> None:
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y")), answer=("a",)))
    _done(s, "a")
    s.grow(Growth(answer=("b", "a"), note="reordered"), "a")
    assert s.plan.answer == ("b", "a") and s.notes == ["reordered"]
    with pytest.raises(RuntimeError, match="already grown"):
        s.grow(Growth(), "a")


def _two_growths(first: str) -> Scheduler:
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y")), answer=("a", "b"), notes=("plan",)))
    for node_id in ("a", "b"):
        s.start(node_id)
    for node_id in (first, "b" if first == "a" else "a"):
        s.finish(NodeResult(node_id, "t", 1, 0.0))
        kids = (Node(f"{node_id}1", "k", (node_id,)), Node(f"{node_id}2", "k", (f"{node_id}1",)))
        s.grow(Growth(kids, (f"{node_id}1", f"{node_id}2"), f"{node_id} grew"), node_id)
    return s


def test_plan_notes_and_answer_do_not_depend_on_which_growth_came_first() -> None:
    ab, ba = _two_growths("a"), _two_growths("b")
    assert ab.plan == ba.plan
    assert [n.id for n in ab.plan.nodes] == ["a", "b", "a1", "a2", "b1", "b2"]
    assert ab.plan.answer == ("b1", "b2")  # the growth later in plan order wins
    assert ab.notes == ba.notes == ["plan", "a grew", "b grew"]
    assert [n.id for n in ab.ready()] == [n.id for n in ba.ready()] == ["a1", "b1"]


def test_cancel_unfinished_lists_pending_and_running_in_plan_order() -> None:
    s = Scheduler(Plan((Node("a", "x"), Node("b", "y", ("a",)), Node("c", "z"))))
    s.start("c")
    s.start("a")
    s.fail("a", "boom")
    assert not s.done and s.stuck == [] and s.ready() == []  # c still runs; b never will
    assert s.cancel_unfinished() == ["b", "c"]
    assert s.in_order(Status.CANCELLED) == ["b", "c"] and s.active == 0 and s.ready() == []
