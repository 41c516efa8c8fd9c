"""The step scheduler and the drafting policy are pure Python: they import, and decide, with
torch unavailable (checked in a subprocess that blocks the import)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_schedule_runs_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        from parafill.backends.engine.params import GenParams
        from parafill.backends.engine.schedule import Seq, schedule
        from parafill.backends.engine.spec import Shape, SpecPolicy

        def seq(i, prompt, fed, generated=(), draft=()):
            s = Seq(i, list(prompt), GenParams(32), 0, generated=list(generated))
            s.fed, s.draft = fed, list(draft)
            return s

        a = seq(0, range(10), 10, generated=[5])            # decoding, no drafts
        b = seq(1, range(8), 8, generated=[1, 2], draft=[7, 7, 7])  # last token + 3 drafts
        b.fed = 9
        c = seq(2, range(40), 0)                            # prefilling
        d = seq(3, range(30), 0)                            # waits for the budget
        feeds = schedule([c, a, b, d], prefill_chunk=32)
        assert [(s.id, n) for s, n in feeds] == [(0, 1), (1, 4), (2, 32)], feeds
        assert b.token(9) == 2
        from parafill.backends.engine.drafts import offer
        from parafill.backends.engine.schedule import lineage, main_line
        from parafill.fillers.base import Draft
        #   last -> 0:a -> 1:b -> 3:d ; last -> 2:c (a sibling of a, likelier)
        tree = Draft((10, 11, 12, 13), (0.3, 0.9, 0.6, 0.5), (-1, 0, -1, 1))
        o = offer(tree, 0.5, 4, 8, 100)
        assert o.tokens == [12, 10, 11, 13] and o.parents == [-1, -1, 1, 2], o
        assert o.nodes == [2, 0, 1, 3]
        assert [round(v, 3) for v in o.values] == [0.6, 0.3, 0.27, 0.135]
        assert lineage(o.parents) == [[0], [1], [1, 2], [1, 2, 3]]
        assert main_line(o.parents) == [True, False, False, False]
        assert offer(tree, 0.5, 4, 1, 100).tokens == [12, 10]  # no deeper than the room left
        p = SpecPolicy()
        for n in (2, 3, 6, 8, 2, 4, 10):
            p.cost.add(Shape(n, n, 50), 0.02 + 0.001 * n)
        assert p.allocate(Shape(2, 2, 50), 0, 2, [[0.9] * 4, [0.01] * 4]) == [4, 0]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
