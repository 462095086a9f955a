"""What ``tether serve`` sets up around an App: the relay and the registration.

``tether serve`` hands its options to uvicorn's worker processes through
one environment variable (:data:`ENV_OPTIONS`, JSON) and names
:func:`app_factory` as the App, so every worker process loads the App and
hooks the relay and the registry to its own copy. :func:`advertised_address`
decides what the registry publishes: the ``--advertise`` URL, else the
address being listened on when that is one a client can use; never an
address guessed from the network.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tether.registry import DEFAULT_LEASE_SECONDS

if TYPE_CHECKING:
    from tether.server.app import App

#: The environment variable carrying :class:`LaunchOptions` to uvicorn's workers.
ENV_OPTIONS = "TETHER_SERVE_OPTIONS"

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class LaunchOptions:
    """How to serve one App.

    Attributes:
        target: the App as ``MODULE:ATTRIBUTE``.
        relay: NATS URL to serve through as well (or only), or None.
        registry: registry URL to register in, or None for no registration.
        advertise: the address clients should use; None to derive it (see
            :func:`advertised_address`).
        lease: seconds the registry entry lives without a heartbeat.
        host, port, tls: where and how HTTP is served (``port`` None: no HTTP).
    """

    target: str
    relay: str | None = None
    registry: str | None = None
    advertise: str | None = None
    lease: float = DEFAULT_LEASE_SECONDS
    host: str = "127.0.0.1"
    port: int | None = 8000
    tls: bool = False

    def to_env(self) -> str:
        """The options as the JSON text of :data:`ENV_OPTIONS`."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> LaunchOptions:
        """Read the options ``tether serve`` left in :data:`ENV_OPTIONS`.

        Raises:
            KeyError: the variable is not set (not started by ``tether serve``).
        """
        return cls(**json.loads(os.environ[ENV_OPTIONS]))


def advertised_address(options: LaunchOptions, instance_id: str) -> str:
    """The address this instance publishes in the registry.

    ``--advertise`` when given. Otherwise the HTTP address being listened on
    when it is a concrete one (not a wildcard like ``0.0.0.0``, not port 0);
    or, relay only, ``nats://host:port#INSTANCE_ID`` (user and password
    removed from the URL, so no secret reaches the registry).

    Raises:
        ValueError: no usable address: the message says to pass ``--advertise``.
    """
    if options.advertise:
        return options.advertise
    if options.port is None:
        if options.relay is None:
            raise ValueError("nothing is served: neither HTTP nor a relay")
        first = options.relay.split(",")[0]
        parts = urlsplit(first)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, "", "", "")) + f"#{instance_id}"
    if options.host in _WILDCARDS or options.port == 0:
        raise ValueError(
            f"cannot tell clients where to reach {options.host}:{options.port}: "
            "pass --advertise http://HOST:PORT with the address clients should use"
        )
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"{'https' if options.tls else 'http'}://{host}:{options.port}"


def import_target(target: str) -> Any:
    """Import ``MODULE:ATTRIBUTE`` (dotted attributes allowed) and return the attribute.

    Raises:
        ValueError: ``target`` is not of the form ``MODULE:ATTRIBUTE``.
        ImportError, AttributeError: the module or the attribute cannot be found.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"give the App as MODULE:ATTRIBUTE, got {target!r}")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def load_app(target: str) -> App:
    """The App that ``MODULE:ATTRIBUTE`` names (see :func:`import_target`).

    Raises:
        ValueError: ``target`` is malformed, or the attribute is not an App.
        ImportError, AttributeError: it cannot be found.
    """
    from tether.server.app import App

    value = import_target(target)
    if not isinstance(value, App):
        raise ValueError(f"{target} is a {type(value).__name__}, not a tether.App")
    return value


def prepare(app: App, options: LaunchOptions) -> App:
    """Hook the relay and the registration that ``options`` ask for to ``app``.

    Start-up: the relay (if any) connects first. The instance registers once
    it can answer: through the relay alone, right after the relay connected;
    with HTTP, once its own port answers ``GET /healthz`` (uvicorn runs the
    start-up hooks before it binds the port), checked in the background so
    that start-up goes on. A registry that cannot be reached fails start-up.
    With ``port`` 0 the port is not known in advance, and the instance
    registers during start-up.

    Shutdown (SIGTERM, SIGINT): uvicorn stops taking connections and drains
    the HTTP calls in flight before it runs the shutdown hooks; the relay's
    hook then drains the relayed calls; only after both does the instance
    deregister. Until then its lease is renewed, so clients keep it while it
    still answers (a new connection is refused once uvicorn stopped
    listening, which clients treat as a failure before sending and retry
    elsewhere).

    Raises:
        ValueError: a registry is named but no address can be advertised.
    """
    agent = None
    if options.registry is not None:
        from tether.registry.agent import RegistrationAgent

        ready = None
        if options.port:
            from tether.server.probe import wait_until_serving

            host, port, tls = options.host, options.port, options.tls

            async def serving() -> None:
                await wait_until_serving(host, port, tls=tls)

            ready = serving
        agent = RegistrationAgent(
            app,
            options.registry,
            advertised_address(options, app.instance_id),
            lease_seconds=options.lease,
            ready=ready,
        )
        # Shutdown hooks run in reverse order: added before the relay's, the
        # deregistration runs after the relay drained.
        app.on_shutdown(agent.stop)
    if options.relay is not None:
        from tether.server.relay import serve_relay

        serve_relay(app, options.relay)
    if agent is not None:
        app.on_startup(agent.start)  # after the relay connected
    return app


def app_factory() -> App:
    """The App ``tether serve`` names, with its relay and registration hooked.

    uvicorn calls this in each worker process (``factory=True``).
    """
    options = LaunchOptions.from_env()
    return prepare(load_app(options.target), options)
