"""Draft-and-verify steps against plain decoding (fp32, CPU): every filler, every packing
mode, admissions / cancellations / retirements mid-run, EOS and max_tokens inside an accepted
window, penalties and log-probabilities per position, seeded sampling, and the accounting of
KV columns (rejected drafts never visible, never in the prefix cache)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
import torch
from engine_ref import RefCache, Run, drain, greedy, hf_logits, make_engine, rand_prompt, step

from parafill.backends.engine.engine import Engine, StepOutput
from parafill.backends.engine.sampling import GenParams
from parafill.fillers import Draft, Outcome, Proposer, make

MODES = ["rows", "tree", "rows-static", "tree-static"]


def _repetitive(gen: torch.Generator, n: int) -> list[int]:
    """A prompt over a small alphabet, so n-gram proposers find matches to draft from."""
    return torch.randint(3, 15, (n,), generator=gen).tolist()


class Oracle:
    """Drafts the known continuation, spoiling one draft in three calls (at varying depth)."""

    def __init__(self, prompt: list[int], want: list[int]) -> None:
        self.n, self.want, self.calls = len(prompt), want, 0

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        g = len(tokens) - self.n
        draft = list(self.want[g : g + k])
        if draft and self.calls % 3 == 0:
            j = self.calls % len(draft)
            draft[j] = (draft[j] + 1) % 256
        return draft

    def observe(self, outcome: Outcome) -> None:
        assert len(outcome.predicted) == len(outcome.draft) + 1


class Garbage:
    """Random drafts: nearly all rejected, which must change nothing but the cost."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        return torch.randint(0, 256, (k,), generator=self.gen).tolist()

    def observe(self, outcome: Outcome) -> None:
        pass


