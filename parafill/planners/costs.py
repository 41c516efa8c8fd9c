"""A backend's cost model: decode step time as a function of how many requests run at once.

Measured once through the public Backend API (K concurrent requests of a fixed length, timed)
and cached as JSON, keyed by what the caller says identifies the backend (model, device,
packing mode). A linear fit `step(K) = base + per_branch * K` is all the router needs.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

from parafill.backends.base import Backend, Request, Sampling, complete

PROBE = "Count slowly from one to one hundred, one number per line."


@dataclass(frozen=True)
class CostModel:
    """Seconds per decode step: `base + per_branch * width`."""

    base: float
    per_branch: float
    source: str = "measured"

    def step(self, width: int) -> float:
        return self.base + self.per_branch * max(width, 1)

    def decode(self, tokens: int, width: int = 1) -> float:
        return tokens * self.step(width)


# A server that batches concurrent requests (vLLM, SGLang, llama.cpp with parallel slots):
# extra branches cost a few percent of a step. Used when nothing was measured.
BATCHING_SERVER = CostModel(base=0.02, per_branch=0.001, source="assumed: batching server")


def cache_path(key: str) -> Path:
    root = Path(os.environ.get("PARAFILL_CACHE", Path.home() / ".cache" / "parafill"))
    return root / "costs" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[-120:] + ".json")


async def measure(
    backend: Backend, widths: tuple[int, ...] = (1, 4), tokens: int = 12
) -> CostModel:
    """Time `tokens` decode steps at each width (concurrent identical-length requests)."""
    points = []
    for width in widths:
        sampling = Sampling(max_tokens=tokens)
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k in range(width):
                request = Request.chat(f"{PROBE} ({k})", sampling=sampling)
                tg.start_soon(complete, backend, request)
        points.append((width, (time.perf_counter() - t0) / tokens))
    (w0, t0_), (w1, t1) = points[0], points[-1]
    per = max((t1 - t0_) / (w1 - w0), 0.0) if w1 != w0 else 0.0
    return CostModel(base=max(t0_ - per * w0, 1e-6), per_branch=per)


async def cached(backend: Backend, key: str) -> CostModel:
    """The cost model for `key`: from the cache file, else measured now and saved."""
    path = cache_path(key)
    try:
        return CostModel(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    model = await measure(backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(model)))
    return model
