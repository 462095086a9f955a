"""How a worker reaches the jobs: straight to the store, or through the HTTP API.

Both backends offer the same few operations; the worker does not know which
one it talks to.

* :class:`StoreBackend` opens the job store itself (SQLite file or
  PostgreSQL) through a :class:`~tether.jobs.manager.JobManager`, so it also
  validates results with the job types it knows and sweeps expired leases.
  It suits Python workers next to the database.
* :class:`HTTPBackend` speaks the ``/jobs`` HTTP API of a running App, as a
  worker in any language would; the server validates and sweeps. It sends the
  credentials and uses the TLS choices a ``tether.Client`` connection would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tether.codec import Codec, decode_any
from tether.errors import StatusCode, TetherError, error_from_envelope
from tether.jobs.errors import IllegalTransition, JobNotFound, JobStoreError, LeaseLost
from tether.jobs.exceptions import InvalidResult
from tether.jobs.manager import JobManager
from tether.jobs.model import Job
from tether.jobs.wire import job_from_wire
from tether.transports.http_async import AsyncHTTPTransport

if TYPE_CHECKING:
    from tether.client.auth import ClientAuth
    from tether.settings import Settings

#: Seconds an HTTP call of a worker may take (long polls add their wait).
HTTP_TIMEOUT = 30.0
#: Longest single claim long poll over HTTP, in seconds: a stopping worker waits for the
#: one in flight (abandoning it could strand jobs the server claims as the client
#: leaves), so this bounds how long a stop takes.
HTTP_CLAIM_CHUNK = 2.0


_PASSING_CODES = frozenset(
    {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.INTERNAL}
)


def passing_error(
    exc: BaseException, transient: tuple[type[BaseException], ...] = (OSError, TimeoutError)
) -> bool:
    """True for an error that may pass: a server or store out of reach, a timeout, a
    lock held a moment (``transient``: the store's own such errors), a server
    answering 500 or 503; False for a definite answer (the job store's errors, an
    invalid result, any other ``TetherError``)."""
    if isinstance(exc, JobStoreError | InvalidResult):
        return False
    if isinstance(exc, TetherError):
        return exc.code in _PASSING_CODES
    return isinstance(exc, transient)


@dataclass(frozen=True)
class Claimed:
    """A job a worker holds: the job, its lease token, and its per-attempt timeout (s)."""

    job: Job
    lease_token: str = field(repr=False)
    timeout: float | None


class Backend(Protocol):
    """The operations a worker needs (see the module docstring).

    Besides the errors each operation names, any of them may raise *passing*
    errors, those of a server or store out of reach, worth another try
    (:meth:`is_passing` tells them): ``tether.Unavailable`` (no connection, a
    503), ``tether.DeadlineExceeded`` (no answer in time), a ``TetherError``
    with code ``internal`` (a 500), ``OSError``, the store's own
    (``sqlite3.OperationalError``, ``psycopg.OperationalError``); and, over
    HTTP, ``tether.AuthenticationFailed`` or ``tether.PermissionDenied`` when
    the server refuses the credentials.
    """

    def is_passing(self, exc: BaseException) -> bool:
        """True when ``exc``, raised by an operation, may pass (see above)."""
        ...

    async def open(self) -> None:
        """Connect."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        types: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
        wait: float,
        stop: asyncio.Event,
    ) -> list[Claimed]:
        """Take up to ``limit`` jobs, waiting up to ``wait`` seconds for some.

        Once ``stop`` is set it returns what the request in flight brings: at
        once on the store, after the HTTP long poll in flight answers (at most
        ``HTTP_CLAIM_CHUNK`` seconds) over HTTP.

        Returns:
            The jobs claimed, each with its lease token; an empty list when none came.

        Raises:
            The passing errors and credential refusals of the class docstring.
        """
        ...

    async def heartbeat(
        self,
        job_id: str,
        lease_token: str,
        lease_seconds: float,
        progress: float | None,
        message: str | None,
    ) -> bool:
        """Renew the lease for ``lease_seconds`` more (and record the progress).

        Returns:
            True when cancellation was requested.

        Raises:
            LeaseLost, JobNotFound: the job is no longer this worker's.
            The passing errors and credential refusals of the class docstring
                (the lease was not renewed).
        """
        ...

    async def complete(
        self, job_id: str, lease_token: str, result: Any, job_type: str | None = None
    ) -> None:
        """Finish the job (``job_type``: the job's type, when known).

        Raises:
            InvalidResult: the result did not validate (the job failed with processing_error).
            LeaseLost, JobNotFound: the job is no longer this worker's.
            The passing errors and credential refusals of the class docstring.
        """
        ...

    async def complete_many(
        self, items: Sequence[tuple[str, str, Any, str | None]]
    ) -> list[Exception | None]:
        """Finish several jobs: ``(job_id, lease_token, result, job_type)``; per item
        None, or the error :meth:`complete` would raise."""
        ...

    async def fail(
        self, job_id: str, lease_token: str, error: Mapping[str, Any], retry: bool
    ) -> None:
        """Record a failed attempt (retried after the type's backoff when ``retry``).

        Args:
            error: ``{code, message, details}``.

        Raises:
            LeaseLost, JobNotFound: the job is no longer this worker's.
            The passing errors and credential refusals of the class docstring.
        """
        ...

    async def release(self, job_id: str, lease_token: str) -> None:
        """Hand the job back unfinished.

        Raises:
            LeaseLost, JobNotFound: the job is no longer this worker's.
            The passing errors and credential refusals of the class docstring.
        """
        ...

    async def mark_cancelled(self, job_id: str, lease_token: str) -> None:
        """Acknowledge a cancellation.

        Raises:
            LeaseLost, JobNotFound: the job is no longer this worker's.
            IllegalTransition: no cancellation was requested.
            The passing errors and credential refusals of the class docstring.
        """
        ...


