"""The thread tuner's choices on a simulated machine (the bookkeeping only; what it buys on a
real shared CPU is measured by benchmarks/neighbour.py): it keeps every thread while the
cores are free, drops to one when a neighbour takes a core, and returns when it leaves."""

from __future__ import annotations

from parafill.backends.engine.threads import EVERY, ThreadTuner


class Machine:
    """Step seconds by thread count: idle, two threads win; contended, one thread wins."""

    def __init__(self) -> None:
        self.busy = False
        self.threads = 2

    def set(self, n: int) -> None:
        self.threads = n

    def step(self) -> float:
        if self.busy:
            return {1: 0.040, 2: 0.300}[self.threads]  # a thread waits for its lost core
        return {1: 0.040, 2: 0.025}[self.threads]


def _run(tuner: ThreadTuner, m: Machine, steps: int, key: object = 1) -> list[int]:
    used = []
    for _ in range(steps):
        tuner.before()
        used.append(m.threads)
        tuner.after(m.step(), key)
    return used


def test_it_follows_the_cores_that_are_free() -> None:
    m = Machine()
    tuner = ThreadTuner(2, m.set)
    idle = _run(tuner, m, 100)
    assert idle[-50:] == [2] * 50  # after its first trial: both threads
    m.busy = True
    busy = _run(tuner, m, 100)
    assert busy[-50:] == [1] * 50  # the slowdown started a trial at once
    assert busy[:30].count(2) <= 2 * 6 + 6  # a few slow steps, not hundreds
    m.busy = False
    back = _run(tuner, m, EVERY + 100)
    assert back[-50:] == [2] * 50  # the periodic trial found the cores free again


def test_one_core_never_tries_more() -> None:
    m = Machine()
    m.threads = 1
    tuner = ThreadTuner(1, m.set)
    assert set(_run(tuner, m, 50)) == {1}


def test_shapes_that_keep_changing_end_the_trial() -> None:
    m = Machine()
    tuner = ThreadTuner(2, m.set)
    for i in range(40):  # a new width every step: no trial can finish
        tuner.before()
        tuner.after(m.step(), i)
    assert not tuner.trial and m.threads == tuner.current == 2


def test_a_bad_setting_is_refused() -> None:
    import pytest

    from parafill.backends.engine.config import EngineConfig

    for bad in (0, -1, 1.5, "many", True):
        with pytest.raises(ValueError, match="threads must be"):
            EngineConfig(threads=bad)  # type: ignore[arg-type]


def test_tuned_threads_decode_the_same_tokens(llama: object) -> None:
    """The tuner switches the thread count between steps (its first trial runs every
    candidate); the tokens are those of a run that leaves the count alone."""
    import torch
    from engine_ref import Run, drain, greedy, make_engine

    prompts = [[5 + i, 17, 3 * i + 40, 9] for i in range(4)]
    before = torch.get_num_threads()
    outs = []
    for setting in (None, "auto", 1):
        eng, _ = make_engine(llama, mode="rows", budget_tokens=1024, rows=4, threads=setting)
        run = Run()
        ids = [eng.submit(p, greedy(40)) for p in prompts]
        drain(eng, run, ids)
        outs.append([run.tokens[i] for i in ids])
    torch.set_num_threads(before)
    assert outs[0] == outs[1] == outs[2]
