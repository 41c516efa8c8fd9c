"""Resumable JSONL batch jobs for every pipeline: `run_batch` (async) and `run_batch_sync`.

One machine only; the records, the resume rule and the pipelines are what a distributed runner
would reuse. The `parafill batch` commands and `parafill ner --input` call this.
"""

from parafill.jobs.pipelines import Documents, Entities, Output, Pipeline, Plans, Questions
from parafill.jobs.progress import DocDone, Finished, JobEvent, Started, Summary
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
    "Started",
    "Summary",
    "load_job",
    "run_batch",
    "run_batch_sync",
    "run_job",
]
