"""The inventory example through typed proxies, in-process and over HTTP, and its
readiness check."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from examples.inventory.app import create_app
from examples.inventory.implementation import DEVICES_CSV
from examples.inventory.service import AlreadyExists, Device, Inventory, NotFound

import tether
from tests.fixtures.servers import ServerProcess


@pytest.fixture(params=["integrated", "direct"])
def inventory(request: pytest.FixtureRequest) -> Iterator[Inventory]:
    """A typed proxy to the inventory: a fresh App in-process, or the shared server."""
    with tether.Client(timeout=10) as client:
        if request.param == "integrated":
            conn = client.integrated(create_app())
        else:
            conn = client.connect(request.getfixturevalue("inventory_server").url)
        yield conn.proxy(Inventory)


def test_get_list_and_filter(inventory: Inventory) -> None:
    device = inventory.get("r1")
    assert isinstance(device, Device)
    assert (device.host, device.platform, device.tags) == ("10.0.0.1", "iosxe", ["core", "ams1"])
    assert device.added_at == dt.datetime(2026, 1, 15, 9, 30, tzinfo=dt.UTC)
    names = [d.name for d in inventory.list_devices()]
    assert {"fw1", "r1", "r2", "sw1", "sw2"} <= set(names) and names == sorted(names)
    assert [d.name for d in inventory.filter(platform="nxos", tags=["ams1"])] == ["sw1"]


def test_add_then_remove(inventory: Inventory) -> None:
    # A name of its own: the direct server is shared with other tests.
    lab = Device(
        name="test-lab-1",
        host="192.0.2.7",
        platform="junos",
        tags=["lab"],
        added_at=dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC),
    )
    try:
        assert inventory.add(lab) == lab
        assert inventory.get("test-lab-1") == lab
        with pytest.raises(AlreadyExists) as taken:
            inventory.add(lab)
        assert taken.value.code is tether.StatusCode.ALREADY_EXISTS
        assert taken.value.details == {"name": "test-lab-1"}
    finally:
        inventory.remove("test-lab-1")
    with pytest.raises(NotFound):
        inventory.get("test-lab-1")
    with pytest.raises(NotFound) as again:  # remove of a missing device
        inventory.remove("test-lab-1")
    assert again.value.details == {"name": "test-lab-1"}


def test_an_unknown_device_is_not_found_as_its_class(inventory: Inventory) -> None:
    with pytest.raises(NotFound) as caught:
        inventory.get("ghost")
    assert caught.value.code is tether.StatusCode.NOT_FOUND
    assert caught.value.message == "no device named 'ghost'"
    assert caught.value.details == {"name": "ghost"}


def test_readiness_reads_the_devices_file(tmp_path: Path) -> None:
    devices = tmp_path / "devices.csv"
    shutil.copy(DEVICES_CSV, devices)
    app = create_app(devices)
    ready, checks = asyncio.run(app.readiness())
    assert ready and checks["devices_file"]["status"] == "passing"
    devices.unlink()  # what a restart would load is gone
    ready, checks = asyncio.run(app.readiness())
    assert not ready
    assert checks["devices_file"]["status"] == "failing"
    assert "devices.csv" in checks["devices_file"]["error"]


def test_the_served_inventory_reports_its_check(inventory_server: ServerProcess) -> None:
    with urllib.request.urlopen(inventory_server.url + "/readyz", timeout=10) as r:
        body = json.loads(r.read())
    assert body["checks"]["devices_file"]["status"] == "passing"
    assert body["services"] == {"inventory": "passing"}
