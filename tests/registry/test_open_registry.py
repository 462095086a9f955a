"""open_registry URL parsing and the record model."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from tests.fixtures.nats import NatsServer, nats_server_binary
from tether.registry import (
    InstanceRecord,
    MemoryRegistry,
    NatsRegistry,
    RegistryUnavailable,
    SqliteRegistry,
    open_registry,
)
from tether.settings import Settings, get_settings

pytestmark = pytest.mark.anyio


def test_schemes() -> None:
    assert isinstance(open_registry("memory://"), MemoryRegistry)
    sqlite = open_registry("sqlite:///tmp/x/registry.db?poll_interval=0.5")
    assert isinstance(sqlite, SqliteRegistry)
    assert str(sqlite.path) == "/tmp/x/registry.db" and sqlite.poll_interval == 0.5
    relative = open_registry("sqlite://state/registry.db")
    assert isinstance(relative, SqliteRegistry) and str(relative.path) == "state/registry.db"
    four = open_registry("sqlite:////tmp/x/registry.db?busy_timeout=0.5")  # SQLAlchemy's spelling
    assert isinstance(four, SqliteRegistry) and str(four.path) == "/tmp/x/registry.db"
    assert four._busy_timeout == 0.5
    nats = open_registry("nats://127.0.0.1:4999,127.0.0.1:5000?bucket=b1")
    assert isinstance(nats, NatsRegistry) and nats.bucket == "b1"


@pytest.mark.parametrize(
    "url",
    [
        "redis://x",
        "sqlite://",
        "nats://",
        "memory://?color=red",
        "sqlite:///x.db?poll=1",
        "sqlite:///x.db?poll_interval=fast",
        "sqlite:///x.db?busy_timeout=-1",
        "nats://127.0.0.1:4222?marker_ttl=soon",
    ],
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


def test_a_relative_state_dir_stays_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(state_dir=Path("relstate"))
    registry = open_registry(settings.effective_registry_url)
    assert isinstance(registry, SqliteRegistry)
    assert registry.path == tmp_path / "relstate" / "registry.db"  # not /relstate/...
    assert settings.effective_job_store_url == f"sqlite:///{tmp_path / 'relstate' / 'jobs.db'}"


class TokenNats(NatsServer):
    """A nats-server with JetStream that only admits clients with a token."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def start(self, timeout: float = 10.0) -> TokenNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [nats_server_binary(), "-a", self.host, "-p", str(self.port), "-js"]
        command += ["-sd", str(self.store_dir / "jetstream"), "--auth", self.token]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_ready(timeout)
        return self


@pytest.fixture
def token_nats() -> Iterator[TokenNats]:
    server = TokenNats("s3cret-token").start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_a_nats_registry_logs_in_with_the_settings(
    token_nats: TokenNats, anyio_backend: str
) -> None:
    url = f"{token_nats.url}?bucket=auth"
    good = Settings(nats_token=SecretStr("s3cret-token"))
    async with open_registry(url, settings=good) as registry:
        await registry.register(
            InstanceRecord(instance_id="a", services=["inventory"], address="http://a"), 30
        )
        assert [r.instance_id for r in await registry.list()] == ["a"]
    bad = NatsRegistry(token_nats.url, bucket="auth", connect_timeout=1.0)  # no token
    try:
        with pytest.raises(RegistryUnavailable, match=r"(?i)authorization"):
            await bad.list()
    finally:
        await bad.close()


def test_the_agent_cache_and_cli_log_in_to_nats_with_the_settings(
    token_nats: TokenNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve --registry nats://`` (the agent), ``tether services`` and
    ``client.service`` all take the TETHER_NATS_* settings."""
    import json
    import os
    import sys
    import time

    import tether
    from tests.fixtures.servers import ROOT, ServerProcess

    url = f"{token_nats.url}?bucket=auth_e2e"
    env = {"TETHER_NATS_TOKEN": "s3cret-token", "TETHER_STATE_DIR": str(tmp_path)}
    server = ServerProcess(
        "examples.inventory.app:app", args=["--registry", url, "--lease", "5"], env=env
    ).start()
    try:
        deadline = time.monotonic() + 20
        while True:
            listed = subprocess.run(
                [sys.executable, "-m", "tether.cli", "services", "--registry", url],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            )
            assert listed.returncode == 0, listed.stderr
            if json.loads(listed.stdout):
                break
            assert time.monotonic() < deadline, "never registered"
            time.sleep(0.2)
        assert [row["address"] for row in json.loads(listed.stdout)] == [server.url]
        # This process's settings, as a program would have them from its environment.
        monkeypatch.setenv("TETHER_NATS_TOKEN", "s3cret-token")
        get_settings.cache_clear()
        with tether.Client(timeout=10) as client:
            assert (
                client.service("inventory", registry=url).call("inventory.get", name="r1")["name"]
                == "r1"
            )
    finally:
        get_settings.cache_clear()
        server.stop()
