"""The batch job on Ray Data (`pip install parafill[ray]`): the same input, records, resume rule
and pipelines as the single-machine runner, with documents spread over a pool of Ray actors.

The driver reads and checks the input and what the output already holds (parafill's own id
filter: only the missing ids go to Ray), makes a dataset of those documents, and
`map_batches` sends small batches of them to a pool of actors, each of which opened the backend
once (the local engine, or an OpenAI-compatible server) and runs parafill's pipeline on every
document of a batch at once. A document's failure is an error record made in the actor (Ray
does not retry Python exceptions); an actor that dies is restarted and its batch run again.
The driver writes each record to the one JSONL output as the batches come back, each index
once. When a whole node is lost, Ray Data gives up on the dataset: the driver then runs the
documents it has not written yet in a new dataset, on the nodes that are left.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.from_thread import start_blocking_portal

from parafill.backends.base import Backend
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.jobs.pipelines import Pipeline
from parafill.jobs.progress import DocDone, Finished, JobEvent, Report, Started, Summary
from parafill.jobs.records import Doc, dump
from parafill.jobs.runner import BatchConfig, Job, load_job, run_document

Opener = Callable[[], AbstractAsyncContextManager[Backend]]
log = logging.getLogger("parafill.jobs")
RERUN_WAIT_S = 5.0  # before the first rerun after a lost node, doubled for each further one


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide: `address` "local" starts a Ray on this machine with `num_cpus` (a
    scheduling count; default max(4, cores): with 2 a pipeline can deadlock, ray#44687), any
    other address joins that cluster ("auto", "HOST:6379", "ray://HOST:10001")."""

    address: str = "local"
    actors: int = 1  # actors in the pool, each with its own backend
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None  # "local" only
    batch_size: int = 4  # documents per actor call, run at once inside it
    # a crashed actor is restarted (and its batch retried) this often; a dataset that fails
    # because a node or an actor was lost is run again (the unwritten documents) this often
    max_restarts: int = 3
    # calls (batches) one actor runs at once, all on its one backend: a batch waiting for its
    # slowest document does not leave the engine with nothing else to do
    calls_per_actor: int = 2

    def __post_init__(self) -> None:
        if self.actors < 1 or self.batch_size < 1 or self.calls_per_actor < 1:
            raise ValueError("Ray actors, batch size and calls per actor must be at least 1")


def ray_batch(
    pipeline: Pipeline,
    src: Path,
    dst: Path | None,
    config: BatchConfig | None = None,
    ray_config: RayConfig = RayConfig(),
    *,
    opener: Opener | None = None,
    local: LocalConfig | None = None,
    report: Report | None = None,
) -> Summary:
    """`run_batch_sync` on Ray: every line of `src` through `pipeline`, records to `dst` (None:
    stdout). Each actor opens its backend with `opener()` (default: the local engine with
    `local`); `pipeline` and `opener` are pickled to the actors. Uses the caller's Ray if
    one is initialized, else connects (and shuts down at the end). `config.concurrency` is
    unused: each actor runs its batch at once; `config.ordered` keeps input order."""
    job = anyio.run(load_job, src, dst, config or BatchConfig())
    _tell(report, Started(job.name, job.total, job.skipped))
    start = time.monotonic()
    counts = [0, 0, 0]  # done, failed, tokens
    if job.docs:
        open_ = opener or partial(LocalBackend.open, local or LocalConfig())
        with _ray(ray_config), _sink(job) as write:
            take = partial(_take, job=job, write=write, counts=counts, report=report)
            _run_all(job, pipeline, open_, ray_config, take)
    done, failed, tokens = counts
    summary = Summary(job.total, job.skipped, done, failed, tokens, time.monotonic() - start,
                      len(job.kept.failed))  # fmt: skip
    _tell(report, Finished(summary))
    return summary


def _run_all(job: Job, pipeline: Pipeline, opener: Opener, rc: RayConfig,
             take: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
    """Every document's row to `take` once. Ray Data gives up on a dataset when a node dies
    under it (the actors there unreachable, blocks lost): the documents not yet taken run
    again in a new dataset, at most `rc.max_restarts` times, after a wait (until Ray has
    marked the node dead, it may place a new actor there). A row that comes back twice (a
    batch retried after its first rows arrived) is taken once."""
    import ray.exceptions as rex

    lost = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError)
    taken: set[int] = set()
    for attempt in range(rc.max_restarts + 1):
        todo = [i for i in range(len(job.docs)) if i not in taken]
        try:
            for row in _records(job, todo, pipeline, opener, rc):
                if (i := int(row["i"])) not in taken:
                    taken.add(i)
                    take(row)
            return
        except lost as exc:  # not a Python exception of the pipeline's (RayTaskError)
            if attempt == rc.max_restarts:
                raise
            left, wait = len(job.docs) - len(taken), RERUN_WAIT_S * 2**attempt
            log.warning("Ray lost a node or an actor (%s): running the %d documents not "
                        "written yet again in %g s", type(exc).__name__, left, wait)  # fmt: skip
            time.sleep(wait)  # Ray marks a dead node dead only after missed health checks


