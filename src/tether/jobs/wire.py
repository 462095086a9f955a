"""The JSON form of jobs in the HTTP API, both ways."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tether.jobs.model import Job, JobState

_DATETIMES = ("scheduled_at", "created_at", "started_at", "finished_at", "lease_expires_at")


def job_to_wire(job: Job, *, with_lease: bool = False) -> dict[str, Any]:
    """Return ``job`` as the API shows it: ISO 8601 times, the state's name.

    The lease token is left out unless ``with_lease`` (only a claim answers it:
    whoever holds it may complete the job).
    """
    out = job.to_dict()
    if not with_lease:
        out.pop("lease_token", None)
    return out


def job_from_wire(data: Mapping[str, Any]) -> Job:
    """Rebuild a :class:`Job` from its JSON form.

    Raises:
        ValueError, KeyError, TypeError: ``data`` is not a job's JSON form.
    """
    values: dict[str, Any] = {name: data.get(name) for name in Job.__dataclass_fields__}
    for name in _DATETIMES:
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    values["state"] = JobState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    for name in ("id", "type", "queue", "parameters", "priority", "attempts", "max_attempts"):
        if values[name] is None:
            raise KeyError(name)
    if values["version"] is None:
        values["version"] = 1
    return Job(**values)
