"""Readiness checks: named, sync or async, each with a timeout and a cache.

A sync check runs in a daemon thread of its own, never in the App's thread
pool: a check that hangs cannot starve the service's method calls, nor keep
the process from exiting. A thread cannot be stopped, so a sync check past
its timeout counts as failed and is left to finish; until it does, that
check is not started again and every run reports it as failed ("still
running"), so a hung check costs one thread, not one per run. An async
check past its timeout is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

HealthStatus = Literal["passing", "failing"]


@dataclass
class HealthCheck:
    """One readiness check.

    Attributes:
        name: shown in ``/readyz``.
        function: sync or async callable with no arguments; it passes when it
            returns anything but ``False`` and raises nothing.
        timeout: seconds; a slower check counts as failed. An async check is
            then cancelled; a sync one is left to finish in its thread and is
            not started again until it has.
        cache: seconds a result is reused before the check runs again (0: run
            every time).
        services: the services that depend on it (None: every service); a
            failing check makes only these unhealthy in the registry.
    """

    name: str
    function: Callable[[], Any]
    timeout: float = 5.0
    cache: float = 0.0
    services: tuple[str, ...] | None = None
    _last: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)
    # The sync check's run in progress (thread-safe future) and when it started.
    _running: tuple[float, concurrent.futures.Future[Any]] | None = field(default=None, repr=False)

    async def run(self) -> dict[str, Any]:
        """Run the check (or reuse a cached result); a sync one in a thread of its own.

        Returns:
            ``{"status": "passing"|"failing", "duration_ms": float, "error": str|None}``.
        """
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.cache:
            return self._last[1]
        error: str | None = None
        try:
            if inspect.iscoroutinefunction(self.function):
                outcome = await asyncio.wait_for(self.function(), self.timeout)
            else:
                outcome = await self._run_sync(now)
            if outcome is False:
                error = "the check returned False"
        except TimeoutError:
            error = f"timed out after {self.timeout} s"
        except _StillRunning as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        result: dict[str, Any] = {
            "status": "failing" if error else "passing",
            "duration_ms": round((time.monotonic() - now) * 1000, 3),
            "error": error,
        }
        self._last = (time.monotonic(), result)
        return result

    async def _run_sync(self, now: float) -> Any:
        """The sync check's outcome, within what is left of its timeout.

        Joins a run already in progress that is still within its timeout
        (concurrent ``/readyz`` requests); raises :class:`_StillRunning` while
        a run that is past its timeout has not finished.
        """
        running = self._running
        if running is not None and not running[1].done():
            started, future = running
            left = self.timeout - (now - started)
            if left <= 0:
                raise _StillRunning(
                    f"timed out: the run started {now - started:.1f} s ago "
                    f"has not finished (timeout {self.timeout} s)"
                )
        else:
            future = concurrent.futures.Future()
            self._running = (now, future)
            # A daemon thread: a check that hangs must not keep the process from exiting.
            threading.Thread(
                target=_run_into,
                args=(self.function, future),
                name=f"tether-check-{self.name}",
                daemon=True,
            ).start()
            left = self.timeout
        outcome = asyncio.wrap_future(future)
        outcome.add_done_callback(_retrieve)  # a run that ends after its timeout: no warning
        # shield: a timeout here must not cancel the future other runs share.
        return await asyncio.wait_for(asyncio.shield(outcome), left)


class _StillRunning(Exception):
    """A sync check's earlier run is past its timeout and has not finished."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _run_into(function: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
    """Run ``function`` in this (daemon) thread and put its outcome into ``future``."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function()
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def run_checks(checks: list[HealthCheck]) -> tuple[bool, dict[str, Any]]:
    """Run every check concurrently (sync checks in threads of their own).

    Args:
        checks: the checks.

    Returns:
        ``(ready, {name: result})``: ready when every check passes.
    """
    results = await asyncio.gather(*(c.run() for c in checks))
    by_name = {c.name: r for c, r in zip(checks, results, strict=True)}
    return all(r["status"] == "passing" for r in results), by_name


def service_health(
    checks: list[HealthCheck], results: dict[str, Any], services: Iterable[str]
) -> dict[str, HealthStatus]:
    """Each service's health from the checks' ``results`` (as :func:`run_checks` gives them).

    A service is ``failing`` when a check it depends on fails: a check with
    ``services=None`` covers every service.
    """
    health: dict[str, HealthStatus] = dict.fromkeys(services, "passing")
    for check in checks:
        if results[check.name]["status"] == "passing":
            continue
        for service in check.services if check.services is not None else list(health):
            if service in health:
                health[service] = "failing"
    return health