def _take(row: dict[str, Any], job: Job, write: Callable[[str], None], counts: list[int],
          report: Report | None) -> None:  # fmt: skip
    doc = job.docs[int(row["i"])]
    error = str(row["error"]) or None
    if error is None or job.config.error_records:
        write(str(row["record"]))
    counts[0 if error is None else 1] += 1
    counts[2] += int(row["tokens"])
    _tell(report, DocDone(doc.line, doc.id, int(row["tokens"]), error))


def _tell(report: Report | None, ev: JobEvent) -> None:
    if report is not None and inspect.isawaitable(r := report(ev)):
        anyio.run(_wait, r)


async def _wait(r: Any) -> None:
    await r


@contextmanager
def _ray(rc: RayConfig) -> Iterator[None]:
    import ray

    if ray.is_initialized():  # the caller's Ray (a notebook, tests): left running
        yield
        return
    if rc.address == "local":
        cpus = rc.num_cpus or max(4, os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=rc.address, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _records(
    job: Job, todo: list[int], pipeline: Pipeline, opener: Opener, rc: RayConfig
) -> Iterator[dict[str, Any]]:
    """Each document's row {i, record, tokens, error} as the actors finish it (the documents
    `todo` of `job.docs`, by index)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = job.config.ordered
    items = [{"i": i, "doc": json.dumps(asdict(job.docs[i]))} for i in todo]
    blocks = max(1, min(len(items), rc.actors * 8))
    with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            DocumentActor,
            fn_constructor_kwargs={"pipeline": pipeline, "opener": opener, "config": job.config},
            batch_size=rc.batch_size,
            compute=ray.data.ActorPoolStrategy(
                size=rc.actors,
                max_concurrent_calls_per_actor=rc.calls_per_actor,
                enable_true_multi_threading=rc.calls_per_actor > 1,  # the portal is thread-safe
            ),
            num_cpus=rc.cpus_per_actor,
            num_gpus=rc.gpus_per_actor or None,
            max_restarts=rc.max_restarts,
            max_task_retries=rc.max_restarts,
        )
    yield from ds.iter_rows()


class DocumentActor:
    """One actor of the pool: the backend opened once, on an event loop of its own (a blocking
    portal); each call runs a batch of documents at once through the pipeline. Calls may run
    in several threads at once (`calls_per_actor`): each hands its batch to the same loop."""

    def __init__(self, pipeline: Pipeline, opener: Opener, config: BatchConfig) -> None:
        self.pipeline, self.config = pipeline, config
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._backend_cm = self.portal.wrap_async_context_manager(opener())
        self.backend = self._backend_cm.__enter__()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        docs = [Doc(**json.loads(s)) for s in batch["doc"]]
        done = self.portal.call(self._run, docs)
        return {
            "i": np.asarray(batch["i"]),
            "record": np.array([dump(rec) for rec, _, _ in done], dtype=object),
            "tokens": np.array([t for _, t, _ in done], dtype=np.int64),
            "error": np.array([e or "" for _, _, e in done], dtype=object),
        }

    async def _run(self, docs: list[Doc]) -> list[tuple[dict[str, object], int, str | None]]:
        pipeline = await self.pipeline.prepare([d.fields for d in docs], self.backend)
        done: list[Any] = [None] * len(docs)

        async def one(k: int) -> None:
            done[k] = await run_document(docs[k], pipeline, self.backend, self.config)

        async with anyio.create_task_group() as tg:
            for k in range(len(docs)):
                tg.start_soon(one, k)
        return done

    def __del__(self) -> None:
        try:
            self._backend_cm.__exit__(None, None, None)
            self._portal_cm.__exit__(None, None, None)
        except Exception:  # the process is going away anyway
            pass


@contextmanager
def _sink(job: Job) -> Iterator[Callable[[str], None]]:
    """`write(line)`: appended and flushed (stdout without an output)."""
    if job.output is None:
        yield partial(_put, sys.stdout)
        return
    with job.output.open("a" if job.config.resume else "w", encoding="utf-8") as f:
        yield partial(_put, f)


def _put(f: IO[str], line: str) -> None:
    f.write(line)
    f.flush()  # finished documents are kept if the driver is killed after this one


def without_announce(pipeline: Pipeline) -> Pipeline:
    """The pipeline without a driver-side callback (which need not pickle to the actors)."""
    if getattr(pipeline, "announce", None) is not None:
        return replace(pipeline, announce=None)  # type: ignore[type-var]
    return pipeline
