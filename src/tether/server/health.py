"""Readiness checks: named, sync or async, each with a timeout and a cache."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
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
        timeout: seconds; a slower check counts as failed and is cancelled
            (a sync check's thread cannot be stopped and is abandoned).
        cache: seconds a result is reused before the check runs again.
        services: the services that depend on it (None: every service); a
            failing check makes only these unhealthy in the registry.
    """

    name: str
    function: Callable[[], Any]
    timeout: float = 5.0
    cache: float = 0.0
    services: tuple[str, ...] | None = None
    _last: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)

    async def run(self, executor: Executor) -> dict[str, Any]:
        """Run the check (or reuse a cached result).

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
                loop = asyncio.get_running_loop()
                outcome = await asyncio.wait_for(
                    loop.run_in_executor(executor, self.function), self.timeout
                )
            if outcome is False:
                error = "the check returned False"
        except TimeoutError:
            error = f"timed out after {self.timeout} s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        result: dict[str, Any] = {
            "status": "failing" if error else "passing",
            "duration_ms": round((time.monotonic() - now) * 1000, 3),
            "error": error,
        }
        self._last = (time.monotonic(), result)
        return result


async def run_checks(checks: list[HealthCheck], executor: Executor) -> tuple[bool, dict[str, Any]]:
    """Run every check concurrently.

    Returns:
        ``(ready, {name: result})``: ready when every check passes.
    """
    results = await asyncio.gather(*(c.run(executor) for c in checks))
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
