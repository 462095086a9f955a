"""open_registry URL parsing and the record model."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from tether.registry import (
    InstanceRecord,
    MemoryRegistry,
    NatsRegistry,
    SqliteRegistry,
    open_registry,
)

pytestmark = pytest.mark.anyio


def test_schemes() -> None:
    assert isinstance(open_registry("memory://"), MemoryRegistry)
    sqlite = open_registry("sqlite:///tmp/x/registry.db?poll_interval=0.5")
    assert isinstance(sqlite, SqliteRegistry)
    assert str(sqlite.path) == "/tmp/x/registry.db" and sqlite.poll_interval == 0.5
    relative = open_registry("sqlite://state/registry.db")
    assert isinstance(relative, SqliteRegistry) and str(relative.path) == "state/registry.db"
    nats = open_registry("nats://127.0.0.1:4999,127.0.0.1:5000?bucket=b1")
    assert isinstance(nats, NatsRegistry) and nats.bucket == "b1"


@pytest.mark.parametrize(
    "url", ["redis://x", "sqlite://", "nats://", "memory://?color=red", "sqlite:///x.db?poll=1"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_registry(url)


async def test_named_memory_registries_share(anyio_backend: str) -> None:
    async with open_registry("memory://shared-x") as one, open_registry("memory://shared-x") as two:
        await one.register(InstanceRecord(instance_id="a", address="http://a"))
        assert [r.instance_id for r in await two.list()] == ["a"]
        async with open_registry("memory://") as private:
            assert await private.list() == []
        await one.deregister("a")


async def test_nats_unreachable_is_a_clear_error(anyio_backend: str) -> None:
    from tests.fixtures.nats import free_port
    from tether.registry import RegistryUnavailable

    reg = NatsRegistry(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
    with pytest.raises(RegistryUnavailable, match="cannot connect"):
        await reg.list()
    await reg.close()


def test_record_model() -> None:
    record = InstanceRecord.model_validate(
        {
            "instance_id": "host-1.w2",
            "services": ["inventory@2.1", {"name": "billing"}],
            "address": "nats://relay:4222",
        }
    )
    assert record.service_names == ["inventory", "billing"]
    assert record.services[0].version == "2.1"
    assert record.is_relay
    assert record.health == "passing" and record.is_healthy("inventory")
    assert (
        record.model_copy(update={"service_health": {"billing": "critical"}}).status_for("billing")
        == "critical"
    )
    assert InstanceRecord.model_validate_json(record.model_dump_json()) == record
    for bad in ("", "a b", "a..b", ".a", "a:1", "x" * 201):
        with pytest.raises(ValidationError):
            InstanceRecord(instance_id=bad, address="http://a")
    with pytest.raises(ValidationError):
        InstanceRecord(instance_id="a", address="http://a", registered_at=datetime(2024, 1, 1))
