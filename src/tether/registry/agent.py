"""Registration of a serving App: register, heartbeat with health, deregister.

:func:`register_app` hooks a :class:`RegistrationAgent` to an App's
start-up and shutdown. While the App serves, the agent renews its lease
every third of the lease, carrying the readiness checks' outcome as each
service's health (``critical`` while a check it depends on fails, so
clients stop picking it); it registers again when the entry was lost (a
registry restart, a long pause) and rides out a registry that is briefly
unreachable. At shutdown, which ASGI servers reach after draining the calls
in flight, it deregisters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

log = logging.getLogger("tether.registry")


class RegistrationAgent:
    """Keeps one App instance registered.

    Args:
        app: the App; its ``instance_id`` and services are registered.
        registry_url: ``sqlite:///...``, ``nats://...`` or ``memory://NAME``.
        address: the advertised address clients use (``http://host:port`` or
            a relay URL); never guessed.
        lease_seconds: how long the entry lives without a heartbeat.
        metadata: free-form strings published with the instance.
    """

    def __init__(
        self,
        app: App,
        registry_url: str,
        address: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.registry_url = registry_url
        self.address = address
        self.lease_seconds = lease_seconds
        self.metadata = metadata or {}
        self.health: HealthStatus = "passing"
        self.service_health: dict[str, HealthStatus] = {}
        self._registry: Registry | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<RegistrationAgent {self.app.instance_id} at {self.address} in {self.registry_url} "
            f"health={self.health}>"
        )

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
        """Check health, register and start heartbeating.

        Raises:
            RegistryError: the registry cannot be reached at start-up.
        """
        self._registry = open_registry(self.registry_url)
        await self._check_health()
        await self._registry.register(self.record(), self.lease_seconds)
        log.info("registered %s at %s in %s", self.app.instance_id, self.address, self.registry_url)
        self._task = asyncio.create_task(self._heartbeats(), name="tether-heartbeat")

    async def _check_health(self) -> None:
        # A check that some services depend on fails only those: the instance
        # as a whole is then "warning", and "critical" when every service is.
        ready, by_service = await self.app.service_health()
        self.service_health = {
            name: "passing" if status == "passing" else "critical"
            for name, status in by_service.items()
        }
        if ready:
            self.health = "passing"
        elif all(h == "critical" for h in self.service_health.values()):
            self.health = "critical"
        else:
            self.health = "warning"

    async def _heartbeats(self) -> None:
        assert self._registry is not None
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._check_health()
                try:
                    await self._registry.heartbeat(
                        self.app.instance_id,
                        health=self.health,
                        service_health=self.service_health,
                    )
                except InstanceNotRegistered:
                    log.warning(
                        "registration of %s was lost; registering again", self.app.instance_id
                    )
                    await self._registry.register(self.record(), self.lease_seconds)
            except (RegistryError, OSError) as exc:
                log.warning("heartbeat to %s failed (will retry): %s", self.registry_url, exc)

    async def stop(self) -> None:
        """Stop heartbeating, deregister and close the registry; never raises."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._registry is not None:
            try:
                await self._registry.deregister(self.app.instance_id)
                log.info("deregistered %s", self.app.instance_id)
            except (RegistryError, OSError) as exc:
                log.warning("could not deregister %s: %s", self.app.instance_id, exc)
            await self._registry.close()
            self._registry = None


def register_app(
    app: App,
    registry_url: str,
    address: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    metadata: dict[str, str] | None = None,
) -> RegistrationAgent:
    """Register ``app`` while it serves: at start-up, until shutdown.

    Returns:
        The agent (its ``health`` shows what was last published).
    """
    agent = RegistrationAgent(
        app, registry_url, address, lease_seconds=lease_seconds, metadata=metadata
    )
    app.on_startup(agent.start)
    app.on_shutdown(agent.stop)
    return agent