class StoreBackend:
    """A worker backend on the job store itself, through a :class:`JobManager`.

    Args:
        manager: job types (for timeouts, backoff and result validation) and the
            store URL; it is opened by :meth:`open` and closed by :meth:`close`.
    """

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def __repr__(self) -> str:
        return f"<StoreBackend {self.manager!r}>"

    def is_passing(self, exc: BaseException) -> bool:
        """See :meth:`Backend.is_passing` (the store's own transient errors included)."""
        return passing_error(exc, self.manager.transient_errors)

    async def open(self) -> None:
        """Open the store (and start sweeping expired leases)."""
        await self.manager.open()

    async def close(self) -> None:
        """Close the store."""
        await self.manager.close()

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        types: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
        wait: float,
        stop: asyncio.Event,
    ) -> list[Claimed]:
        """See :meth:`Backend.claim`; a stop ends the wait for work at once (the claim
        itself is never interrupted)."""
        store = await self.manager.store()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            claims = await store.claim(
                worker_id=worker_id,
                queues=queues,
                types=types,
                limit=limit,
                lease_seconds=lease_seconds,
            )
            if claims or stop.is_set():
                return [Claimed(c.job, c.lease_token, self._timeout(c.job)) for c in claims]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            waiter = asyncio.ensure_future(store.wait_for_work(queues, remaining, types=types))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if stop.is_set():
                return []

    def _timeout(self, job: Job) -> float | None:
        types = self.manager.types
        return types.get(job.type).options.timeout if job.type in types else None

    async def heartbeat(
        self,
        job_id: str,
        lease_token: str,
        lease_seconds: float,
        progress: float | None,
        message: str | None,
    ) -> bool:
        """See :meth:`Backend.heartbeat`."""
        store = await self.manager.store()
        return await store.heartbeat(
            job_id, lease_token, lease_seconds=lease_seconds, progress=progress, message=message
        )

    async def complete(
        self, job_id: str, lease_token: str, result: Any, job_type: str | None = None
    ) -> None:
        """See :meth:`Backend.complete`."""
        await self.manager.complete(job_id, lease_token, result, job_type=job_type)

    async def complete_many(
        self, items: Sequence[tuple[str, str, Any, str | None]]
    ) -> list[Exception | None]:
        """See :meth:`Backend.complete_many`: the valid results in one store operation."""
        done = await self.manager.complete_many(items)
        return [x if isinstance(x, Exception) else None for x in done]

    async def fail(
        self, job_id: str, lease_token: str, error: Mapping[str, Any], retry: bool
    ) -> None:
        """See :meth:`Backend.fail`."""
        await self.manager.fail(job_id, lease_token, error, retry=retry)

    async def release(self, job_id: str, lease_token: str) -> None:
        """See :meth:`Backend.release`."""
        await self.manager.release(job_id, lease_token)

    async def mark_cancelled(self, job_id: str, lease_token: str) -> None:
        """See :meth:`Backend.mark_cancelled`."""
        await self.manager.mark_cancelled(job_id, lease_token)


