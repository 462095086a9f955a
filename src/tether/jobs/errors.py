"""Errors raised by the job store layer.

Each error carries a stable ``code`` string (the same vocabulary as tether's RPC
errors) and an ``http_status`` hint, so the HTTP layer can map them without
knowing the store.
"""

from __future__ import annotations

from typing import Any, ClassVar


class JobStoreError(Exception):
    """Base class of the job store errors.

    Attributes:
        code: stable machine-readable error code.
        http_status: the HTTP status the API should answer with.
        message: human-readable text.
        details: JSON-serialisable details (may be empty).
    """

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        """Build the error from a message and keyword details."""
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details


class JobNotFound(JobStoreError):
    """No job has the given id (``not_found``, HTTP 404)."""

    code = "not_found"
    http_status = 404

    def __init__(self, job_id: str) -> None:
        """Build the error for ``job_id``."""
        super().__init__(f"job {job_id!r} not found", job_id=job_id)
        self.job_id = job_id


class LeaseLost(JobStoreError):
    """The caller does not hold the job's current lease (``aborted``, HTTP 409).

    Raised when heartbeating, completing, failing, cancelling or releasing a job
    with a wrong lease token, with an expired lease, or once the job has left
    the ``running`` state.
    """

    code = "aborted"
    http_status = 409

    def __init__(self, job_id: str, reason: str = "lease lost") -> None:
        """Build the error for ``job_id`` with a short ``reason``."""
        super().__init__(f"job {job_id!r}: {reason}", job_id=job_id, reason=reason)
        self.job_id = job_id


class IllegalTransition(JobStoreError):
    """A state change the job state machine forbids (``failed_precondition``, HTTP 409)."""

    code = "failed_precondition"
    http_status = 409

    def __init__(self, source: str, target: str, job_id: str | None = None) -> None:
        """Build the error for the refused change ``source`` -> ``target``."""
        where = f"job {job_id!r}: " if job_id else ""
        super().__init__(
            f"{where}illegal transition {source} -> {target}",
            job_id=job_id,
            source=source,
            target=target,
        )
        self.source = source
        self.target = target
        self.job_id = job_id


class DuplicateJob(JobStoreError):
    """An idempotency key is reused for a different job (``already_exists``, HTTP 409).

    Raised by ``submit`` when the key already names a job whose type or
    parameters differ from the new submission.
    """

    code = "already_exists"
    http_status = 409

    def __init__(self, idempotency_key: str, existing_id: str) -> None:
        """Build the error for ``idempotency_key`` held by job ``existing_id``."""
        super().__init__(
            f"idempotency key {idempotency_key!r} already used by job {existing_id!r} "
            "with a different type or parameters",
            idempotency_key=idempotency_key,
            existing_id=existing_id,
        )
        self.idempotency_key = idempotency_key
        self.existing_id = existing_id
