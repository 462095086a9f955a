"""``tether.Worker``: claims jobs with leases and runs their handlers.

A worker runs either the handlers an App registered (``@app.job``) or its own
``run(self, parameters)`` when subclassed (the TopChef model)::

    class Reverse(tether.Worker):
        job_types = ["reverse"]

        def run(self, parameters: dict) -> dict:
            return {"text": parameters["text"][::-1]}

    Reverse(url="http://127.0.0.1:8000").serve()          # over the HTTP API
    tether.Worker(app, concurrency=4).serve()               # straight to app's store

While a job runs, the worker heartbeats (every third of the lease) to keep
its lease and send progress; a heartbeat that answers "cancellation requested"
sets ``ctx.cancelled`` (and cancels an async handler's task). A job type's
``timeout`` bounds each attempt. A handler's exception fails the attempt: a
``tether.ServiceError`` (raised on purpose) fails the job for good, anything
else is retried after the job type's backoff while attempts remain. SIGTERM
or SIGINT stops claiming, lets running jobs finish for ``grace`` seconds, then
hands back (``release``) those still running, so none is lost; a second
signal ends the grace at once.

Leases fence the runs of a job, and only as well as time allows: a worker
that cannot renew a lease (the server or database out of reach, a heartbeat
that hangs) takes it as lost when it ends, since another worker may claim the
job from then on: it cancels an async handler and tells a sync one
(``ctx.cancelled``, reason ``lease_lost``), and records nothing. A failed
heartbeat is tried again every ``HEARTBEAT_RETRY`` seconds, each bounded by
the time the lease has left. Python cannot stop a thread: a sync handler
that ignores ``ctx.cancelled`` then runs on beside the job's next run.

Otherwise a job never runs twice at once because of this worker: a sync
handler past its timeout, or asked to stop at shutdown, keeps its job's lease
(the heartbeats go on) until its thread returns; only then is the outcome
recorded (``deadline_exceeded`` for a timeout) or the job handed back. Two
exceptions: a sync handler still running a whole lease past its timeout is
given up (the attempt fails with ``deadline_exceeded``, logged as an error;
its thread keeps its slot until it returns), and a third signal gives up on
every such thread: the worker exits without handing their jobs back, and
their leases expire (as if killed). A job claimed again while a thread of an
earlier attempt still runs here waits for that thread, within its timeout.
Recording an outcome that fails for a passing reason (the server or the
database unreachable) is retried with backoff while the lease lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic_core import PydanticSerializationError, to_jsonable_python

from tether.errors import ServiceError, TetherError
from tether.jobs.backends import HTTP_TIMEOUT, Backend, Claimed, HTTPBackend, StoreBackend
from tether.jobs.context import JobContext
from tether.jobs.errors import IllegalTransition, JobNotFound, LeaseLost
from tether.jobs.exceptions import InvalidResult, JobCancelled, JobValidationError
from tether.jobs.manager import JobManager
from tether.jobs.types import JobTypeRegistry

if TYPE_CHECKING:
    from tether.server.app import App
    from tether.settings import Settings

log = logging.getLogger("tether.jobs.worker")

#: Shortest pause between two heartbeats that carry progress, in seconds.
MIN_PROGRESS_INTERVAL = 0.25
#: Seconds before trying again a heartbeat that failed (at most a third of the lease).
HEARTBEAT_RETRY = 1.0
#: Seconds before the first retry of recording an outcome; doubled each time up to
#: ``RECORD_RETRY_MAX``.
RECORD_RETRY_FIRST = 0.2
RECORD_RETRY_MAX = 5.0


@dataclass(eq=False)
class _Running:
    """A job this worker holds, with the events that end its handler's run."""

    claimed: Claimed
    ctx: JobContext
    is_async: bool
    #: The loop time the lease ends at, as far as this worker knows (renewed by heartbeats).
    lease_until: float
    #: A heartbeat answered that cancellation was requested.
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    #: The grace period ended: the handler is asked to stop; the job is handed back.
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    #: The lease is gone (expired, or the job moved on): the job is no longer ours.
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    #: The worker gives up waiting for the handler (a third signal).
    abandon: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set with any of the events above (one waiter per job instead of four).
    news: asyncio.Event = field(default_factory=asyncio.Event)

    def tell(self, event: asyncio.Event) -> None:
        """Set ``event`` (one of this job's) and wake whoever watches the job."""
        event.set()
        self.news.set()