class HTTPBackend:
    """A worker backend on the ``/jobs`` HTTP API of a running App.

    Args:
        url: the App's base URL (``http(s)://host:port``); the API is at ``/jobs``.
        timeout: seconds per HTTP call (long polls add their wait).
        token, api_key, username, password, cert, ca, pin_sha256: credentials and
            TLS choices, as for ``tether.Client.connect``; none given: the
            credentials file's entry for ``url`` (``tether login``), then the settings.
            A stored password session that has ended fails with
            ``AuthenticationFailed`` rather than asking for the password.
        settings: where those defaults come from (default: ``get_settings()``).

    Raises:
        ValueError: not an http(s) URL, or conflicting credentials.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = HTTP_TIMEOUT,
        token: str | None = None,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        cert: tuple[str | Path, str | Path] | str | Path | None = None,
        ca: str | Path | None = None,
        pin_sha256: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        from tether.client.auth import resolve
        from tether.settings import get_settings

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.auth: ClientAuth | None
        self.auth, self._ssl = resolve(
            self.url,
            settings or get_settings(),
            token=token,
            api_key=api_key,
            username=username,
            password=password,
            cert=cert,
            ca=ca,
            pin_sha256=pin_sha256,
            interactive=False,  # a worker runs unattended: never a password prompt
        )
        self._transport: AsyncHTTPTransport | None = None

    def __repr__(self) -> str:
        return f"<HTTPBackend {self.url}>"

    def is_passing(self, exc: BaseException) -> bool:
        """See :meth:`Backend.is_passing`."""
        return passing_error(exc)

    async def open(self) -> None:
        """Prepare the connection pool (connections open on first use)."""
        if self._transport is None:
            self._transport = AsyncHTTPTransport(self.url, ssl_context=self._ssl)

    async def close(self) -> None:
        """Close the connection pool (and the credentials' own, if any)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()
        closer = getattr(self.auth, "close", None)
        if closer is not None:
            closer()

    async def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.auth is not None:
            # A token renewal is a blocking request: off the event loop.
            fresh = self.auth.fresh()
            headers.update(
                self.auth.headers() if fresh else await asyncio.to_thread(self.auth.headers)
            )
        return headers

    async def _post(
        self, path: str, body: Mapping[str, Any], timeout: float | None = None
    ) -> tuple[int, Any]:
        if self._transport is None:
            await self.open()
        assert self._transport is not None
        payload = json.dumps(body).encode()
        seconds = timeout or self.timeout
        raw = await self._transport.request(
            "POST", "/jobs" + path, payload, await self._headers(), seconds
        )
        if (
            raw.status == 401
            and self.auth is not None
            and await asyncio.to_thread(self.auth.on_unauthorized)
        ):
            raw = await self._transport.request(
                "POST", "/jobs" + path, payload, await self._headers(), seconds
            )
        data: Any = None
        if raw.body:
            try:
                data = decode_any(raw.body, Codec.JSON)
            except TetherError:
                data = None
        if raw.status >= 400:
            raise _http_error(path, raw.status, data)
        return raw.status, data

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        types: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
        wait: float,
        stop: asyncio.Event,
    ) -> list[Claimed]:
        """See :meth:`Backend.claim`: ``POST /jobs/claim`` long polls of at most
        ``HTTP_CLAIM_CHUNK`` seconds each. A stop never abandons the request in
        flight (the server could claim jobs for a client that left): it ends
        the polling once that request answers, with what it brought."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            chunk = min(max(deadline - loop.time(), 0.0), HTTP_CLAIM_CHUNK)
            body = {
                "worker_id": worker_id,
                "queues": list(queues),
                "types": None if types is None else list(types),
                "limit": limit,
                "lease_seconds": lease_seconds,
                "wait": chunk,
            }
            status, data = await self._post("/claim", body, self.timeout + chunk)
            if status != 204 and data and data.get("jobs"):
                return [
                    Claimed(job_from_wire(entry), entry["lease_token"], entry.get("timeout"))
                    for entry in data["jobs"]
                ]
            if stop.is_set() or loop.time() >= deadline:
                return []

    async def heartbeat(
        self,
        job_id: str,
        lease_token: str,
        lease_seconds: float,
        progress: float | None,
        message: str | None,
    ) -> bool:
        """See :meth:`Backend.heartbeat`."""
        _, data = await self._post(
            f"/{job_id}/heartbeat",
            {
                "lease_token": lease_token,
                "lease_seconds": lease_seconds,
                "progress": progress,
                "message": message,
            },
        )
        return bool(data and data.get("cancel_requested"))

    async def complete(
        self, job_id: str, lease_token: str, result: Any, job_type: str | None = None
    ) -> None:
        """See :meth:`Backend.complete`."""
        await self._post(f"/{job_id}/complete", {"lease_token": lease_token, "result": result})

    async def complete_many(
        self, items: Sequence[tuple[str, str, Any, str | None]]
    ) -> list[Exception | None]:
        """See :meth:`Backend.complete_many`: the requests run concurrently."""

        async def one(job_id: str, token: str, result: Any) -> Exception | None:
            try:
                await self.complete(job_id, token, result)
            except Exception as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(i, t, r) for i, t, r, _ in items)))

    async def fail(
        self, job_id: str, lease_token: str, error: Mapping[str, Any], retry: bool
    ) -> None:
        """See :meth:`Backend.fail`."""
        await self._post(
            f"/{job_id}/fail", {"lease_token": lease_token, "error": dict(error), "retry": retry}
        )

    async def release(self, job_id: str, lease_token: str) -> None:
        """See :meth:`Backend.release`."""
        await self._post(f"/{job_id}/release", {"lease_token": lease_token})

    async def mark_cancelled(self, job_id: str, lease_token: str) -> None:
        """See :meth:`Backend.mark_cancelled`."""
        await self._post(f"/{job_id}/mark-cancelled", {"lease_token": lease_token})


def _http_error(path: str, status: int, data: Any) -> Exception:
    """The exception an error answer of the jobs API stands for."""
    error = data.get("error") if isinstance(data, dict) else None
    job_id = path.split("/")[1] if path.count("/") >= 2 else ""
    if isinstance(error, dict):
        kind = error.get("type")
        if status == 409 and kind == "LeaseLost":
            details = error.get("details") or {}
            return LeaseLost(job_id, str(details.get("reason") or error.get("message") or ""))
        if status == 404 and kind == "JobNotFound":
            return JobNotFound(job_id)
        if status == 409 and kind == "IllegalTransition":
            details = error.get("details") or {}
            return IllegalTransition(
                str(details.get("source") or ""), str(details.get("target") or ""), job_id
            )
        if status == 422 and kind == "InvalidResult":
            details = error.get("details") or {}
            return InvalidResult(str(error.get("message") or ""), details.get("errors"))
    return error_from_envelope(data, status)
