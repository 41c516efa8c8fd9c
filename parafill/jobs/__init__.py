"""Resumable JSONL batch jobs for every pipeline: `run_batch` (async) and `run_batch_sync`.

On one machine, or on a Ray cluster with `ray_batch` (the extra `parafill[ray]`), with the same
records, resume rule and pipelines. The `parafill batch` commands and `parafill ner --input`
call this.
"""

from parafill.jobs.pipelines import Documents, Entities, Output, Pipeline, Plans, Questions
from parafill.jobs.progress import DocDone, Finished, JobEvent, Started, Summary
from parafill.jobs.ray_runner import RayConfig, ray_batch
from parafill.jobs.records import InputError
from parafill.jobs.runner import BatchConfig, Job, load_job, run_batch, run_batch_sync, run_job

__all__ = [
    "BatchConfig",
    "DocDone",
    "Documents",
    "Entities",
    "Finished",
    "InputError",
    "Job",
    "JobEvent",
    "Output",
    "Pipeline",
    "Plans",
    "Questions",
    "RayConfig",
    "Started",
    "Summary",
    "load_job",
    "ray_batch",
    "run_batch",
    "run_batch_sync",
    "run_job",
]
