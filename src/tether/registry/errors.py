"""Errors raised by registry backends."""

from __future__ import annotations

__all__ = ["InstanceNotRegistered", "RegistryClosed", "RegistryError", "RegistryUnavailable"]


class RegistryError(Exception):
    """Base class of every registry error."""


class InstanceNotRegistered(RegistryError, LookupError):
    """A heartbeat named an instance that has no live entry.

    Its lease expired, it was deregistered, or it never registered. The caller
    should register again. ``instance_id`` holds the id.
    """

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id!r} is not registered (lease expired or deregistered); "
            "register it again"
        )
        self.instance_id = instance_id


class RegistryClosed(RegistryError):
    """The registry was used after :meth:`~tether.registry.Registry.close`."""


class RegistryUnavailable(RegistryError, ConnectionError):
    """The registry's backend failed: the NATS server cannot be reached in time or
    answered with an error, the SQLite file stayed locked past its busy timeout,
    cannot be opened or is corrupt. Usually transient: retry later. The
    backend's own exception is the ``__cause__``."""