@dataclass(frozen=True)
class _Outcome:
    # ok, error, timeout, overdue, cancelled, lease_lost, shutdown, abandoned, invalid
    kind: str
    value: Any = None


class Worker:
    """Runs jobs: an App's registered handlers, or :meth:`run` in a subclass.

    Args:
        app: the App whose job types (and handlers) to run. Without ``url`` the
            worker goes straight to the App's job store (``App(job_store=...)``,
            ``TETHER_JOB_STORE_URL``, or the SQLite file in the state directory).
        url: run over the HTTP API of the App served at this base URL instead
            (what workers in other languages do; the server validates results).
        store: a job store URL to use instead of the App's.
        queues: queues to take jobs from (default: the queues of the job types run).
        types: job types to run (default: every type with a handler, or
            ``job_types`` of a subclass).
        concurrency: jobs run at once (sync handlers each take a thread).
        lease: seconds of each lease; heartbeats renew it every ``lease / 3``. A
            lease that ends unrenewed stops its job's handler; a sync handler
            running past its timeout is given up a lease later.
        grace: seconds running jobs get to finish after a stop before they are
            handed back.
        timeout: seconds per attempt for job types that set none (None: unlimited).
        claim_wait: seconds one long poll for work lasts.
        worker_id: this worker's name in the store (default: host:pid:random).
        token, api_key, username, password, cert, ca, pin_sha256: with ``url``,
            the credentials and TLS choices, as for ``tether.Client.connect``
            (default: the credentials file's entry for ``url``, then the settings).
        settings: with ``url``, the settings that supply those defaults
            (default: :func:`tether.settings.get_settings`).

    Raises:
        ValueError: nothing to run, bad numbers, conflicting credentials, or
            credentials and TLS options (``pin_sha256`` included) without ``url``.

    A store-direct worker without an App (a subclass given ``store=``) cannot
    check results against schemas: it only requires JSON objects. Give it the
    App, or use ``url=``.
    """

    #: Job types a subclass's :meth:`run` handles.
    job_types: ClassVar[Sequence[str]] = ()

    def __init__(
        self,
        app: App | None = None,
        *,
        url: str | None = None,
        store: str | None = None,
        queues: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        concurrency: int = 1,
        lease: float = 30.0,
        grace: float = 30.0,
        timeout: float | None = None,
        claim_wait: float = 10.0,
        worker_id: str | None = None,
        token: str | None = None,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        cert: tuple[str | Path, str | Path] | str | Path | None = None,
        ca: str | Path | None = None,
        pin_sha256: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if lease <= 0 or grace < 0 or claim_wait < 0:
            raise ValueError("lease must be > 0, grace and claim_wait >= 0 seconds")
        self.app = app
        self.registry = app.jobs.types if app is not None else JobTypeRegistry()
        self.concurrency = concurrency
        self.lease = lease
        self.grace = grace
        self.default_timeout = timeout
        self.claim_wait = claim_wait
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self._overrides_run = type(self).run is not Worker.run
        if types is not None:
            self.types = list(types)
        elif self._overrides_run:
            self.types = list(self.job_types)
        else:
            self.types = [t.name for t in self.registry if t.handler is not None]
        if not self.types:
            raise ValueError(
                "this worker has nothing to run: register handlers with @app.job, or subclass "
                "Worker with job_types and run(), or pass types="
            )
        if queues is not None:
            self.queues = list(queues)
        else:
            found = {self.registry.get(t).options.queue for t in self.types if t in self.registry}
            self.queues = sorted(found) or ["default"]
        self.backend: Backend
        if url is not None:
            self.backend = HTTPBackend(
                url,
                token=token,
                api_key=api_key,
                username=username,
                password=password,
                cert=cert,
                ca=ca,
                pin_sha256=pin_sha256,
                settings=settings,
            )
        else:
            http_only = (token, api_key, username, password, cert, ca, pin_sha256)
            if any(v is not None for v in http_only):
                raise ValueError("credentials and TLS options need url= (an HTTP worker)")
            store_url = store or (app.jobs.store_url if app is not None else None)
            # The App's job metrics (if any) count what this worker finishes.
            observer = app.jobs.observer if app is not None else None
            self.backend = StoreBackend(JobManager(self.registry, store_url, observer=observer))
        self._run_takes_context = self._overrides_run and _positional_count(self.run) == 2
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[_Running] = set()
        # Sync handlers' threads still running, by job id: a job claimed again while
        # its earlier run's thread goes on waits for that thread first.
        self._threads: dict[str, asyncio.Future[Any]] = {}
        self._busy = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace_over: asyncio.Event | None = None
        self._abandon: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._stopping = False
        self._completions: list[tuple[str, str, Any, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.abandoned_threads = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.worker_id} types={self.types} queues={self.queues} "
            f"concurrency={self.concurrency} via {self.backend!r}>"
        )

    # -- to override ---------------------------------------------------------------------

    def run(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Run one job of ``job_types`` (override in a subclass; may be ``async def``,
        and may take a second parameter, the :class:`JobContext`).

        Args:
            parameters: the job's JSON parameters (already validated at submit).

        Returns:
            The result, a JSON object (validated against the result schema).

        Raises:
            Exception: any error fails the attempt (retried while attempts remain).
        """
        raise NotImplementedError("subclass Worker and implement run(), or give it an App")

    # -- running -------------------------------------------------------------------------

    def serve(self, *, install_signal_handlers: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`stop`), blocking; see :meth:`serve_async`."""
        asyncio.run(self.serve_async(install_signal_handlers=install_signal_handlers))

    def stop(self) -> None:
        """Ask the worker to stop gracefully (safe from any thread or a signal handler).

        The first call stops claiming and gives running jobs ``grace`` seconds;
        a second one ends the grace at once (handlers are asked to stop, their
        jobs handed back once they return); a third one exits without waiting
        for sync handlers still running (their jobs' leases then expire).
        """
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_stop)

    def _on_stop(self) -> None:
        assert self._stop is not None and self._grace_over is not None
        assert self._abandon is not None
        if not self._stop.is_set():
            self._stop.set()
        elif not self._grace_over.is_set():
            self._grace_over.set()
        else:
            self._abandon.set()

    async def serve_async(self, *, install_signal_handlers: bool = False) -> None:
        """Claim and run jobs until stopped, then finish or hand back those running.

        Raises:
            ValueError, sqlite3.Error, psycopg.Error: the store cannot be opened.
        """
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._grace_over = asyncio.Event()
        self._abandon = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tether-job")
        if self._stopping:  # stop() came before the loop ran
            self._stopping = False
            self._stop.set()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._on_stop)
                    installed.append(sig)
        await self.backend.open()
        tasks: set[asyncio.Task[None]] = set()
        log.info("worker %s started: %r", self.worker_id, self)
        try:
            while not self._stop.is_set():
                free = self.concurrency - self._busy
                if free <= 0:
                    await _first(self._slot_freed.wait(), self._stop.wait())
                    self._slot_freed.clear()
                    continue
                try:
                    claims = await self.backend.claim(
                        self.worker_id,
                        self.queues,
                        self.types,
                        free,
                        self.lease,
                        self.claim_wait,
                        self._stop,
                    )
                except Exception as exc:
                    log.warning("claiming jobs failed (%s: %s); retrying", type(exc).__name__, exc)
                    await _first(asyncio.sleep(1.0), self._stop.wait())
                    continue
                for claimed in claims:
                    if self._stop.is_set():
                        await self._hand_back(claimed)
                        continue
                    self._busy += 1
                    task = loop.create_task(self._run_job(claimed))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            await self._drain(tasks)
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.backend.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop = None
            log.info("worker %s stopped", self.worker_id)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Let running jobs finish within the grace period, then ask the rest to stop
        and hand them back once their handlers return (or at once when abandoned)."""
        assert self._grace_over is not None and self._abandon is not None
        loop = asyncio.get_running_loop()
        if tasks:
            log.info("waiting up to %.1f s for %d running job(s)", self.grace, len(tasks))
            deadline = loop.time() + self.grace
            over = loop.create_task(self._grace_over.wait())
            try:
                while tasks and not over.done() and loop.time() < deadline:
                    await asyncio.wait(
                        {*tasks, over},
                        timeout=deadline - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            finally:
                over.cancel()
        self._grace_over.set()
        for running in list(self._running):
            running.ctx._cancel("shutdown")
            running.tell(running.shutdown)
        if not tasks:
            return
        abandon = loop.create_task(self._abandon.wait())
        try:
            while tasks and not abandon.done():
                log.info(
                    "waiting for %d job(s) asked to stop; their leases are kept until their "
                    "handlers return (signal again to exit without them)",
                    len(tasks),
                )
                await asyncio.wait({*tasks, abandon}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandon.cancel()
        for running in list(self._running):
            running.tell(running.abandon)
        if tasks:
            await asyncio.wait(set(tasks))

    async def _hand_back(self, claimed: Claimed) -> None:
        try:
            await self.backend.release(claimed.job.id, claimed.lease_token)
        except Exception as exc:
            log.warning(
                "handing back job %s failed: %s (its lease will expire)", claimed.job.id, exc
            )

    def _free_slot(self) -> None:
        self._busy -= 1
        if self._slot_freed is not None:
            self._slot_freed.set()

    # -- one job -------------------------------------------------------------------------

    def _handler(self, job_type: str) -> tuple[Callable[..., Any], bool, bool]:
        """Return ``(function, takes_context, typed)`` for a job type."""
        if self._overrides_run:
            return self.run, self._run_takes_context, False
        jt = self.registry.get(job_type)
        if jt.handler is None:
            raise LookupError(f"job type {job_type!r} has no handler in this worker")
        return jt.handler, jt.takes_context, True

    async def _run_job(self, claimed: Claimed) -> None:
        job = claimed.job
        assert self._loop is not None
        timeout = claimed.timeout if claimed.timeout is not None else self.default_timeout
        ctx = JobContext(job, timeout, self._loop)
        inner: asyncio.Future[Any] | None = None
        outcome: _Outcome | None = None
        try:
            fn, takes_ctx, typed = self._handler(job.type)
        except LookupError as exc:
            fn, takes_ctx, typed = self.run, False, False
            outcome = _Outcome("invalid", str(exc))
        is_async = inspect.iscoroutinefunction(fn)
        # The lease began a moment before the claim answered; assume it ends a little sooner.
        running = _Running(claimed, ctx, is_async, self._loop.time() + self.lease * 0.9)
        self._running.add(running)
        beats = self._loop.create_task(self._heartbeats(running))
        slot = [True]  # this job still holds a concurrency slot
        try:
            if outcome is None:
                outcome = await self._after_earlier_run(running, timeout)
            if outcome is None:
                try:
                    params = (
                        self.registry.get(job.type).load_parameters(job.parameters)
                        if typed
                        else job.parameters
                    )
                except JobValidationError as exc:
                    outcome = _Outcome("invalid", exc.message)
                else:
                    args = (params, ctx) if takes_ctx else (params,)
                    inner = self._start(fn, args, ctx, is_async)
                    if not is_async:
                        self._track_thread(job.id, inner)
                    outcome = await self._watch(running, inner, timeout)
            # The handler is done (or abandoned): its slot may take the next job while
            # the outcome is recorded (still under this job's lease and heartbeats).
            self._give_back_slot(slot, inner)
            await self._settle(running, outcome)
        except Exception:
            log.exception("job %s: unexpected worker error", job.id)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            self._running.discard(running)
            self._give_back_slot(slot, inner)

    async def _after_earlier_run(self, running: _Running, timeout: float | None) -> _Outcome | None:
        """Wait (holding the new lease) for a thread still running an earlier attempt of
        the same job, whose lease this worker lost or gave up; None once it is gone.

        The wait counts against the attempt's ``timeout``: past it the attempt
        fails (``deadline_exceeded``) without having started, so that a thread
        that never returns cannot hold the job through every attempt.
        """
        job_id = running.claimed.job.id
        earlier = self._threads.get(job_id)
        if earlier is None or earlier.done():
            return None
        log.warning(
            "job %s: claimed again while the thread of its earlier attempt still runs here; "
            "waiting for that thread first",
            job_id,
        )
        waiters = [asyncio.ensure_future(e.wait()) for e in (running.lost, running.abandon)]
        try:
            await asyncio.wait(
                {earlier, *waiters}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
        if running.lost.is_set():
            return _Outcome("lease_lost")
        if running.abandon.is_set():
            return _Outcome("abandoned")
        if not earlier.done():
            log.error(
                "job %s: the thread of its earlier attempt still runs after this attempt's "
                "timeout of %s s; failing this attempt without starting it",
                job_id,
                timeout,
            )
            return _Outcome("timeout", timeout)
        if running.shutdown.is_set():
            return _Outcome("shutdown")  # never started: hand it back
        return None

    def _track_thread(self, job_id: str, inner: asyncio.Future[Any]) -> None:
        self._threads[job_id] = inner

        def forget(_: Any) -> None:
            if self._threads.get(job_id) is inner:
                del self._threads[job_id]

        inner.add_done_callback(forget)

    def _give_back_slot(self, slot: list[bool], inner: asyncio.Future[Any] | None) -> None:
        """Free a job's slot once; a sync handler still running keeps it until it returns."""
        if not slot[0]:
            return
        slot[0] = False
        if inner is not None and not inner.done():
            self.abandoned_threads += 1

            def freed(_: Any) -> None:
                self.abandoned_threads -= 1
                self._free_slot()

            inner.add_done_callback(freed)
        else:
            self._free_slot()

    def _start(
        self, fn: Callable[..., Any], args: tuple[Any, ...], ctx: JobContext, is_async: bool
    ) -> asyncio.Future[Any]:
        assert self._loop is not None
        if is_async:

            async def call_async() -> Any:
                token = ctx._enter()
                try:
                    return await fn(*args)
                finally:
                    ctx._exit(token)

            return self._loop.create_task(call_async())

        def call_sync() -> Any:
            token = ctx._enter()
            try:
                return fn(*args)
            finally:
                ctx._exit(token)

        assert self._executor is not None
        return self._loop.run_in_executor(self._executor, call_sync)

    async def _watch(
        self, running: _Running, inner: asyncio.Future[Any], timeout: float | None
    ) -> _Outcome:
        """Wait for the handler, its timeout, a cancellation, a lost lease or a shutdown.

        An async handler is cancelled at its timeout, at a cancellation request
        and at shutdown. A sync one is only told (``ctx.cancelled``): its job
        stays leased until its thread returns, so that it never runs twice at
        once, unless the lease is lost, the worker gives up on it (a third
        signal), or it runs on for a whole lease past its timeout: then the
        attempt is over (``overdue``: failed with ``deadline_exceeded``) and its
        thread is left to run.
        """
        assert self._loop is not None
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        # How long a sync handler may run past its timeout before its job is given up.
        overdue = None if deadline is None else deadline + self.lease
        events = {
            "lease_lost": running.lost,
            "shutdown": running.shutdown,
            "cancel_requested": running.cancel_event,
            "abandoned": running.abandon,
        }
        seen: set[str] = set()
        news: asyncio.Task[Any] | None = None
        timed_out = False
        try:
            while True:
                if news is None:
                    news = loop.create_task(running.news.wait())
                until = overdue if timed_out else deadline
                left = None if until is None else max(until - loop.time(), 0.0)
                done, _ = await asyncio.wait(
                    {inner, news}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if inner in done:
                    break
                if news not in done and timed_out:  # a whole lease past the timeout
                    log.error(
                        "job %s: its sync handler still runs %.1f s past its timeout of %s s, "
                        "ignoring ctx.cancelled; failing the attempt and leaving the thread "
                        "(and its slot) to it: the job may run again elsewhere meanwhile",
                        running.claimed.job.id,
                        self.lease,
                        timeout,
                    )
                    return _Outcome("overdue", timeout)
                if news not in done:  # the timeout
                    timed_out = True
                    running.ctx._cancel("timeout")
                    if running.is_async:
                        await _cancel_and_join(inner, running)
                        return _Outcome("timeout", timeout)
                    continue  # keep the lease until the thread returns, or is overdue
                news = None
                running.news.clear()
                fired = {name for name, event in events.items() if event.is_set()} - seen
                seen |= fired
                if "lease_lost" in fired:
                    if running.is_async:
                        await _cancel_and_join(inner, running)
                    return _Outcome("lease_lost")
                if "abandoned" in fired:
                    return _Outcome("abandoned")
                if "shutdown" in fired and running.is_async:
                    await _cancel_and_join(inner, running)
                    return _Outcome("shutdown")
                if "cancel_requested" in fired and running.is_async:
                    inner.cancel()  # cooperative for sync handlers: they see ctx.cancelled
        finally:
            if news is not None:
                news.cancel()
        if timed_out:
            return _Outcome("timeout", timeout)
        if inner.cancelled():
            return _Outcome("cancelled")
        exc = inner.exception()
        if exc is not None:
            return _Outcome("error", exc)
        return _Outcome("ok", inner.result())

    async def _settle(self, running: _Running, outcome: _Outcome) -> None:
        """Tell the store how the attempt ended."""
        job, token = running.claimed.job, running.claimed.lease_token
        cancel_requested = running.cancel_event.is_set()
        stopped = outcome.kind == "cancelled" or (
            outcome.kind == "error" and isinstance(outcome.value, JobCancelled)
        )
        try:
            if outcome.kind == "lease_lost" or running.lost.is_set():
                log.warning("job %s: lease lost; dropped without a word to the store", job.id)
            elif outcome.kind == "abandoned":
                log.warning(
                    "job %s: its handler still runs; left to its lease, which will expire", job.id
                )
            elif cancel_requested and outcome.kind != "ok":
                await self._persist(running, lambda: self.backend.mark_cancelled(job.id, token))
                log.info("job %s cancelled", job.id)
            elif outcome.kind == "timeout":
                await self._fail(
                    running,
                    "deadline_exceeded",
                    f"the attempt ran past its timeout of {outcome.value} s",
                    {"timeout": outcome.value, "attempt": job.attempts},
                    retry=True,
                )
            elif outcome.kind == "overdue":
                await self._fail(
                    running,
                    "deadline_exceeded",
                    f"the attempt ran past its timeout of {outcome.value} s and its handler "
                    f"did not return within {self.lease} s more (its thread was left running)",
                    {
                        "timeout": outcome.value,
                        "attempt": job.attempts,
                        "abandoned_after": self.lease,
                    },
                    retry=True,
                )
            elif outcome.kind == "ok" and cancel_requested:
                await self._persist(running, lambda: self.backend.mark_cancelled(job.id, token))
                log.info("job %s cancelled (its handler had finished)", job.id)
            elif outcome.kind == "ok":
                await self._record_result(running, outcome.value)
            elif outcome.kind == "shutdown" or running.shutdown.is_set():
                await self._persist(running, lambda: self.backend.release(job.id, token))
                log.info("job %s handed back at shutdown", job.id)
            elif stopped:
                # Stopped by its own decision (no request, no timeout, no shutdown).
                message = str(outcome.value or "the handler cancelled the job")
                await self._fail(running, "cancelled", message, None, retry=False)
            elif outcome.kind == "invalid":
                await self._fail(running, "processing_error", str(outcome.value), None, retry=False)
            else:
                # A ServiceError is raised on purpose: retrying would not change it.
                error = _error_info(outcome.value)
                retry = not isinstance(outcome.value, ServiceError)
                await self._fail(running, error["code"], error["message"], error["details"], retry)
        except (LeaseLost, JobNotFound, IllegalTransition) as exc:
            log.warning("job %s: %s; the outcome was not recorded", job.id, exc)
        except Exception as exc:
            log.warning(
                "job %s: recording its outcome failed (%s: %s); its lease will expire",
                job.id,
                type(exc).__name__,
                exc,
            )

    async def _record_result(self, running: _Running, value: Any) -> None:
        """Complete the job with ``value`` (failing it when that is no JSON)."""
        job, token = running.claimed.job, running.claimed.lease_token
        try:
            result = to_jsonable_python(value, by_alias=True)
        except PydanticSerializationError as exc:
            message = f"the result is not JSON-serialisable: {exc}"
            await self._fail(running, "processing_error", message, None, retry=False)
            return
        try:
            await self._persist(running, lambda: self._complete(job.id, token, result, job.type))
        except InvalidResult as exc:
            log.warning("job %s: invalid result, failed: %s", job.id, exc.message)

    async def _fail(
        self, running: _Running, code: str, message: str, details: Any, retry: bool
    ) -> None:
        """Record the attempt as failed (``retry``: after the backoff, attempts allowing)."""
        job, token = running.claimed.job, running.claimed.lease_token
        error = {"code": code, "message": message, "details": details}
        await self._persist(running, lambda: self.backend.fail(job.id, token, error, retry))

    async def _persist(self, running: _Running, call: Callable[[], Awaitable[None]]) -> None:
        """Run ``call`` (one store or API call about the job), retrying with backoff
        while it fails for a passing reason and the lease lasts.

        Raises:
            What ``call`` raised: at once for a definite answer (LeaseLost,
            InvalidResult...), else once the lease would end before another try.
        """
        assert self._loop is not None
        delay = RECORD_RETRY_FIRST
        while True:
            try:
                await call()
                return
            except Exception as exc:
                if not self.backend.is_passing(exc):
                    raise
                left = running.lease_until - self._loop.time()
                if left <= delay or running.lost.is_set() or running.abandon.is_set():
                    raise
                log.warning(
                    "job %s: recording its outcome failed (%s: %s); retrying in %.1f s",
                    running.claimed.job.id,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            await _first(asyncio.sleep(delay), running.lost.wait(), running.abandon.wait())
            delay = min(delay * 2, RECORD_RETRY_MAX)

    async def _complete(self, job_id: str, token: str, result: Any, job_type: str) -> None:
        """Complete a job with others finishing at the same moment, in one store call.

        Raises:
            InvalidResult, LeaseLost, JobNotFound: as ``Backend.complete``.
        """
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._completions.append((job_id, token, result, job_type, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = self._loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        """Send the pending completions, in batches, until none is left."""
        while self._completions:
            await asyncio.sleep(0)  # let the jobs finishing in this turn join the batch
            batch, self._completions = self._completions[:500], self._completions[500:]
            try:
                answers: list[Exception | None] = await self.backend.complete_many(
                    [(job_id, token, result, kind) for job_id, token, result, kind, _ in batch]
                )
            except Exception as exc:
                answers = [exc] * len(batch)
            for (*_, done), answer in zip(batch, answers, strict=True):
                if done.done():
                    continue
                if answer is None:
                    done.set_result(None)
                else:
                    done.set_exception(answer)

    async def _heartbeats(self, running: _Running) -> None:
        """Renew the lease every ``lease / 3`` s, sooner to carry progress, and
        ``HEARTBEAT_RETRY`` s after a beat that failed.

        Each beat may take until the lease ends (at most ``HTTP_TIMEOUT`` s). Once
        the lease ends without a renewal (the server or store out of reach, a
        beat that hangs) another worker may claim the job, so this one takes the
        lease as lost: it stops the handler (cancels an async one's task, sets
        ``ctx.cancelled`` with reason ``lease_lost`` for a sync one) and records
        nothing.
        """
        ctx, claimed = running.ctx, running.claimed
        wake = ctx._wake
        loop = self._loop
        assert wake is not None and loop is not None
        interval = self.lease / 3
        last = loop.time()
        pause = interval  # from the last beat to the next one
        failure: str | None = None
        while True:
            due = min(last + pause, running.lease_until)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due - loop.time()):
                    await wake.wait()  # (asyncio.timeout: no task of its own, unlike wait_for)
            wake.clear()
            gap = loop.time() - last
            if gap < MIN_PROGRESS_INTERVAL:
                await asyncio.sleep(MIN_PROGRESS_INTERVAL - gap)
            now = loop.time()
            left = running.lease_until - now
            if left <= 0 and failure is not None:
                self._lease_ended(running, failure)
                return
            progress = ctx._take_progress()
            if progress is None and now - last < pause * 0.9:
                continue  # woken without news (a cancellation of our own): no beat needed
            last = now
            # Past the lease without a failure (the loop was held up): one short try, as
            # a renewal the store accepts proves the lease is still this worker's.
            bound = min(HTTP_TIMEOUT, left if left > 0 else HEARTBEAT_RETRY)
            try:
                async with asyncio.timeout(bound):
                    cancel = await self.backend.heartbeat(
                        claimed.job.id,
                        claimed.lease_token,
                        self.lease,
                        progress[0] if progress else None,
                        progress[1] if progress else None,
                    )
            except (LeaseLost, JobNotFound) as exc:
                log.warning("job %s: %s", claimed.job.id, exc)
                ctx._cancel("lease_lost")
                running.tell(running.lost)
                return
            except Exception as exc:
                failure = (
                    f"no answer within {bound:.1f} s"
                    if isinstance(exc, TimeoutError) and not str(exc)
                    else f"{type(exc).__name__}: {exc}"
                )
                if progress is not None:
                    with ctx._lock:  # keep the news for the next beat
                        if ctx._progress is None:
                            ctx._progress = progress
                if loop.time() >= running.lease_until:
                    self._lease_ended(running, failure)
                    return
                pause = min(interval, HEARTBEAT_RETRY)
                log.warning(
                    "job %s: heartbeat failed (%s); retrying in %.1f s (the lease ends in %.1f s)",
                    claimed.job.id,
                    failure,
                    pause,
                    running.lease_until - loop.time(),
                )
                continue
            failure = None
            pause = interval
            running.lease_until = last + self.lease * 0.9
            if cancel and not running.cancel_event.is_set():
                ctx._cancel("cancel_requested")
                running.tell(running.cancel_event)

    def _lease_ended(self, running: _Running, failure: str) -> None:
        """The lease ran out without a renewal: stop the handler, drop the job."""
        log.error(
            "job %s: no heartbeat got through before its lease ended (%s); the job may run "
            "elsewhere now: its handler is asked to stop and its outcome will not be recorded",
            running.claimed.job.id,
            failure,
        )
        running.ctx._cancel("lease_lost")
        running.tell(running.lost)


def _positional_count(fn: Callable[..., Any]) -> int:
    return len(
        [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    )


def _error_info(exc: BaseException) -> dict[str, Any]:
    """``{code, message, details}`` for an exception a handler raised."""
    if isinstance(exc, TetherError):
        return {"code": exc.code.value, "message": exc.message, "details": exc.details}
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "code": "handler_error",
        "message": f"{type(exc).__name__}: {exc}",
        "details": {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "traceback": text[-4000:],
        },
    }


async def _cancel_and_join(inner: asyncio.Future[Any], running: _Running) -> None:
    """Cancel an async handler's task and wait until it ends (or the worker gives up)."""
    inner.cancel()
    abandon = asyncio.ensure_future(running.abandon.wait())
    try:
        await asyncio.wait({inner, abandon}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        abandon.cancel()
    if inner.done() and not inner.cancelled():
        inner.exception()  # retrieved: an error while stopping is not worth a warning


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
