"""The Python client of the jobs API: ``connection.jobs``, ``client.jobs`` and job handles.

``client.jobs`` is the jobs API of the default server (``settings.url``,
``TETHER_URL``; see :meth:`tether.Client.jobs`); ``client.connect(url).jobs`` talks to
the ``/jobs`` HTTP API of the App at ``url``;
``client.integrated(app).jobs`` sends the same requests to the App in-process
(through its ASGI interface, so through the same validation and its store).
``AsyncClient`` connections give the async twins::

    with tether.Client() as client:
        jobs = client.jobs            # or client.connect("http://127.0.0.1:8000").jobs
        job = jobs.submit("checksum", {"paths": ["README.md"]})
        job.wait(timeout=60)            # long polls; DeadlineExceeded past 60 s
        print(job.result)               # the validated result (a dict)
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from tether.codec import Codec, decode_any
from tether.errors import DeadlineExceeded, TetherError, error_from_envelope
from tether.jobs.exceptions import JobCancelled, JobFailed, JobNotFinished
from tether.jobs.model import Job, JobState
from tether.jobs.wire import job_from_wire

if TYPE_CHECKING:
    from tether.client.connection import AsyncConnection, Connection
    from tether.transports.base import RawResponse

#: Longest single long poll the client asks for, in seconds (it loops for longer waits).
POLL_CHUNK = 55.0
_JSON = {"content-type": "application/json", "accept": "application/json"}


@dataclass(frozen=True)
class JobPage:
    """One page of :meth:`JobsClient.list`: ``jobs`` (newest first) and the
    ``next_cursor`` to pass for the next page (None on the last)."""

    jobs: list[Job]
    next_cursor: str | None


def _submit_body(
    type: str,
    parameters: Mapping[str, Any] | None,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    run_at: datetime | None,
    delay: float | None,
    idempotency_key: str | None,
) -> bytes:
    body: dict[str, Any] = {"type": type, "parameters": dict(parameters or {})}
    for key, value in (
        ("queue", queue),
        ("priority", priority),
        ("max_attempts", max_attempts),
        ("run_at", run_at.isoformat() if run_at is not None else None),
        ("delay", delay),
        ("idempotency_key", idempotency_key),
    ):
        if value is not None:
            body[key] = value
    return json.dumps(body).encode()


def _list_path(
    type: str | None,
    state: JobState | str | None,
    queue: str | None,
    limit: int,
    cursor: str | None,
) -> str:
    query = {
        "type": type,
        "state": None if state is None else JobState(state).value,
        "queue": queue,
        "limit": limit,
        "cursor": cursor,
    }
    return "/jobs?" + urlencode({k: v for k, v in query.items() if v is not None})


def _decode(raw: RawResponse) -> Any:
    data: Any = None
    if raw.body:
        try:
            data = decode_any(raw.body, Codec.JSON)
        except TetherError:
            data = None
    if raw.status >= 400:
        raise error_from_envelope(data, raw.status)
    return data


def _outcome(job: Job) -> dict[str, Any]:
    if job.state is JobState.SUCCEEDED:
        return job.result or {}
    if job.state is JobState.FAILED:
        raise JobFailed(job)
    if job.state is JobState.CANCELLED:
        raise JobCancelled(f"job {job.id} was cancelled", job)
    raise JobNotFinished(job)


def _transport_of(connection: Any) -> Any:
    transport = connection.transport
    if not hasattr(transport, "request"):
        raise TypeError(
            f"{type(transport).__name__} connections have no jobs API; use client.connect(url) "
            "or client.integrated(app)"
        )
    return transport


class JobsClient:
    """The jobs API of one endpoint (blocking); get it as ``connection.jobs``.

    Every method raises ``tether.Unavailable`` when the server cannot be
    reached, ``tether.DeadlineExceeded`` past its timeout (seconds; default the
    connection's), and the server's errors: ``JobValidationError`` (422),
    ``UnknownJobType`` (404), ``tether.RemoteError`` with code ``not_found``
    for an unknown job id, and so on.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._transport = _transport_of(connection)

    def __repr__(self) -> str:
        return f"<JobsClient {self.connection.target}>"

    def _call(
        self, verb: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Any:
        seconds = self.connection.timeout if timeout is None else timeout
        headers = dict(_JSON)
        auth = getattr(self.connection, "auth", None)
        if auth is not None:
            headers.update(auth.headers())
        raw = self._transport.request(verb, path, body, headers, seconds)
        if raw.status == 401 and auth is not None and auth.on_unauthorized():
            headers.update(auth.headers())
            raw = self._transport.request(verb, path, body, headers, seconds)
        return _decode(raw)

    def submit(
        self,
        type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> JobHandle:
        """Submit a job; its parameters are validated by the server first.

        Args:
            type: the job type's name.
            parameters: a JSON object matching the type's parameters schema.
            queue, priority, max_attempts: default: the job type's.
            run_at: earliest start (aware datetime); ``delay``: or seconds from now.
            idempotency_key: submitting again with the same key returns the same job.

        Returns:
            A :class:`JobHandle` of the queued job.

        Raises:
            JobValidationError: invalid parameters (nothing was stored).
            UnknownJobType: no such job type.
        """
        body = _submit_body(
            type, parameters, queue, priority, max_attempts, run_at, delay, idempotency_key
        )
        return JobHandle(self, job_from_wire(self._call("POST", "/jobs", body)))

    def get(self, job_id: str) -> JobHandle:
        """A handle of job ``job_id`` with its current state (one request)."""
        return JobHandle(self, self.fetch(job_id))

    def fetch(self, job_id: str) -> Job:
        """The job ``job_id`` as it is now."""
        return job_from_wire(self._call("GET", f"/jobs/{quote(job_id, safe='')}"))

    def list(
        self,
        *,
        type: str | None = None,
        state: JobState | str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first, filtered by ``type``, ``state``, ``queue``.

        Args:
            limit: jobs per page, 1..1000.
            cursor: the ``next_cursor`` of the page before (None: the first page).

        Returns:
            A :class:`JobPage`.

        Raises:
            ValueError: ``state`` is not a job state's name (nothing is sent).
            tether.TetherError: code ``invalid_argument`` (400) for a ``limit``
                outside 1..1000 or a cursor the server did not hand out;
                ``tether.Unavailable`` / ``tether.DeadlineExceeded`` when the
                server cannot be reached in time.
        """
        data = self._call("GET", _list_path(type, state, queue, limit, cursor))
        return JobPage([job_from_wire(j) for j in data["jobs"]], data["next_cursor"])

    def iter(
        self,
        *,
        type: str | None = None,
        state: JobState | str | None = None,
        queue: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetching pages as needed."""
        cursor: str | None = None
        while True:
            page = self.list(type=type, state=state, queue=queue, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next heartbeat.

        Raises:
            tether.RemoteError: ``failed_precondition`` (409) when it already finished.
        """
        return job_from_wire(self._call("POST", f"/jobs/{quote(job_id, safe='')}/cancel"))

    def wait(
        self, job_id: str, timeout: float | None = None, *, since_version: int | None = None
    ) -> Job:
        """Long poll until the job is finished (or, with ``since_version``, differs
        from that version) or ``timeout`` seconds pass; return it as it then is.

        Never raises for the timeout: check ``job.terminal``.
        """
        seconds = self.connection.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            chunk = min(left, POLL_CHUNK)
            query = {"timeout": f"{chunk:.3f}"}
            if since_version is not None:
                query["since_version"] = str(since_version)
            path = f"/jobs/{quote(job_id, safe='')}/wait?{urlencode(query)}"
            job = job_from_wire(self._call("GET", path, timeout=chunk + 10.0))
            changed = since_version is not None and job.version != since_version
            if job.terminal or changed or time.monotonic() >= deadline:
                return job

    def types(self) -> builtins.list[dict[str, Any]]:
        """The job types: name, doc, schemas and options."""
        data: dict[str, Any] = self._call("GET", "/jobs/types")
        return list(data["job_types"])

    def validate(
        self,
        type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        result: Mapping[str, Any] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Check parameters (and/or a result) against a job type without submitting.

        Returns:
            The problems (``loc`` starts with ``parameters`` or ``result``); empty when valid.
        """
        body: dict[str, Any] = {}
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if result is not None:
            body["result"] = dict(result)
        path = f"/jobs/types/{quote(type, safe='')}/validate"
        data = self._call("POST", path, json.dumps(body).encode())
        return list(data["errors"])


class JobHandle:
    """One job, seen from a client.

    ``status``, ``progress`` and ``progress_message`` ask the server each time
    they are read; ``job`` is the snapshot from the last request.
    """

    def __init__(self, jobs: JobsClient, job: Job) -> None:
        self._jobs = jobs
        self.id = job.id
        self.job = job

    def __repr__(self) -> str:
        return f"<JobHandle {self.job.type} {self.id} {self.job.state.value}>"

    def refresh(self) -> Job:
        """Fetch the job's current state (and keep it in :attr:`job`)."""
        self.job = self._jobs.fetch(self.id)
        return self.job

    @property
    def status(self) -> JobState:
        """The job's current state (asks the server)."""
        return self.refresh().state

    @property
    def progress(self) -> float | None:
        """The fraction done in [0, 1] last reported, or None (asks the server)."""
        return self.refresh().progress

    @property
    def progress_message(self) -> str | None:
        """The progress text last reported, or None (asks the server)."""
        return self.refresh().progress_message

    def wait(self, timeout: float | None = None) -> Job:
        """Wait until the job is finished (long polls); return it.

        Args:
            timeout: seconds (default: the connection's timeout).

        Raises:
            tether.DeadlineExceeded: it did not finish in time.
        """
        seconds = self._jobs.connection.timeout if timeout is None else timeout
        self.job = self._jobs.wait(self.id, seconds)
        if not self.job.terminal:
            raise DeadlineExceeded(
                f"job {self.id} is still {self.job.state.value} after {seconds:g} s"
            )
        return self.job

    @property
    def result(self) -> dict[str, Any]:
        """The result of the succeeded job (fetches the job unless already finished).

        Raises:
            JobFailed: the job failed (``code``, ``message``, ``details``).
            JobCancelled: the job was cancelled.
            JobNotFinished: it is still queued or running (see :meth:`wait`).
        """
        if not self.job.terminal:
            self.refresh()
        return _outcome(self.job)

    def cancel(self) -> Job:
        """Ask for the job's cancellation; return the job after the request."""
        self.job = self._jobs.cancel(self.id)
        return self.job


class AsyncJobsClient:
    """The asyncio twin of :class:`JobsClient` (``async_connection.jobs``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self._transport = _transport_of(connection)

    def __repr__(self) -> str:
        return f"<AsyncJobsClient {self.connection.target}>"

    async def _call(
        self, verb: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> Any:
        seconds = self.connection.timeout if timeout is None else timeout
        headers = dict(_JSON)
        auth = getattr(self.connection, "auth", None)
        if auth is not None:
            fresh = auth.headers() if auth.fresh() else await asyncio.to_thread(auth.headers)
            headers.update(fresh)
        raw = await self._transport.request(verb, path, body, headers, seconds)
        if raw.status == 401 and auth is not None and await asyncio.to_thread(auth.on_unauthorized):
            headers.update(await asyncio.to_thread(auth.headers))
            raw = await self._transport.request(verb, path, body, headers, seconds)
        return _decode(raw)

    async def submit(
        self,
        type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJobHandle:
        """Submit a job; see :meth:`JobsClient.submit`."""
        body = _submit_body(
            type, parameters, queue, priority, max_attempts, run_at, delay, idempotency_key
        )
        return AsyncJobHandle(self, job_from_wire(await self._call("POST", "/jobs", body)))

    async def get(self, job_id: str) -> AsyncJobHandle:
        """A handle of job ``job_id`` with its current state."""
        return AsyncJobHandle(self, await self.fetch(job_id))

    async def fetch(self, job_id: str) -> Job:
        """The job ``job_id`` as it is now."""
        return job_from_wire(await self._call("GET", f"/jobs/{quote(job_id, safe='')}"))

    async def list(
        self,
        *,
        type: str | None = None,
        state: JobState | str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs; see :meth:`JobsClient.list` (same errors)."""
        data = await self._call("GET", _list_path(type, state, queue, limit, cursor))
        return JobPage([job_from_wire(j) for j in data["jobs"]], data["next_cursor"])

    async def iter(
        self,
        *,
        type: str | None = None,
        state: JobState | str | None = None,
        queue: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        """Every matching job, newest first."""
        cursor: str | None = None
        while True:
            page = await self.list(
                type=type, state=state, queue=queue, limit=page_size, cursor=cursor
            )
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job; see :meth:`JobsClient.cancel`."""
        return job_from_wire(await self._call("POST", f"/jobs/{quote(job_id, safe='')}/cancel"))

    async def wait(
        self, job_id: str, timeout: float | None = None, *, since_version: int | None = None
    ) -> Job:
        """Long poll; see :meth:`JobsClient.wait`."""
        seconds = self.connection.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        while True:
            chunk = min(max(deadline - time.monotonic(), 0.0), POLL_CHUNK)
            query = {"timeout": f"{chunk:.3f}"}
            if since_version is not None:
                query["since_version"] = str(since_version)
            path = f"/jobs/{quote(job_id, safe='')}/wait?{urlencode(query)}"
            job = job_from_wire(await self._call("GET", path, timeout=chunk + 10.0))
            changed = since_version is not None and job.version != since_version
            if job.terminal or changed or time.monotonic() >= deadline:
                return job

    async def types(self) -> builtins.list[dict[str, Any]]:
        """The job types."""
        data: dict[str, Any] = await self._call("GET", "/jobs/types")
        return list(data["job_types"])

    async def validate(
        self,
        type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        result: Mapping[str, Any] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Check without submitting; see :meth:`JobsClient.validate`."""
        body: dict[str, Any] = {}
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if result is not None:
            body["result"] = dict(result)
        path = f"/jobs/types/{quote(type, safe='')}/validate"
        data = await self._call("POST", path, json.dumps(body).encode())
        return list(data["errors"])


class AsyncJobHandle:
    """The asyncio twin of :class:`JobHandle`: ``await handle.status()``,
    ``await handle.progress()``, ``await handle.progress_message()``,
    ``await handle.wait(timeout)``,
    ``await handle.result()``, ``await handle.cancel()``."""

    def __init__(self, jobs: AsyncJobsClient, job: Job) -> None:
        self._jobs = jobs
        self.id = job.id
        self.job = job

    def __repr__(self) -> str:
        return f"<AsyncJobHandle {self.job.type} {self.id} {self.job.state.value}>"

    async def refresh(self) -> Job:
        """Fetch the job's current state."""
        self.job = await self._jobs.fetch(self.id)
        return self.job

    async def status(self) -> JobState:
        """The job's current state."""
        return (await self.refresh()).state

    async def progress(self) -> float | None:
        """The fraction done last reported, or None."""
        return (await self.refresh()).progress

    async def progress_message(self) -> str | None:
        """The progress text last reported, or None."""
        return (await self.refresh()).progress_message

    async def wait(self, timeout: float | None = None) -> Job:
        """Wait until finished; see :meth:`JobHandle.wait`.

        Raises:
            tether.DeadlineExceeded: it did not finish in time.
        """
        seconds = self._jobs.connection.timeout if timeout is None else timeout
        self.job = await self._jobs.wait(self.id, seconds)
        if not self.job.terminal:
            raise DeadlineExceeded(
                f"job {self.id} is still {self.job.state.value} after {seconds:g} s"
            )
        return self.job

    async def result(self) -> dict[str, Any]:
        """The result; see :attr:`JobHandle.result` (same errors)."""
        if not self.job.terminal:
            await self.refresh()
        return _outcome(self.job)

    async def cancel(self) -> Job:
        """Ask for the job's cancellation."""
        self.job = await self._jobs.cancel(self.id)
        return self.job
