"""Registration of a serving App: register, heartbeat with health, deregister.

:func:`register_app` hooks a :class:`RegistrationAgent` to an App's
start-up and shutdown. At start-up the agent checks that the registry
answers; it registers once the server serves (``ready``: e.g. once its port
answers ``/healthz``, since an ASGI server runs the start-up hooks before
it listens). While the App serves, two tasks run side by side: one runs
the readiness checks every third of the lease and keeps their latest
outcome as each service's health (``critical`` while a check it depends on
fails, so clients stop picking it); the other renews the lease every third
of the lease with that latest health, so a slow check never delays a
heartbeat. A health change is published at once. Neither task ever gives
up: a registry that fails (unreachable, locked, answering errors) is
retried with growing pauses, and an entry that was lost (lease ended
during an outage, registry restarted) is registered again.

At shutdown the agent deregisters. ``tether serve`` runs the shutdown
hooks after the server stopped taking calls and drained those in flight,
so an instance leaves the registry only once it has answered them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tether.registry import (
    DEFAULT_LEASE_SECONDS,
    HealthStatus,
    InstanceNotRegistered,
    InstanceRecord,
    Registry,
    RegistryError,
    ServiceRef,
    open_registry,
)

if TYPE_CHECKING:
    from tether.server.app import App
    from tether.settings import Settings

log = logging.getLogger("tether.registry")

_FIRST_RETRY = 0.2  # seconds before retrying a failed registry operation; doubles


class RegistrationAgent:
    """Keeps one App instance registered.

    Args:
        app: the App; its ``instance_id`` and services are registered.
        registry_url: ``sqlite:///...``, ``nats://...`` or ``memory://NAME``.
        address: the advertised address clients use (``http://host:port`` or
            a relay URL); never guessed.
        lease_seconds: seconds the entry lives without a heartbeat (> 0);
            heartbeats and readiness checks run every third of it.
        metadata: free-form strings published with the instance.
        ready: coroutine function that returns once the server can take
            calls; the instance registers after it (default: at start-up).
        settings: NATS credentials for a ``nats://`` registry (default: the
            process settings).

    Raises:
        ValueError: ``lease_seconds`` is not > 0, or ``registry_url`` is not
            a registry URL.
    """

    def __init__(
        self,
        app: App,
        registry_url: str,
        address: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        metadata: dict[str, str] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
        settings: Settings | None = None,
    ) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        open_registry(registry_url, settings=settings)  # a bad URL fails now
        self.app = app
        self.registry_url = registry_url
        self.address = address
        self.lease_seconds = lease_seconds
        self.metadata = metadata or {}
        self.ready = ready
        self.settings = settings
        self.health: HealthStatus = "passing"
        self.service_health: dict[str, HealthStatus] = {}
        #: True once the entry was written (and until shutdown).
        self.registered = False
        # True once a registration was sent off: cancelled mid-way, its write
        # may still land (SQLite's worker thread goes on, a NATS publish may
        # have left), so shutdown deregisters whenever this is set.
        self._attempted = False
        self._registry: Registry | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health_changed = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<RegistrationAgent {self.app.instance_id} at {self.address} in {self.registry_url} "
            f"health={self.health}>"
        )

    @property
    def interval(self) -> float:
        """Seconds between heartbeats, and between readiness checks: a third of the lease."""
        return self.lease_seconds / 3

    def record(self) -> InstanceRecord:
        """The entry this instance publishes."""
        specs = self.app.dispatcher.services
        return InstanceRecord(
            instance_id=self.app.instance_id,
            services=[ServiceRef(name=s.name, version=s.version) for s in specs.values()],
            address=self.address,
            metadata=self.metadata,
            health=self.health,
            service_health=self.service_health or dict.fromkeys(specs, self.health),
            lease_seconds=self.lease_seconds,
        )

    async def start(self) -> None:
        """Check that the registry answers, then register in the background.

        Returns at once when ``ready`` is given (the server is not listening
        yet); otherwise once the instance is registered.

        Raises:
            RegistryError: the registry cannot be reached at start-up.
        """
        self._registry = registry = open_registry(self.registry_url, settings=self.settings)
        try:
            if self.ready is None:
                await self._check_health()
                await self._register()
            else:
                # Fail start-up on a registry that cannot be reached, as when
                # registering at once would.
                await registry.list(next(iter(self.app.dispatcher.services), None))
        except BaseException:
            self._registry = None
            await registry.close()
            raise
        self._tasks = [asyncio.create_task(self._run(), name="tether-registration")]

    async def _register(self) -> None:
        assert self._registry is not None
        self._attempted = True
        await self._registry.register(self.record(), self.lease_seconds)
        self.registered = True
        log.info("registered %s at %s in %s", self.app.instance_id, self.address, self.registry_url)

    async def _run(self) -> None:
        if self.ready is not None:
            await self._retrying("waiting until it serves", self.ready)
            await self._check_health()
            await self._retrying("registration", self._register)
        self._tasks.append(asyncio.create_task(self._health_loop(), name="tether-health"))
        await self._heartbeat_loop()

    async def _retrying(self, what: str, operation: Callable[[], Awaitable[None]]) -> None:
        """Run ``operation`` until it succeeds, pausing longer after each failure."""
        pause = _FIRST_RETRY
        while True:
            try:
                await operation()
                return
            except Exception as exc:
                self._log_failure(what, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.interval)

    def _log_failure(self, what: str, exc: Exception) -> None:
        expected = isinstance(exc, RegistryError | OSError)
        log.warning(
            "%s of %s in %s failed (will retry): %s: %s",
            what,
            self.app.instance_id,
            self.registry_url,
            type(exc).__name__,
            exc,
            exc_info=not expected,  # an unexpected error: with its traceback
        )

    async def _check_health(self) -> None:
        # A check that some services depend on fails only those: the instance
        # as a whole is then "warning", and "critical" when every service is.
        ready, by_service = await self.app.service_health()
        service_health: dict[str, HealthStatus] = {
            name: "passing" if status == "passing" else "critical"
            for name, status in by_service.items()
        }
        if ready:
            health: HealthStatus = "passing"
        elif all(h == "critical" for h in service_health.values()):
            health = "critical"
        else:
            health = "warning"
        if (health, service_health) != (self.health, self.service_health):
            self._health_changed.set()
        self.health, self.service_health = health, service_health

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._check_health()
            except Exception:
                log.exception("readiness checks of %s failed", self.app.instance_id)

    async def _heartbeat_loop(self) -> None:
        pause = _FIRST_RETRY
        wait = self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                # Woken early by a health change, which is published at once.
                await asyncio.wait_for(self._health_changed.wait(), wait)
            self._health_changed.clear()
            try:
                await self._heartbeat()
            except Exception as exc:
                self._log_failure("heartbeat", exc)
                wait, pause = pause, min(pause * 2, self.interval)
            else:
                wait, pause = self.interval, _FIRST_RETRY

    async def _heartbeat(self) -> None:
        assert self._registry is not None
        try:
            await self._registry.heartbeat(
                self.app.instance_id, health=self.health, service_health=self.service_health
            )
        except InstanceNotRegistered:
            log.warning("registration of %s was lost; registering again", self.app.instance_id)
            await self._register()

    async def stop(self) -> None:
        """Stop heartbeating, deregister and close the registry; never raises.

        Deregisters also when a registration was still in progress (it may
        land after all; the registry runs the removal after it).
        """
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        registry, self._registry = self._registry, None
        if registry is None:
            return
        if self.registered or self._attempted:
            try:
                await registry.deregister(self.app.instance_id)  # an unknown id: a no-op
                log.info("deregistered %s", self.app.instance_id)
            except Exception as exc:
                log.warning("could not deregister %s: %s", self.app.instance_id, exc)
            self.registered = self._attempted = False
        with contextlib.suppress(Exception):
            await registry.close()


def register_app(
    app: App,
    registry_url: str,
    address: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    metadata: dict[str, str] | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
    settings: Settings | None = None,
) -> RegistrationAgent:
    """Register ``app`` while it serves: from start-up (or ``ready``) until shutdown.

    Adds the agent's :meth:`~RegistrationAgent.start` and
    :meth:`~RegistrationAgent.stop` as the App's start-up and shutdown hooks.

    Args:
        app: the App.
        registry_url: ``sqlite:///path``, ``nats://host:port`` or ``memory://NAME``.
        address: the address clients dial, e.g. ``http://10.0.0.5:8000``.
        lease_seconds: seconds the entry lives without a heartbeat (> 0,
            default 10); heartbeats every third of it.
        metadata: free-form strings published with the instance.
        ready: coroutine function returning once the server takes calls; the
            instance registers after it (default: during start-up).
        settings: NATS credentials for a ``nats://`` registry (default: the
            process settings).

    Returns:
        The agent (its ``health`` shows what was last published).

    Raises:
        ValueError: ``lease_seconds`` is not > 0, or ``registry_url`` is not
            a registry URL (at once). At start-up the hook raises
            :class:`~tether.registry.RegistryError` when the registry cannot
            be reached, which fails the server's start-up.
    """
    agent = RegistrationAgent(
        app,
        registry_url,
        address,
        lease_seconds=lease_seconds,
        metadata=metadata,
        ready=ready,
        settings=settings,
    )
    app.on_startup(agent.start)
    app.on_shutdown(agent.stop)
    return agent
