"""Connections of every kind to the behaviour App, for the parametrized suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tether
from tests.apps.behaviour import app as behaviour_app
from tests.fixtures.relay import RelayProcess
from tests.fixtures.servers import ServerProcess

KINDS = ["integrated", "direct", "relay"]
CODECS = ["json", "msgpack", "python"]
# The python codec passes Python objects in-process: integrated connections only.
IN_PROCESS_CODECS = {"python"}
COMBINATIONS = [
    (kind, codec)
    for kind in KINDS
    for codec in CODECS
    if kind == "integrated" or codec not in IN_PROCESS_CODECS
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give a test taking ``kind`` and ``codec`` (directly or through ``conn``) every
    pair in :data:`COMBINATIONS`: the python codec with integrated connections only."""
    if "kind" in metafunc.fixturenames and "codec" in metafunc.fixturenames:
        metafunc.parametrize(
            ("kind", "codec"), COMBINATIONS, ids=[f"{k}-{c}" for k, c in COMBINATIONS]
        )


@pytest.fixture(scope="session")
def client() -> Iterator[tether.Client]:
    with tether.Client(timeout=10) as c:
        yield c


@pytest.fixture
def conn(
    kind: str, codec: str, client: tether.Client, request: pytest.FixtureRequest
) -> tether.Connection:
    """A connection of ``kind`` speaking ``codec``: integrated, direct to a real uvicorn, or
    through a real NATS server to ``tether serve --relay --no-http``."""
    if kind == "integrated":
        return client.integrated(behaviour_app, codec=codec)
    if kind == "relay":
        relay: RelayProcess = request.getfixturevalue("behaviour_relay")
        return client.relay(relay.nats_url, codec=codec)
    server: ServerProcess = request.getfixturevalue("behaviour_server")
    return client.connect(server.url, codec=codec)
