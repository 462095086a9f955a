"""Errors of the job layer above the store: validation, outcomes seen by clients and handlers.

``JobValidationError`` and ``UnknownJobType`` are :class:`tether.ServiceError`
subclasses, so a Python client raises the same class again when the HTTP API
answers with them. ``JobFailed``, ``JobCancelled`` and ``JobNotFinished`` are
what a job handle's ``result`` raises; a handler may raise ``JobCancelled``
itself to acknowledge a cancellation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tether.errors import ServiceError, StatusCode

if TYPE_CHECKING:
    from tether.jobs.model import Job


class JobValidationError(ServiceError):
    """Parameters or a result that do not match a job type's JSON Schema.

    ``code`` is ``invalid_argument``; the HTTP API answers 422. ``details`` is a
    list of ``{"loc": [...], "msg": str, "type": str}``, one per problem (the
    same shape as an RPC's invalid arguments).
    """

    code: ClassVar[StatusCode] = StatusCode.INVALID_ARGUMENT
    error_name: ClassVar[str] = "JobValidationError"

    def __init__(self, message: str = "", details: Any = None) -> None:
        """Build the error; the HTTP status is always 422."""
        super().__init__(message, details, http_status=422)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The validation problems (``details``), as a list."""
        return list(self.details or [])


class UnknownJobType(ServiceError):
    """No job type of that name is registered (``not_found``, HTTP 404)."""

    code: ClassVar[StatusCode] = StatusCode.NOT_FOUND
    error_name: ClassVar[str] = "UnknownJobType"


class JobCancelled(Exception):
    """The job was cancelled.

    Raised by a handle's ``result`` for a cancelled job, and by
    :meth:`tether.jobs.JobContext.check_cancelled` inside a handler (which may
    also raise it itself): a handler that ends with it while cancellation was
    requested leaves the job ``cancelled``.

    Attributes:
        job: the job, when known.
    """

    def __init__(self, message: str = "the job was cancelled", job: Job | None = None) -> None:
        """Build the error for ``job``."""
        super().__init__(message)
        self.job = job


class JobFailed(Exception):
    """The job failed for good; raised by a handle's ``result``.

    Attributes:
        job: the failed job.
        code: the failure's code (``handler_error``, ``processing_error``,
            ``deadline_exceeded``, ``lease_expired``, or the worker's own).
        message: human-readable text.
        details: JSON details (validation errors, exception type, ...).
    """

    def __init__(self, job: Job) -> None:
        """Build the error from a ``failed`` job."""
        error = job.error or {"code": "error", "message": "", "details": None}
        self.job = job
        self.code: str = error["code"]
        self.message: str = error["message"]
        self.details: Any = error["details"]
        super().__init__(f"job {job.id} failed: {self.code}: {self.message}")


class JobNotFinished(Exception):
    """The job has no outcome yet (it is ``queued`` or ``running``).

    Attributes:
        job: the job as last seen.
    """

    def __init__(self, job: Job) -> None:
        """Build the error from an unfinished job."""
        super().__init__(f"job {job.id} is {job.state.value}, not finished")
        self.job = job


class InvalidResult(JobValidationError):
    """A worker's result did not match the result schema; the job was failed with
    code ``processing_error`` (HTTP 422 to the worker that sent it).

    Attributes:
        job: the failed job, when known (on the server side).
    """

    error_name: ClassVar[str] = "InvalidResult"

    def __init__(self, message: str = "", details: Any = None, job: Job | None = None) -> None:
        """Build the error; ``job`` is the job as failed."""
        super().__init__(message, details)
        self.job = job
