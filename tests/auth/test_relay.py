"""The NATS relay checks callers exactly as HTTP does: it passes their headers on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.fixtures.relay import RelayProcess, tether_cli
from tether.auth import AuthenticationFailed, CredentialStore, PermissionDenied


@pytest.fixture(scope="module")
def relayed(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The secured inventory served through NATS only; (writer key, reader key)."""
    path: Path = tmp_path_factory.mktemp("relay-auth") / "auth.db"
    store = CredentialStore(path)
    writer = store.add_api_key("ci", ["inventory.read", "inventory.write"])
    reader = store.add_api_key("dashboard", ["inventory.read"])
    store.close()
    process = RelayProcess(
        "examples.inventory.secure:app",
        nats_url,
        env={"TETHER_AUTH_STORE_PATH": str(path), "TETHER_STATE_DIR": str(path.parent)},
    ).start()
    yield writer, reader
    process.stop()


def test_relayed_calls_are_authenticated_and_authorized(
    nats_url: str, relayed: tuple[str, str]
) -> None:
    writer, reader = relayed
    with tether.Client(timeout=10) as client:
        with pytest.raises(AuthenticationFailed) as anonymous:
            client.relay(nats_url).call("inventory.get", name="r1")
        assert anonymous.value.refused == "credentials"
        with pytest.raises(AuthenticationFailed) as forged:
            client.relay(nats_url, api_key=writer + "x").call("inventory.get", name="r1")
        assert forged.value.refused == "api_key"
        assert (
            client.relay(nats_url, api_key=reader).call("inventory.get", name="r1")["name"] == "r1"
        )
        with pytest.raises(PermissionDenied):
            client.relay(nats_url, api_key=reader).call("inventory.remove", name="r1")
        client.relay(nats_url, api_key=writer).call("inventory.remove", name="r2")


def test_the_cli_sends_a_token_through_the_relay(nats_url: str, relayed: tuple[str, str]) -> None:
    _, reader = relayed
    refused = tether_cli("call", nats_url, "inventory.get", "name=r1")
    assert refused.returncode == 1 and "unauthenticated" in refused.stderr
    got = tether_cli("call", nats_url, "inventory.get", "name=r1", env={"TETHER_API_KEY": reader})
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["name"] == "r1"
    denied = tether_cli("call", nats_url, "inventory.remove", "name=r1", "--api-key", reader)
    assert denied.returncode == 1 and "permission_denied" in denied.stderr
    assert reader not in denied.stderr + denied.stdout
