"""Relay instances found through the registry: ``AsyncClient.service()`` and failover."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import tether
from tests.fixtures.relay import RelayProcess, start_all, wait_for
from tether.registry import open_registry


def registered(registry_url: str, service: str) -> list[str]:
    """The addresses registered for ``service``."""

    async def addresses() -> list[str]:
        async with open_registry(registry_url) as registry:
            return [r.address for r in await registry.list(service)]

    return asyncio.run(addresses())


def test_async_service_calls_relay_instances_and_fails_over(nats_url: str, tmp_path: Path) -> None:
    """Two relay-only instances registered in SQLite: ``AsyncClient.service()`` reaches
    both through NATS; after one is killed (its entry still registered, its
    subscriptions gone) every call, idempotent or not, lands on the other, and
    the first one does not spend its deadline on the dead instance's subject."""
    registry_url = f"sqlite:///{tmp_path / 'registry.db'}"
    relays = start_all(
        [
            RelayProcess(
                "tests.apps.relayed:app",
                nats_url,
                env={"TETHER_STATE_DIR": str(tmp_path)},
                args=["--registry", registry_url, "--lease", "60"],
            )
            for _ in range(2)
        ]
    )
    try:
        ids = {r.instance_id for r in relays}
        addresses = wait_for(
            lambda: len(found := registered(registry_url, "whoami")) == 2 and found,
            20,
            "both relay instances registering",
        )
        assert sorted(addresses) == sorted(f"{nats_url}#{i}" for i in ids)

        async def calls() -> tuple[set[str], float, list[str], list[int]]:
            async with tether.AsyncClient(timeout=20) as client:
                whoami = client.service("whoami", registry=registry_url)
                before = {await whoami.call("whoami.instance") for _ in range(6)}
                relays[0].stop(signal.SIGKILL)  # no deregistration: the entry stays
                started = time.monotonic()  # round robin: one of these tries the dead one
                after = [await whoami.call("whoami.instance", idempotent=True) for _ in range(6)]
                failover = time.monotonic() - started
                # data: b"ab", as JSON carries bytes (base64)
                sizes = [await whoami.call("whoami.size", data="YWI=") for _ in range(6)]
                return before, failover, after, sizes

        before, failover, after, sizes = asyncio.run(calls())
        assert before == ids  # round robin over both, through NATS
        # A behavioural bound, not a benchmark: the balancer moved on at the
        # first "no responders" rather than the relay transport retrying the
        # dead subject until the call's 20 s deadline was all but spent.
        assert failover < 5

        assert after == [relays[1].instance_id] * 6
        # Not idempotent, but "no responders" means it never ran: retried elsewhere.
        assert sizes == [2] * 6
        assert len(registered(registry_url, "whoami")) == 2  # the dead one's lease runs on
    finally:
        for relay in relays:
            relay.stop()
