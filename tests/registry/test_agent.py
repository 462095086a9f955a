"""The registration agent in-process, against a real SQLite registry file.

The App is not served: its start-up and shutdown hooks are run directly, so
each test controls when the instance is "serving" and what the registry
file goes through (another process's lock, above all).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import tether
from tether.registry import InstanceRecord, open_registry
from tether.registry.agent import RegistrationAgent, register_app

pytestmark = pytest.mark.anyio


@tether.service(name="echo")
class Echo:
    def echo(self, text: str) -> str:
        """Answer ``text``."""
        ...


class EchoImpl(Echo):
    def echo(self, text: str) -> str:
        return text


async def listed(url: str) -> dict[str, InstanceRecord]:
    async with open_registry(url) as registry:
        return {r.instance_id: r for r in await registry.list()}


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.05)


async def test_heartbeats_survive_a_database_locked_longer_than_a_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "registry.db"
    # A short busy timeout, so that heartbeats fail while the file is locked
    # (the default 5 s would only make them wait).
    url = f"sqlite:///{db}?busy_timeout=0.1&poll_interval=0.05"
    app = tether.App(EchoImpl(), instance_id="locked")
    agent = register_app(app, url, "http://127.0.0.1:1", lease_seconds=1.5)
    await app.startup()
    try:
        assert "locked" in await listed(url)
        blocker = sqlite3.connect(db, isolation_level=None)
        with caplog.at_level(logging.WARNING, logger="tether.registry"):
            blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
            await asyncio.sleep(3 * agent.interval + 0.5)  # several heartbeats, past the lease
            blocker.execute("COMMIT")
        blocker.close()
        assert any("heartbeat of locked" in r.getMessage() for r in caplog.records)
        assert all(not task.done() for task in agent._tasks)  # nothing died

        async def back() -> bool:
            return "locked" in await listed(url)

        await eventually(back)  # renewed, or registered again after the lease ended
    finally:
        await app.shutdown()
    assert await listed(url) == {}


async def test_registers_only_once_the_server_serves(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    serving = asyncio.Event()

    async def ready() -> None:
        await serving.wait()

    app = tether.App(EchoImpl(), instance_id="late")
    agent = register_app(app, url, "http://127.0.0.1:1", lease_seconds=30, ready=ready)
    await app.startup()
    try:
        await asyncio.sleep(0.3)  # start-up is over: uvicorn would be binding its port now
        assert await listed(url) == {}
        assert not agent.registered
        serving.set()

        async def registered() -> bool:
            return "late" in await listed(url)

        await eventually(registered)
    finally:
        await app.shutdown()
    assert await listed(url) == {}


async def test_an_unreachable_registry_fails_start_up_even_when_registering_later() -> None:
    from tests.fixtures.nats import free_port
    from tether.registry import RegistryUnavailable

    never = asyncio.Event()

    async def ready() -> None:
        await never.wait()

    app = tether.App(EchoImpl())
    register_app(app, f"nats://127.0.0.1:{free_port()}", "http://127.0.0.1:1", ready=ready)
    with pytest.raises(RegistryUnavailable, match="cannot connect"):
        await app.startup()
    await app.shutdown()


async def test_a_slow_check_does_not_delay_heartbeats(tmp_path: Path) -> None:
    """Heartbeats run on their own schedule with the latest health: a check that
    takes longer than the lease (but within its timeout) must not let it lapse."""
    url = f"sqlite:///{tmp_path / 'registry.db'}?poll_interval=0.05"
    slow = asyncio.Event()
    app = tether.App(EchoImpl(), instance_id="steady")

    @app.health_check(timeout=30)
    async def sluggish() -> bool:
        if slow.is_set():
            await asyncio.sleep(16)  # twice the lease
        return True

    # A lease long enough that only a missed heartbeat, not a loaded machine's
    # stall of a second or two, lets it lapse (heartbeats every 2.7 s).
    agent = register_app(app, url, "http://127.0.0.1:1", lease_seconds=8)
    await app.startup()
    try:
        [first] = (await listed(url)).values()
        slow.set()
        deadline = time.monotonic() + 17  # one slow check and then some
        while time.monotonic() < deadline:
            entries = await listed(url)
            assert "steady" in entries, "the lease lapsed while a check was running"
            await asyncio.sleep(0.2)
        assert entries["steady"].registered_at == first.registered_at  # never re-registered
        assert entries["steady"].last_heartbeat > first.last_heartbeat
        assert agent.health == "passing"
    finally:
        await app.shutdown()


async def test_shutdown_during_a_registration_leaves_no_entry(tmp_path: Path) -> None:
    """Shutdown comes while the registration waits for a locked file: the write
    lands anyway once the lock goes (SQLite's worker thread carries on), so
    shutdown deregisters after it rather than leaving an entry nobody renews."""
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db}?busy_timeout=30"
    go = asyncio.Event()

    async def serving() -> None:
        await go.wait()

    app = tether.App(EchoImpl(), instance_id="ghost")
    agent = register_app(app, url, "http://127.0.0.1:1", lease_seconds=30, ready=serving)
    await app.startup()  # the agent's registry connection is open, its schema made
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        go.set()

        async def under_way() -> bool:
            # Set as the write is handed to SQLite's thread, where it waits for the lock.
            return agent._attempted

        await eventually(under_way)
        assert not agent.registered
        stopping = asyncio.create_task(app.shutdown())

        async def cancelled() -> bool:
            return not agent._tasks  # stop() took and cancelled them, before any await

        await eventually(cancelled)
        blocker.execute("COMMIT")  # the registration's write now goes through
        await asyncio.wait_for(stopping, 30)
    finally:
        blocker.close()
    assert await listed(url) == {}


async def test_a_restart_with_the_same_instance_id_replaces_the_entry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = tether.App(EchoImpl(), instance_id="same")
    crashed = RegistrationAgent(first, url, "http://127.0.0.1:1", lease_seconds=30)
    await crashed.start()
    old = (await listed(url))["same"]
    for task in crashed._tasks:  # it dies without deregistering, as kill -9 would
        task.cancel()
    assert crashed._registry is not None
    await crashed._registry.close()

    second = tether.App(EchoImpl(), instance_id="same")
    register_app(second, url, "http://127.0.0.1:2", lease_seconds=30)
    await second.startup()
    try:
        new = (await listed(url))["same"]
        assert new.address == "http://127.0.0.1:2"
        assert new.registered_at > old.registered_at
        assert len(await listed(url)) == 1
    finally:
        await second.shutdown()
    assert await listed(url) == {}


def test_a_bad_lease_or_url_is_refused_at_once() -> None:
    app = tether.App(EchoImpl())
    with pytest.raises(ValueError, match="lease_seconds"):
        RegistrationAgent(app, "memory://x", "http://127.0.0.1:1", lease_seconds=0)
    with pytest.raises(ValueError, match="unknown registry URL scheme"):
        register_app(app, "redis://x", "http://127.0.0.1:1")