class TreeOracle:
    """Drafts a tree: at each depth the known continuation and a wrong sibling (the right one
    first or second, alternating, so kept paths leave the first-child chain), the wrong one
    growing a child of its own; every third call the right token is missing at some depth."""

    side_kept = 0  # kept drafts that were a second sibling (K/V copied from a side branch)

    def __init__(self, prompt: list[int], want: list[int]) -> None:
        self.n, self.want, self.calls = len(prompt), want, 0

    def propose(self, tokens: Sequence[int], k: int) -> Draft:
        self.calls += 1
        g = len(tokens) - self.n
        toks: list[int] = []
        parents: list[int] = []
        parent = -1
        for d, t in enumerate(self.want[g : g + max(1, k // 3)]):
            wrong = (t + 1 + d) % 256
            if self.calls % 3 == 0 and d == 1:
                t = (wrong + 1) % 256  # the right token is not among the candidates
            pair = [t, wrong] if (self.calls + d) % 2 else [wrong, t]
            at = len(toks)
            toks += pair + [(wrong + 7) % 256]
            parents += [parent, parent, at + pair.index(wrong)]
            parent = at + pair.index(t)
        return Draft(tuple(toks), (0.5,) * len(toks), tuple(parents))

    def observe(self, outcome: Outcome) -> None:
        assert len(outcome.predicted) == len(outcome.draft) + 1
        assert len(outcome.parents) == len(outcome.nodes) == len(outcome.draft)
        for a, b in zip(outcome.path, outcome.path[1:], strict=False):
            assert outcome.parents[b] == a
        TreeOracle.side_kept += sum(outcome.nodes[j] % 3 == 1 for j in outcome.path)


class TreeGarbage:
    """Random trees: random tokens under random earlier drafts."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, tokens: Sequence[int], k: int) -> Draft:
        toks = torch.randint(0, 256, (k,), generator=self.gen).tolist()
        parents = [int(torch.randint(-1, j, (1,), generator=self.gen)) for j in range(k)]
        return Draft(tuple(toks), (0.7,) * k, tuple(parents))

    def observe(self, outcome: Outcome) -> None:
        pass


def _proposer(kind: str, prompt: list[int], want: list[int], i: int) -> Proposer | None:
    if kind == "oracle":
        return Oracle(prompt, want)
    if kind == "tree-oracle":
        return TreeOracle(prompt, want)
    if kind == "garbage":
        return Garbage(i)
    if kind == "tree-garbage":
        return TreeGarbage(i)
    return make(kind)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind", ["oracle", "tree-oracle", "garbage", "tree-garbage", "ngram", "jacobi"]
)
def test_greedy_equals_plain_decoding_with_joins_and_cancels(
    kind: str, mode: str, llama: torch.nn.Module, ref: RefCache
) -> None:
    gen = torch.Generator().manual_seed(11)
    base = _repetitive(gen, 20)
    prompts = [base + _repetitive(gen, 3 + i) for i in range(3)] + [
        _repetitive(gen, 9 + 2 * i) for i in range(4)
    ]
    lengths = [17, 9, 24, 13, 30, 6, 21]
    eng, _ = make_engine(
        llama, mode=mode, budget_tokens=1024, rows=8, prefill_chunk=24, speculate="always"
    )
    run, ids = Run(), []
    TreeOracle.side_kept = 0

    def submit(j: int) -> None:
        p, n = prompts[j], lengths[j]
        ids.append(eng.submit(p, greedy(n), _proposer(kind, p, ref(p, n), j)))

    for j in range(3):
        submit(j)
    step(eng, run, 3)
    for j in range(3, 6):
        submit(j)
    step(eng, run, 2)
    eng.cancel(ids[4])
    step(eng, run)
    submit(6)
    drain(eng, run, ids)
    for j, i in enumerate(ids):
        want = ref(prompts[j], lengths[j])
        if j == 4:
            assert run.finish[i] == "cancelled"
            assert run.tokens.get(i, []) == want[: len(run.tokens.get(i, []))]
            continue
        assert run.tokens[i] == want, (kind, j)
        assert run.finish[i] == "length"
    assert eng.drafted > (5 if kind == "ngram" else 20)  # drafts were verified
    assert kind != "oracle" or eng.accepted > eng.drafted / 2
    assert kind != "tree-oracle" or (eng.accepted > 40 and TreeOracle.side_kept > 10)
    _assert_accounting(eng)


def _drain_all(eng: Engine, max_steps: int) -> tuple[Run, list[StepOutput]]:
    """Step until the engine is idle; every output in order, and the per-request view."""
    run, outs = Run(), []
    for _ in range(max_steps):
        got = eng.step()
        outs += got
        run.take(got)
        if not eng.live and not eng.waiting and not eng._inbox.submitted:
            break
    return run, outs


def _assert_accounting(eng: object) -> None:
    from parafill.backends.engine.engine import Engine

    assert isinstance(eng, Engine)
    assert not eng.live and not eng.waiting
    for s in eng.cached:  # a retained prefix holds only accepted tokens' KV
        assert s.fed <= len(s.prompt) + len(s.generated)
    eng.drop_cached()
    assert int(eng.cache.refs.sum()) == 0
    assert sorted(eng.free_slots) == list(range(eng.vis.shape[0] - 1))


@pytest.mark.parametrize("mode", ["rows", "tree"])
def test_oracle_windows_cut_forward_passes(
    mode: str, llama: torch.nn.Module, ref: RefCache
) -> None:
    prompt = rand_prompt(torch.Generator().manual_seed(12), 15)
    want = ref(prompt, 40)
    eng, lm = make_engine(llama, mode=mode, budget_tokens=512, rows=2, speculate="always")
    i = eng.submit(prompt, greedy(40), Oracle(prompt, want))
    run, outs = _drain_all(eng, 60)
    assert run.tokens[i] == want
    assert len(lm.steps) < 25  # 40 tokens from far fewer forwards than 41
    last = [o for o in outs if o.seq_id == i][-1]
    assert last.passes == len(lm.steps)
    assert last.accepted > 20 and last.drafted >= last.accepted
    assert max(len(o.tokens) for o in outs) > 2  # several tokens emitted in one step


@pytest.mark.parametrize("mode", MODES)
def test_eos_and_max_tokens_inside_an_accepted_window(
    mode: str, llama: torch.nn.Module, ref: RefCache
) -> None:
    gen = torch.Generator().manual_seed(13)
    prompt = rand_prompt(gen, 12)
    want = ref(prompt, 30)
    k = next(i for i in range(6, 30) if want[i] not in want[:i])
    eng, _ = make_engine(llama, mode=mode, budget_tokens=512, rows=4, speculate="always")
    a = eng.submit(prompt, GenParams(30, eos_ids=frozenset({want[k]})), Oracle(prompt, want))
    b = eng.submit(list(prompt), greedy(7), Oracle(prompt, want))  # ends mid-window
    run = Run()
    drain(eng, run, [a, b])
    assert run.tokens[a] == want[:k] and run.finish[a] == "stop"
    assert run.tokens[b] == want[:7] and run.finish[b] == "length"
    # a follow-up turn forks from the retained prefix: stale drafts there would change it
    follow = prompt + want[:7] + [5, 6, 7]
    c = eng.submit(follow, greedy(10))
    drain(eng, run, [c])
    assert run.tokens[c] == ref(follow, 10)
    _assert_accounting(eng)


@pytest.mark.parametrize("mode", ["rows", "tree"])
def test_penalties_bias_and_logprobs_per_position(mode: str, llama: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(14)
    prompts = [rand_prompt(gen, 10 + i) for i in range(3)]
    params = [
        GenParams(16, frequency_penalty=0.8, top_logprobs=3),
        GenParams(16, presence_penalty=2.0, logit_bias=((4, 3.0),), top_logprobs=2),
        GenParams(16, temperature=0.9, top_p=0.8, seed=7, top_logprobs=1),
    ]
    plain = _run(llama, mode, prompts, params, None)
    spec = _run(llama, mode, prompts, params, "oracle", plain)
    for (tp, lp, tops), (ts, ls, topss) in zip(plain, spec, strict=True):
        assert ts == tp
        torch.testing.assert_close(torch.tensor(ls), torch.tensor(lp), atol=1e-4, rtol=0)
        assert [[t for t, _ in x] for x in topss] == [[t for t, _ in x] for x in tops]


def _run(
    hf: torch.nn.Module,
    mode: str,
    prompts: list[list[int]],
    params: list[GenParams],
    kind: str | None,
    want: list[tuple[list[int], list[float], list[object]]] | None = None,
) -> list[tuple[list[int], list[float], list[object]]]:
    eng, _ = make_engine(hf, mode=mode, budget_tokens=512, rows=4, speculate="always")
    ids = []
    for j, (p, g) in enumerate(zip(prompts, params, strict=True)):
        prop = Oracle(p, want[j][0]) if kind == "oracle" and want else None
        ids.append(eng.submit(p, g, prop))
    got: dict[int, tuple[list[int], list[float], list[object]]] = {i: ([], [], []) for i in ids}
    for _ in range(100):
        for o in eng.step():
            got[o.seq_id][0].extend(o.tokens)
            got[o.seq_id][1].extend(o.logprobs)
            got[o.seq_id][2].extend(o.top)
        if not eng.live and not eng.waiting:
            break
    return [got[i] for i in ids]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["garbage", "tree-garbage", "ngram", "jacobi"])
def test_seeded_sampling_is_the_same_with_and_without_drafts(
    kind: str, mode: str, llama: torch.nn.Module
) -> None:
    gen = torch.Generator().manual_seed(15)
    prompts = [_repetitive(gen, 12 + i) for i in range(4)]
    params = [
        GenParams(20, temperature=t, top_p=p, seed=100 + j)
        for j, (t, p) in enumerate([(0.7, 1.0), (1.0, 0.9), (1.3, 1.0), (0.5, 0.5)])
    ]
    plain = _run(llama, mode, prompts, params, None)
    eng, _ = make_engine(llama, mode=mode, budget_tokens=512, rows=4, speculate="always")
    run = Run()
    ids = [
        eng.submit(p, g, _proposer(kind, p, plain[j][0], j))
        for j, (p, g) in enumerate(zip(prompts, params, strict=True))
    ]
    drain(eng, run, ids)
    assert [run.tokens[i] for i in ids] == [t for t, _, _ in plain]
    assert eng.drafted > 5


def test_sampled_drafts_follow_the_target_distribution(llama: torch.nn.Module) -> None:
    """A one-token draft d is kept with probability p(d), and the tokens follow p."""
    prompt = rand_prompt(torch.Generator().manual_seed(16), 10)
    with torch.inference_mode():
        first = torch.softmax(hf_logits(llama, prompt)[-1] / 0.6, dim=-1)
        t1 = int(first.argmax())
        probs = torch.softmax(hf_logits(llama, [*prompt, t1])[-1] / 0.6, dim=-1)
    d = int(probs.argsort(descending=True)[1])  # a likely but not the likeliest token

    class Always:
        def propose(self, tokens: Sequence[int], k: int) -> list[int]:
            return [d] if list(tokens) == [*prompt, t1] else []

        def observe(self, outcome: Outcome) -> None:
            pass

    eng, _ = make_engine(llama, mode="tree", budget_tokens=16384, max_seqs=1024, speculate="always")
    ids = [eng.submit(prompt, GenParams(3, temperature=0.6, seed=s), Always()) for s in range(3000)]
    run, outs = _drain_all(eng, 3000)
    tried = {o.seq_id: o.drafted for o in outs}
    seconds = Counter(run.tokens[i][1] for i in ids if run.tokens[i][0] == t1)
    n = sum(seconds.values())
    assert n > 500
    assert sum(tried[i] for i in ids if run.tokens[i][0] == t1) == n  # d drafted for each
    # chi-square over the likeliest tokens (the rest pooled) against the model's p
    top = probs.argsort(descending=True)[:6].tolist()
    obs = [seconds[t] for t in top] + [n - sum(seconds[t] for t in top)]
    exp = [float(probs[t]) * n for t in top] + [n * (1 - float(probs[top].sum()))]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    assert chi2 < 22.5  # 6 degrees of freedom, p = 0.001
    assert abs(seconds[d] / n - float(probs[d])) < 4 * (float(probs[d]) / n) ** 0.5


class Broken:
    """A proposer that fails: its sequence decodes on without drafts, step-mates unharmed."""

    def __init__(self, where: str) -> None:
        self.where, self.calls = where, 0

    def propose(self, tokens: Sequence[int], k: int) -> list[int] | Draft:
        self.calls += 1
        if self.where == "propose" and self.calls > 2:
            raise RuntimeError("proposer bug")
        if self.where == "bad-token" and self.calls > 2:
            return [3, 10**9, -1]  # ids no model has: would fail the step for everyone
        if self.where == "bad-parent" and self.calls > 2:
            return Draft((3, 4), (0.5, 0.5), (1, -1))  # follows a later draft
        return [3] * k

    def observe(self, outcome: Outcome) -> None:
        if self.where == "observe" and self.calls > 2:
            raise RuntimeError("proposer bug")


@pytest.mark.parametrize("where", ["propose", "observe", "bad-token", "bad-parent"])
def test_a_failing_proposer_harms_nobody(where: str, llama: torch.nn.Module, ref: RefCache) -> None:
    gen = torch.Generator().manual_seed(17)
    prompts = [rand_prompt(gen, 10 + i) for i in range(3)]
    eng, _ = make_engine(llama, budget_tokens=512, rows=4, speculate="always")
    ids = [eng.submit(prompts[0], greedy(15), Broken(where))]
    ids += [eng.submit(p, greedy(15), make("ngram")) for p in prompts[1:]]
    run, _ = _drain_all(eng, 100)
    for i, p in zip(ids, prompts, strict=True):
        assert run.tokens[i] == ref(p, 15) and run.finish[i] == "length"


def test_a_proposer_whose_drafts_never_pay_is_asked_less_often(
    llama: torch.nn.Module, ref: RefCache
) -> None:
    """When the step costs say verifying does not pay, the engine backs off from asking the
    proposer (host time on a wide batch) — and still writes the plain tokens."""
    from parafill.backends.engine.spec import Shape, StepCost

    class Counting:
        calls = 0

        def propose(self, tokens: Sequence[int], k: int) -> Draft:
            Counting.calls += 1
            return Draft((3,) * k, (0.3,) * k)

        def observe(self, outcome: Outcome) -> None:
            pass

    prompt = rand_prompt(torch.Generator().manual_seed(18), 12)
    eng, _ = make_engine(llama, budget_tokens=512, rows=2, speculate="auto")
    dear = StepCost()
    for n in range(1, 12):  # every extra token fed costs as much as a whole step
        dear.add(Shape(n, n, 100), 0.01 * n)
    eng.policy.cost = dear
    i = eng.submit(prompt, greedy(40), Counting())
    run, _ = _drain_all(eng, 100)
    assert run.tokens[i] == ref(prompt, 40)
    assert eng.drafted == 0 and Counting.calls < 15  # not once per step (40)
