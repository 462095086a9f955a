"""What a running handler sees of its job: ``JobContext`` and ``current_job()``."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

from tether.jobs.exceptions import JobCancelled
from tether.jobs.model import Job

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "tether_current_job", default=None
)


def current_job() -> JobContext | None:
    """The context of the job the calling code runs for, or None outside a job.

    Works in sync handlers (they run in a worker thread with the context copied)
    and async ones alike.
    """
    return _current.get()


class JobContext:
    """A running job as its handler sees it; thread-safe.

    Attributes:
        job: the job as claimed (state ``running``).
        id: the job's id.
        type: the job type's name.
        attempt: this start's number (1 for the first).
        parameters: the stored JSON parameters.
        timeout: seconds this attempt may run, or None.
    """

    def __init__(
        self, job: Job, timeout: float | None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Build the context of ``job``; ``loop`` is the worker's event loop to wake."""
        self.job = job
        self.id = job.id
        self.type = job.type
        self.attempt = job.attempts
        self.parameters: dict[str, Any] = job.parameters
        self.timeout = timeout
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._loop = loop
        self._wake = asyncio.Event() if loop is not None else None
        self._progress: tuple[float | None, str | None] | None = None
        self._cancel_reason: str | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"<JobContext {self.type} {self.id} attempt={self.attempt}>"

    # -- for handlers --------------------------------------------------------------

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress; the worker sends it with its next heartbeat (at once, in
        effect: the heartbeat is brought forward, at most four times a second).

        Args:
            fraction: done so far, in [0, 1] (None: unchanged).
            message: what is happening (None: unchanged).

        Raises:
            ValueError: ``fraction`` outside [0, 1].
        """
        if fraction is not None:
            fraction = float(fraction)
            if not 0.0 <= fraction <= 1.0:
                raise ValueError("progress fraction must be between 0 and 1")
        with self._lock:
            old = self._progress or (None, None)
            self._progress = (
                fraction if fraction is not None else old[0],
                message if message is not None else old[1],
            )
        self._poke()

    @property
    def cancelled(self) -> bool:
        """True once the job should stop: cancellation was requested, its timeout
        passed, its lease was lost, or the worker hands it back at shutdown
        (``cancel_reason`` says which)."""
        return self._stop.is_set()

    @property
    def cancel_reason(self) -> str | None:
        """``cancel_requested``, ``timeout``, ``lease_lost``, ``shutdown`` or None."""
        return self._cancel_reason

    def check_cancelled(self) -> None:
        """Return None while the job may go on.

        Raises:
            JobCancelled: :attr:`cancelled` is True.
        """
        if self._stop.is_set():
            raise JobCancelled(f"job {self.id} stopped: {self._cancel_reason}", self.job)

    def wait_cancelled(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation (sync handlers).

        Returns:
            :attr:`cancelled` at return.
        """
        return self._stop.wait(timeout)

    def remaining(self) -> float | None:
        """Seconds left before the attempt's timeout, or None without one."""
        if self.timeout is None:
            return None
        return self.timeout - (time.monotonic() - self._started)

    # -- for the worker ------------------------------------------------------------

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed: the worker is gone
                pass

    def _take_progress(self) -> tuple[float | None, str | None] | None:
        with self._lock:
            value, self._progress = self._progress, None
        return value

    def _cancel(self, reason: str) -> None:
        with self._lock:
            if self._cancel_reason is None:
                self._cancel_reason = reason
        self._stop.set()
        self._poke()

    def _enter(self) -> contextvars.Token[JobContext | None]:
        return _current.set(self)

    def _exit(self, token: contextvars.Token[JobContext | None]) -> None:
        _current.reset(token)
