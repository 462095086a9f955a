"""Registries and served instances for the discovery tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.servers import ServerProcess, free_port

# Seconds. Long enough that a stall of a loaded CI machine (a second or two)
# does not expire a live instance's entry; the tests that are about expiry
# pass a shorter one.
LEASE = "4"


@pytest.fixture(params=["sqlite", "nats"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry of each backend: an SQLite file, or a NATS KV bucket of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    nats_url: str = request.getfixturevalue("nats_url")
    return f"{nats_url}?bucket=t_{uuid.uuid4().hex[:12]}"


Start = Callable[..., ServerProcess]


@pytest.fixture
def start_instance(registry_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start ``tether serve TARGET --registry URL --advertise ...``; all stopped at the end."""
    started: list[ServerProcess] = []

    def start(
        target: str = "examples.inventory.app:app",
        port: int | None = None,
        env: dict[str, str] | None = None,
        lease: str = LEASE,
    ) -> ServerProcess:
        port = port or free_port()
        server = ServerProcess(
            target,
            port=port,
            args=[
                "--registry",
                registry_url,
                "--advertise",
                f"http://127.0.0.1:{port}",
                "--lease",
                lease,
            ],
            env={"TETHER_STATE_DIR": str(tmp_path), **(env or {})},
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
