"""One contract for every registry backend (memory, SQLite, NATS JetStream KV)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.registry import (
    InstanceNotRegistered,
    InstanceRecord,
    Registry,
    RegistryClosed,
    RegistryEvent,
    open_registry,
)

pytestmark = pytest.mark.anyio

EVENT_TIMEOUT = 3.0  # seconds: bound on how late an event may arrive
EXPIRY_TIMEOUT = 5.0  # seconds after registration by which a 1-2 s lease must be gone


def rec(instance_id: str, *services: str, port: int = 8000, **kwargs: object) -> InstanceRecord:
    return InstanceRecord.model_validate(
        {
            "instance_id": instance_id,
            "services": [{"name": s, "version": "1"} for s in services],
            "address": f"http://127.0.0.1:{port}",
            **kwargs,
        }
    )


@pytest.fixture
async def registry(registry_url: str, anyio_backend: str) -> AsyncIterator[Registry]:
    async with open_registry(registry_url) as reg:
        yield reg


async def ids(reg: Registry, service: str | None = None, **kw: bool) -> list[str]:
    return [r.instance_id for r in await reg.list(service, **kw)]


async def next_event(events: AsyncIterator[RegistryEvent]) -> RegistryEvent:
    return await asyncio.wait_for(anext(events), EVENT_TIMEOUT)


async def wait_until_gone(reg: Registry, instance_id: str, timeout: float) -> float:
    start = time.monotonic()
    while instance_id in await ids(reg):
        assert time.monotonic() - start < timeout, f"{instance_id} still listed"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_register_list_deregister(registry: Registry) -> None:
    assert await registry.list() == []
    await registry.register(rec("a", "inventory", metadata={"zone": "eu"}), lease_seconds=30)
    [got] = await registry.list()
    assert got.instance_id == "a"
    assert got.service_names == ["inventory"]
    assert got.address == "http://127.0.0.1:8000"
    assert got.metadata == {"zone": "eu"}
    assert got.lease_seconds == 30
    assert got.registered_at.tzinfo is not None
    await registry.deregister("a")
    assert await registry.list() == []
    await registry.deregister("a")  # unknown ids are ignored


async def test_filter_by_service_and_replicas(registry: Registry) -> None:
    await registry.register(rec("inv-1", "inventory", port=8001), lease_seconds=30)
    await registry.register(rec("inv-2", "inventory", "billing", port=8002), lease_seconds=30)
    await registry.register(rec("bill-1", "billing", port=8003), lease_seconds=30)
    assert await ids(registry, "inventory") == ["inv-1", "inv-2"]
    assert await ids(registry, "billing") == ["bill-1", "inv-2"]
    assert await ids(registry, "nothing") == []
    assert await ids(registry) == ["bill-1", "inv-1", "inv-2"]


async def test_reregister_replaces(registry: Registry) -> None:
    await registry.register(rec("a", "inventory", port=8001), lease_seconds=30)
    await registry.register(rec("a", "inventory", port=9001), lease_seconds=30)
    [got] = await registry.list()
    assert got.address == "http://127.0.0.1:9001"


async def test_health_filter(registry: Registry) -> None:
    await registry.register(rec("ok", "inventory", "billing"), lease_seconds=30)
    await registry.register(rec("sick", "inventory", health="critical"), lease_seconds=30)
    await registry.register(
        rec("half", "inventory", "billing", service_health={"billing": "critical"}),
        lease_seconds=30,
    )
    await registry.register(rec("warn", "inventory", health="warning"), lease_seconds=30)
    assert await ids(registry, "inventory") == ["half", "ok", "sick", "warn"]
    assert await ids(registry, "inventory", include_unhealthy=False) == ["half", "ok", "warn"]
    assert await ids(registry, "billing", include_unhealthy=False) == ["ok"]


async def test_heartbeat_updates_health(registry: Registry) -> None:
    await registry.register(rec("a", "inventory", "billing"), lease_seconds=30)
    await registry.heartbeat("a", health="critical")
    assert await ids(registry, "inventory", include_unhealthy=False) == []
    await registry.heartbeat("a", health="passing", service_health={"billing": "critical"})
    await registry.heartbeat("a", service_health={"inventory": "warning"})
    [got] = await registry.list()
    assert got.health == "passing"
    assert got.service_health == {"billing": "critical", "inventory": "warning"}
    assert await ids(registry, "inventory", include_unhealthy=False) == ["a"]
    assert await ids(registry, "billing", include_unhealthy=False) == []


async def test_heartbeat_renews_lease(registry: Registry) -> None:
    # A 3 s lease renewed every 0.5 s for 4 s: it outlives its first lease, and
    # a stall of up to 2.5 s on a loaded machine does not let it lapse.
    await registry.register(rec("a", "inventory"), lease_seconds=3)
    [first] = await registry.list()
    for _ in range(8):
        await asyncio.sleep(0.5)
        await registry.heartbeat("a")
    [renewed] = await registry.list()
    assert renewed.last_heartbeat > first.last_heartbeat
    assert renewed.registered_at == first.registered_at


async def test_lease_expires_without_heartbeat(registry: Registry) -> None:
    await registry.register(rec("short", "inventory"), lease_seconds=1)
    await registry.register(rec("long", "inventory"), lease_seconds=30)
    elapsed = await wait_until_gone(registry, "short", EXPIRY_TIMEOUT)
    assert elapsed >= 0.5
    assert await ids(registry, "inventory") == ["long"]
    with pytest.raises(InstanceNotRegistered) as info:
        await registry.heartbeat("short")
    assert info.value.instance_id == "short"
    await registry.register(rec("short", "inventory"), lease_seconds=30)  # re-register works
    await registry.heartbeat("short")


async def test_heartbeat_unknown_or_deregistered(registry: Registry) -> None:
    with pytest.raises(InstanceNotRegistered):
        await registry.heartbeat("never")
    await registry.register(rec("a", "inventory"), lease_seconds=30)
    await registry.deregister("a")
    with pytest.raises(InstanceNotRegistered):
        await registry.heartbeat("a")


async def test_bad_lease_rejected(registry: Registry) -> None:
    for lease in (0, -1, float("nan")):
        with pytest.raises(ValueError):
            await registry.register(rec("a", "inventory"), lease_seconds=lease)


async def expect(
    events: AsyncIterator[RegistryEvent],
    kind: str,
    instance_id: str,
    skipped: list[tuple[str, str | None]],
    timeout: float = EVENT_TIMEOUT,
) -> RegistryEvent:
    """Next event that is (kind, instance_id); other events go to ``skipped``."""
    deadline = time.monotonic() + timeout
    while True:
        event = await asyncio.wait_for(anext(events), max(0.01, deadline - time.monotonic()))
        if (event.kind, event.instance_id) == (kind, instance_id):
            return event
        skipped.append((event.kind, event.instance_id))


async def test_watch_reports_changes(registry: Registry) -> None:
    await registry.register(rec("old", "inventory"), lease_seconds=2)  # expires during the test
    start = time.monotonic()
    async with contextlib.aclosing(registry.watch()) as events:
        first = await next_event(events)
        assert (first.kind, first.instance_id) == ("added", "old")
        assert (await next_event(events)).kind == "synced"

        # The expiry of "old" may come anywhere below, depending on speed.
        skipped: list[tuple[str, str | None]] = []
        await registry.register(rec("new", "inventory"), lease_seconds=30)
        await expect(events, "added", "new", skipped)

        await registry.heartbeat("new")  # a plain renewal is no event
        await registry.heartbeat("new", health="warning")
        event = await expect(events, "updated", "new", skipped)
        assert event.record is not None and event.record.health == "warning"

        await registry.deregister("new")
        await expect(events, "removed", "new", skipped)
        if ("removed", "old") not in skipped:
            await expect(events, "removed", "old", skipped, timeout=EXPIRY_TIMEOUT)
        assert skipped in ([], [("removed", "old")])
        assert time.monotonic() - start < EXPIRY_TIMEOUT


async def test_watch_filters_by_service(registry: Registry) -> None:
    async with contextlib.aclosing(registry.watch("billing")) as events:
        assert (await next_event(events)).kind == "synced"
        await registry.register(rec("inv", "inventory"), lease_seconds=30)
        await registry.register(rec("bill", "billing"), lease_seconds=30)
        event = await next_event(events)
        assert (event.kind, event.instance_id) == ("added", "bill")
        # No longer serving billing: removed from this watch.
        await registry.register(rec("bill", "inventory"), lease_seconds=30)
        event = await next_event(events)
        assert (event.kind, event.instance_id) == ("removed", "bill")


async def test_watch_ends_on_close(registry_url: str) -> None:
    reg = open_registry(registry_url)
    events = reg.watch()
    assert (await next_event(events)).kind == "synced"
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.05)
    await reg.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, EVENT_TIMEOUT)
    with pytest.raises(RegistryClosed):
        await reg.list()


async def test_closed_registry_refuses_everything(registry_url: str) -> None:
    reg = open_registry(registry_url)
    await reg.register(rec("a", "inventory"), lease_seconds=30)
    await reg.close()
    await reg.close()  # idempotent
    with pytest.raises(RegistryClosed):
        await reg.register(rec("b", "inventory"), lease_seconds=30)
    with pytest.raises(RegistryClosed):
        await reg.heartbeat("a")
    with pytest.raises(RegistryClosed):
        await reg.deregister("a")
    with pytest.raises(RegistryClosed):
        async with contextlib.aclosing(reg.watch()) as events:
            await anext(events)


async def test_watch_started_during_changes_converges(registry_url: str) -> None:
    """A watch started while instances come and go ends up with exactly the live ones:
    its snapshot misses none and later changes are applied in order."""
    async with open_registry(registry_url) as writer, open_registry(registry_url) as reader:
        for i in range(20):
            await writer.register(rec(f"old{i:02}", "inventory"), lease_seconds=30)

        async def churn() -> None:
            for i in range(10):
                await writer.deregister(f"old{i:02}")
                await writer.register(rec(f"new{i:02}", "inventory"), lease_seconds=30)

        churning = asyncio.ensure_future(churn())
        view: dict[str, RegistryEvent] = {}
        async with contextlib.aclosing(reader.watch("inventory")) as events:
            while (event := await next_event(events)).kind != "synced":
                view[event.instance_id or ""] = event
            await churning
            expected = set(await ids(writer, "inventory"))
            deadline = time.monotonic() + EVENT_TIMEOUT
            while set(view) != expected:
                event = await asyncio.wait_for(
                    anext(events), max(0.01, deadline - time.monotonic())
                )
                if event.kind == "removed":
                    view.pop(event.instance_id or "", None)
                else:
                    view[event.instance_id or ""] = event
        assert len(expected) == 20 and {i[:3] for i in expected} == {"old", "new"}


async def test_two_handles_share_state(registry_url: str) -> None:
    async with open_registry(registry_url) as one, open_registry(registry_url) as two:
        async with contextlib.aclosing(two.watch("inventory")) as events:
            assert (await next_event(events)).kind == "synced"
            await one.register(rec("a", "inventory"), lease_seconds=30)
            event = await next_event(events)
            assert (event.kind, event.instance_id) == ("added", "a")
            await two.heartbeat("a", health="critical")
            assert await ids(one, "inventory", include_unhealthy=False) == []


_CHILD = """
import asyncio, sys
from tether.registry import InstanceRecord, open_registry

async def main(url, action):
    async with open_registry(url) as reg:
        if action == "register":
            await reg.register(
                InstanceRecord.model_validate({"instance_id": "child",
                    "services": ["inventory"], "address": "http://127.0.0.1:8100"}),
                lease_seconds=30,
            )
        else:
            await reg.deregister("child")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def run_child(url: str, action: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, url, action)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_sqlite_shared_between_processes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/registry.db?poll_interval=0.05"
    async with open_registry(url) as reg:
        async with contextlib.aclosing(reg.watch("inventory")) as events:
            assert (await next_event(events)).kind == "synced"
            await run_child(url, "register")
            event = await next_event(events)
            assert (event.kind, event.instance_id) == ("added", "child")
            assert await ids(reg, "inventory") == ["child"]
            await reg.heartbeat("child", health="warning")  # another process's entry
            event = await next_event(events)
            assert event.kind == "updated"
            await run_child(url, "deregister")
            event = await next_event(events)
            assert (event.kind, event.instance_id) == ("removed", "child")
    assert (tmp_path / "registry.db").exists()
