"""Jobs: long work run by leased workers, stored in SQLite or PostgreSQL.

* job types: ``@app.job(...)`` or ``app.register_job_type(...)`` (:mod:`tether.jobs.types`);
* the manager behind an App's jobs (:mod:`tether.jobs.manager`) and its HTTP API at
  ``/jobs`` (:mod:`tether.jobs.api`);
* workers: :class:`tether.Worker` (:mod:`tether.jobs.worker`);
* the Python client: ``connection.jobs`` (:mod:`tether.jobs.client`);
* stores: :mod:`tether.jobs.store`.
"""

from tether.jobs.context import JobContext, current_job
from tether.jobs.errors import (
    DuplicateJob,
    IllegalTransition,
    JobNotFound,
    JobStoreError,
    LeaseLost,
)
from tether.jobs.exceptions import (
    InvalidResult,
    JobCancelled,
    JobFailed,
    JobNotFinished,
    JobValidationError,
    UnknownJobType,
)
from tether.jobs.manager import JobManager
from tether.jobs.model import Claim, Job, JobState, check_transition
from tether.jobs.types import JobOptions, JobType, JobTypeRegistry

__all__ = [
    "Claim",
    "DuplicateJob",
    "IllegalTransition",
    "InvalidResult",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobManager",
    "JobNotFinished",
    "JobNotFound",
    "JobOptions",
    "JobState",
    "JobStoreError",
    "JobType",
    "JobTypeRegistry",
    "JobValidationError",
    "LeaseLost",
    "UnknownJobType",
    "check_transition",
    "current_job",
]
