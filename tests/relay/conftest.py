"""Fixtures of the relay tests: relay processes, an event-loop thread, NATS servers with auth."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tether
from tests.fixtures.nats import NatsServer, nats_server_binary
from tests.fixtures.relay import RelayProcess, start_all

T = TypeVar("T")
RunAsync = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(scope="session")
def pair(nats_url: str) -> Iterator[list[RelayProcess]]:
    """Two instances of tests/apps/relayed.py served through the session's NATS server."""
    relays = start_all([RelayProcess("tests.apps.relayed:app", nats_url) for _ in range(2)])
    yield relays
    for relay in relays:
        relay.stop()


@pytest.fixture
def client() -> Iterator[tether.Client]:
    with tether.Client(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def run_async() -> Iterator[RunAsync[Any]]:
    """Runs a coroutine on an event loop in a background thread and returns its result."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(20)

    yield run
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


class ConfiguredNats(NatsServer):
    """A nats-server without JetStream, started with extra command-line arguments."""

    def __init__(self, *args: str) -> None:
        super().__init__(jetstream=False)
        self.extra = list(args)

    def start(self, timeout: float = 10.0) -> ConfiguredNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [nats_server_binary(), "-a", self.host, "-p", str(self.port), *self.extra]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_ready(timeout)
        return self


@pytest.fixture
def configured_nats() -> Iterator[Callable[..., ConfiguredNats]]:
    """Factory: ``configured_nats("--user", "u", ...)`` or ``configured_nats(config=TEXT)``
    starts a nats-server with those arguments or that configuration file; all are
    stopped at teardown."""
    servers: list[ConfiguredNats] = []

    def start(*args: str, config: str | None = None) -> ConfiguredNats:
        server = ConfiguredNats(*args)
        if config is not None:
            path = Path(server.store_dir) / "nats.conf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config)
            server.extra += ["-c", str(path)]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.cleanup()
