"""The inventory service's implementation: devices held in memory, loaded from CSV."""

from __future__ import annotations

import csv
import threading
from datetime import datetime
from pathlib import Path

from examples.inventory.service import AlreadyExists, Device, Inventory, NotFound

DEVICES_CSV = Path(__file__).with_name("devices.csv")


def load_devices(path: Path) -> list[Device]:
    """Read devices from a CSV file with columns name, host, platform, tags, added_at.

    ``tags`` is a ``;``-separated list; ``added_at`` an ISO 8601 timestamp.
    """
    with path.open(newline="", encoding="utf-8") as f:
        return [
            Device(
                name=row["name"],
                host=row["host"],
                platform=row["platform"],
                tags=[t for t in row["tags"].split(";") if t],
                added_at=datetime.fromisoformat(row["added_at"]),
            )
            for row in csv.DictReader(f)
        ]


class InventoryService(Inventory):
    """Serves the inventory from memory. Sync methods run in the server's
    thread pool, hence the lock."""

    def __init__(self, devices: list[Device] | None = None) -> None:
        self._devices = {d.name: d for d in devices or []}
        self._lock = threading.Lock()

    @classmethod
    def from_csv(cls, path: Path = DEVICES_CSV) -> InventoryService:
        """An inventory holding the devices of a CSV file (default: the bundled one)."""
        return cls(load_devices(path))

    def list_devices(self) -> list[Device]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.name)

    def get(self, name: str) -> Device:
        with self._lock:
            device = self._devices.get(name)
        if device is None:
            raise NotFound(f"no device named {name!r}", {"name": name})
        return device

    def filter(
        self,
        platform: str | None = None,
        tags: list[str] | None = None,
        host_prefix: str | None = None,
    ) -> list[Device]:
        return [
            d
            for d in self.list_devices()
            if (platform is None or d.platform == platform)
            and all(t in d.tags for t in tags or [])
            and (host_prefix is None or d.host.startswith(host_prefix))
        ]

    def add(self, device: Device) -> Device:
        with self._lock:
            if device.name in self._devices:
                raise AlreadyExists(f"a device named {device.name!r} exists", {"name": device.name})
            self._devices[device.name] = device
        return device

    def remove(self, name: str) -> None:
        with self._lock:
            if self._devices.pop(name, None) is None:
                raise NotFound(f"no device named {name!r}", {"name": name})
