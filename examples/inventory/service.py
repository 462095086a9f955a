"""The inventory service's interface: what callers see and the server serves."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

import tether


class Device(BaseModel):
    """A network device."""

    name: str = Field(min_length=1, max_length=64)
    host: str = Field(description="Management address, an IP or DNS name.")
    platform: str = Field(description="Operating system, e.g. iosxe, nxos, panos.")
    tags: list[str] = Field(default_factory=list)
    added_at: datetime


class NotFound(tether.ServiceError):
    """No device has that name."""

    code = tether.StatusCode.NOT_FOUND


class AlreadyExists(tether.ServiceError):
    """A device with that name is in the inventory already."""

    code = tether.StatusCode.ALREADY_EXISTS


@tether.service(name="inventory", version="1", errors=[NotFound])
class Inventory:
    """A network device inventory: list, look up, filter, add and remove devices."""

    @tether.method(idempotent=True, name="list")
    def list_devices(self) -> list[Device]:
        """Every device, ordered by name."""
        ...

    @tether.method(idempotent=True)
    def get(self, name: str) -> Device:
        """The device called ``name``; raises NotFound when there is none."""
        ...

    @tether.method(idempotent=True)
    def filter(
        self,
        platform: str | None = None,
        tags: list[str] | None = None,
        host_prefix: str | None = None,
    ) -> list[Device]:
        """Devices matching every given attribute (a device must carry all ``tags``)."""
        ...

    @tether.method(errors=[AlreadyExists])
    def add(self, device: Device) -> Device:
        """Add a device; raises AlreadyExists when the name is taken."""
        ...

    def remove(self, name: str) -> None:
        """Remove a device; raises NotFound when there is none."""
        ...
