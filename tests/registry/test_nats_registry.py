"""NATS-specific registry behaviour: surviving a NATS server restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from tests.fixtures.nats import NatsServer
from tether.registry import (
    InstanceRecord,
    NatsRegistry,
    RegistryEvent,
    RegistryUnavailable,
)

pytestmark = pytest.mark.anyio


def rec(instance_id: str) -> InstanceRecord:
    return InstanceRecord.model_validate(
        {"instance_id": instance_id, "services": ["inventory"], "address": "http://127.0.0.1:1"}
    )


async def test_survives_server_restart(
    nats_server_factory: Callable[..., NatsServer], anyio_backend: str
) -> None:
    server = nats_server_factory()
    async with NatsRegistry(server.url, bucket="restart", request_timeout=1.0) as registry:
        await registry.register(rec("before"), lease_seconds=30)
        async with contextlib.aclosing(registry.watch("inventory")) as events:
            seen: list[RegistryEvent] = []
            seen.append(await asyncio.wait_for(anext(events), 3))
            seen.append(await asyncio.wait_for(anext(events), 3))
            assert [e.kind for e in seen] == ["added", "synced"]

            await asyncio.to_thread(server.restart)

            # Heartbeats fail while the client reconnects, then work again:
            # the entry survived in the JetStream file store.
            deadline = time.monotonic() + 10
            while True:
                try:
                    await registry.heartbeat("before")
                    break
                except RegistryUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)

            # The watch resynchronises and keeps reporting changes.
            await registry.register(rec("after"), lease_seconds=30)
            event = await asyncio.wait_for(anext(events), 5)
            assert (event.kind, event.instance_id) == ("added", "after")
            assert [r.instance_id for r in await registry.list()] == ["after", "before"]


async def test_a_watch_forgets_instances_that_went_away(
    nats_server_factory: Callable[..., NatsServer], anyio_backend: str
) -> None:
    """A long-lived watch keeps the last revision of live keys only: instances that
    registered and deregistered leave nothing behind in it (it would otherwise
    grow with every instance that ever came and went)."""
    server = nats_server_factory()
    async with NatsRegistry(server.url, bucket="churn") as registry:
        await registry.register(rec("stays"), lease_seconds=30)
        async with contextlib.aclosing(registry.watch("inventory")) as events:
            assert [(await asyncio.wait_for(anext(events), 5)).kind for _ in range(2)] == [
                "added",
                "synced",
            ]
            for i in range(20):
                await registry.register(rec(f"passing-{i}"), lease_seconds=30)
                await registry.deregister(f"passing-{i}")
            await registry.register(rec("last"), lease_seconds=30)
            seen: list[tuple[str, str | None]] = []
            while ("added", "last") not in seen:
                event = await asyncio.wait_for(anext(events), 5)
                seen.append((event.kind, event.instance_id))
            assert seen.count(("removed", "passing-19")) == 1
            [updates] = registry._watches
            assert set(updates.revisions) <= {"stays", "last"}
            assert "last" in updates.revisions
