"""Tether: typed Python services, called in-process, over HTTP or through a relay.

Declare a service once as a typed interface (:func:`service`, :func:`method`),
host implementations in an :class:`App` (an ASGI application), and call them
through a :class:`Client` or :class:`AsyncClient` connection's typed proxy.
"""

from typing import TYPE_CHECKING, Any

from tether.client.client import AsyncClient, Client
from tether.client.connection import AsyncConnection, Connection
from tether.codec import Codec
from tether.context import CallContext, current_call
from tether.errors import (
    DeadlineExceeded,
    RemoteError,
    ServiceError,
    StatusCode,
    TetherError,
    Unavailable,
)
from tether.interface import MethodSpec, ServiceSpec, method, service, service_spec
from tether.server.app import App

if TYPE_CHECKING:
    from tether.jobs.worker import Worker
    from tether.transports.nats_connect import NatsCredentials

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "AsyncConnection",
    "CallContext",
    "Client",
    "Codec",
    "Connection",
    "DeadlineExceeded",
    "MethodSpec",
    "NatsCredentials",
    "RemoteError",
    "ServiceError",
    "ServiceSpec",
    "StatusCode",
    "TetherError",
    "Unavailable",
    "Worker",
    "current_call",
    "method",
    "service",
    "service_spec",
]


def __getattr__(name: str) -> Any:
    """Import on first use what pulls in optional drivers: the job worker (the job
    stores' drivers) and NatsCredentials (nats-py)."""
    if name == "Worker":
        from tether.jobs.worker import Worker

        return Worker
    if name == "NatsCredentials":
        from tether.transports.nats_connect import NatsCredentials

        return NatsCredentials
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
