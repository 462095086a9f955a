"""Serving an App through a NATS relay: the service connects outward, so it needs no open port.

:class:`RelayServer` subscribes each hosted service on
``tether.rpc.{service}.*`` with queue group ``{service}`` (NATS hands each
call to one instance), and the instance on ``tether.inst.{instance_id}.>``
with queue group ``inst.{instance_id}`` (``tether.inst.{instance_id}.{service}.{method}``:
this instance only, where an unknown service is answered ``unimplemented`` as
over HTTP; on ``tether.rpc`` an unknown service has no responders, so the
caller gets ``unavailable``). The instance's queue group makes processes that
share an instance id (``App(instance_id=...)`` served with ``--workers N``)
split its calls instead of each running every one. A request's NATS headers
become the same lower-case header mapping HTTP gives the dispatcher, so
validation, deadlines, errors and authorization are exactly those of HTTP;
the reply carries the HTTP status in ``tether-status``. nats-py reconnects by
itself after a NATS restart and subscribes again.

Hook it to an App with :func:`serve_relay` (start-up and shutdown hooks), or
run only the relay with :func:`run_relay` (``tether serve --relay URL --no-http``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.errors import StatusCode, TetherError
from tether.server.dispatcher import REQUEST_ID_HEADER, Response, error_response
from tether.settings import Settings, get_settings
from tether.transports.nats_connect import (
    INSTANCE_PREFIX,
    RPC_PREFIX,
    STATUS_HEADER,
    NatsCredentials,
    check_token,
    close_quietly,
    connect,
    permission_violation,
)

if TYPE_CHECKING:
    from tether.server.app import App

log = logging.getLogger("tether.relay")


class RelayServer:
    """Serves an App's services through NATS.

    Args:
        app: the App whose dispatcher serves the calls.
        url: ``nats://host:port`` or ``tls://...`` (several, comma-separated).
        instance_id: the id for ``tether.inst.{id}`` (default: ``app.instance_id``).
        settings: where NATS credentials and TLS come from (default:
            :func:`tether.settings.get_settings`).
        credentials: explicit credentials; fields left unset come from ``settings``.
        connect_timeout: seconds to wait for NATS at :meth:`start`.
        reconnect_wait: seconds between reconnection attempts after an outage.
        drain_timeout: seconds :meth:`stop` waits for calls in progress.

    Attributes:
        calls_received: requests this relay took from NATS since it was made.

    Raises:
        ValueError: a service or method name, or the instance id, cannot be a
            NATS subject token (holds ``.``, ``*``, ``>`` or whitespace).
    """

    def __init__(
        self,
        app: App,
        url: str,
        *,
        instance_id: str | None = None,
        settings: Settings | None = None,
        credentials: NatsCredentials | None = None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        drain_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.url = url
        self.instance_id = check_token("instance id", instance_id or app.instance_id)
        fallback = NatsCredentials.from_settings(settings or get_settings(), url)
        self._credentials = (credentials or NatsCredentials()).over(fallback)
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._drain_timeout = drain_timeout
        self._nc: NatsClient | None = None
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.calls_received = 0
        self._denied: list[str] | None = None  # permission errors, collected during start()

    def __repr__(self) -> str:
        state = "serving" if self._subscriptions else "stopped"
        return f"<RelayServer {self.url} instance={self.instance_id} {state}>"

    @property
    def subjects(self) -> list[tuple[str, str]]:
        """``(subject, queue group)`` for every subscription this relay makes.

        Raises:
            ValueError: a service or method name cannot be a subject token.
        """
        out: list[tuple[str, str]] = []
        for service, spec in sorted(self.app.dispatcher.services.items()):
            check_token("service name", service)
            for name in spec.methods:
                check_token(f"method name of {service}", name)
            out.append((f"{RPC_PREFIX}.{service}.*", service))
        # A queue group here too: processes sharing an instance id run each call once.
        out.append((f"{INSTANCE_PREFIX}.{self.instance_id}.>", f"inst.{self.instance_id}"))
        return out

    async def start(self) -> None:
        """Connect to NATS and subscribe every hosted service.

        Raises:
            Unavailable: NATS refused or did not answer within ``connect_timeout``.
            TetherError: ``unauthenticated`` when NATS rejected the credentials;
                ``permission_denied`` when NATS refused one of the subscriptions
                (the NATS user may not subscribe to ``tether.rpc.>`` or
                ``tether.inst.>``).
            ValueError: a name cannot be a subject token, or a TLS file is unreadable.
        """
        if self._nc is not None:
            return
        subjects = self.subjects
        self._denied = []
        try:
            self._nc = await connect(
                self.url,
                self._credentials,
                name=f"tether-relay:{self.instance_id}",
                connect_timeout=self._connect_timeout,
                reconnect_wait=self._reconnect_wait,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
            )
            instance_prefix = f"{INSTANCE_PREFIX}.{self.instance_id}."
            for subject, queue in subjects:
                # What precedes {service}.{method}: tether.rpc. or tether.inst.{id}.
                prefix = (
                    instance_prefix if subject.startswith(instance_prefix) else f"{RPC_PREFIX}."
                )
                self._subscriptions.append(
                    await self._nc.subscribe(subject, queue=queue, cb=self._callback(prefix))
                )
            # The subscriptions are in place when start() returns, and NATS reports
            # a refused one (-ERR) before it answers a PING sent after it. Twice:
            # nats-py writes a flush's PING ahead of the SUBs still in its buffer,
            # which go out right after it; the second PING surely follows them.
            await self._nc.flush()
            await self._nc.flush()
            if self._denied:
                raise TetherError(
                    f"NATS at {self.url} refused to let this relay subscribe: "
                    f"{'; '.join(self._denied)}. Allow its NATS user to subscribe to "
                    f"{RPC_PREFIX}.> and {INSTANCE_PREFIX}.>, and to answer (allow_responses)",
                    code=StatusCode.PERMISSION_DENIED,
                )
        except BaseException:
            nc, self._nc = self._nc, None
            self._subscriptions.clear()
            if nc is not None:
                await close_quietly(nc)
            raise
        finally:
            self._denied = None
        log.info(
            "relay: serving %s as instance %s through %s",
            ", ".join(self.app.services),
            self.instance_id,
            self.url,
        )

    async def stop(self) -> None:
        """Stop taking calls, let those in progress answer (up to ``drain_timeout``), close."""
        nc = self._nc
        if nc is None or self._stopping:
            return
        self._stopping = True
        for sub in self._subscriptions:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                log.debug("relay: unsubscribing %s failed", sub.subject, exc_info=True)
        self._subscriptions.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._drain_timeout)
        self._nc = None
        await close_quietly(nc)  # writes out the last replies first
        self._stopping = False
        log.info("relay: instance %s stopped", self.instance_id)

    async def _on_disconnected(self) -> None:
        # Not while stopping, nor for a first connection that failed (which
        # start() reports): nats-py calls this as it closes those too.
        if self._stopping or self._nc is None:
            return
        log.warning("relay: lost the connection to NATS at %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        log.warning("relay: reconnected to NATS at %s; subscriptions restored", self.url)

    async def _on_error(self, exc: Exception) -> None:
        if self._denied is not None and permission_violation(exc):
            self._denied.append(str(exc).removeprefix("nats: "))
            return
        log.warning("relay: NATS at %s reported %s: %s", self.url, type(exc).__name__, exc)

    def _callback(self, prefix: str) -> Callable[[Msg], Coroutine[Any, Any, None]]:
        """The callback of the subscription to ``prefix`` + ``*`` or ``>``: one task per
        call, so calls run concurrently (nats-py runs a subscription's callbacks in turn).
        The rest of the subject after ``prefix`` is ``{service}.{method}``."""
        cut = len(prefix)

        async def on_message(msg: Msg) -> None:
            self.calls_received += 1
            service, _, method = msg.subject[cut:].partition(".")
            task = asyncio.create_task(self._serve(service, method, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return on_message

    async def _serve(self, service: str, method: str, msg: Msg) -> None:
        """Dispatch one request and publish the reply; never raises."""
        if not msg.reply:
            log.debug("relay: %s.%s published without a reply subject; ignored", service, method)
            return
        headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
        # The dispatcher refuses (and counts) a body over the App's limit, as for HTTP.
        response = await self.app.dispatcher.dispatch(service, method, msg.data, headers)
        await self._reply(msg.reply, response, headers.get(REQUEST_ID_HEADER))

    async def _reply(self, subject: str, response: Response, request_id: str | None) -> None:
        nc = self._nc
        if nc is None:
            return
        reply_headers = {STATUS_HEADER: str(response.status), "content-type": response.content_type}
        if request_id:
            reply_headers[REQUEST_ID_HEADER] = request_id
        try:
            try:
                await nc.publish(subject, response.body, headers=reply_headers)
            except nats.errors.MaxPayloadError:
                too_big = error_response(
                    TetherError(
                        f"the result of {len(response.body)} bytes is larger than NATS accepts "
                        f"(max_payload {nc.max_payload} bytes)",
                        code=StatusCode.RESOURCE_EXHAUSTED,
                    )
                )
                reply_headers.update(
                    {STATUS_HEADER: str(too_big.status), "content-type": too_big.content_type}
                )
                await nc.publish(subject, too_big.body, headers=reply_headers)
        except nats.errors.Error as exc:
            log.warning("relay: could not send a reply: %s: %s", type(exc).__name__, exc)


def serve_relay(app: App, url: str, **options: Any) -> RelayServer:
    """Serve ``app`` through NATS from its start-up to its shutdown.

    Registers the relay's :meth:`~RelayServer.start` and
    :meth:`~RelayServer.stop` as the App's start-up and shutdown hooks, so
    the ASGI lifespan (or ``await app.startup()``) starts it.

    Args:
        app: the App.
        url: the NATS URL.
        **options: keyword arguments of :class:`RelayServer`.

    Returns:
        The RelayServer (not started yet).

    Raises:
        ValueError: the instance id, a service or a method name cannot be a NATS
            subject token (holds ``.``, ``*``, ``>`` or whitespace). Connection
            errors come from the start-up hook (see :meth:`RelayServer.start`).
    """
    relay = RelayServer(app, url, **options)
    app.on_startup(relay.start)
    app.on_shutdown(relay.stop)
    return relay


async def run_relay(app: App, url: str, stop: asyncio.Event | None = None, **options: Any) -> None:
    """Serve ``app`` through NATS only (no HTTP) until SIGINT/SIGTERM or ``stop`` is set.

    Runs the App's start-up hooks (the relay's included), waits, then its
    shutdown hooks: calls in progress get ``drain_timeout`` seconds to answer.

    Raises:
        ValueError: the instance id, a service or a method name cannot be a NATS
            subject token, or a TLS or credentials file is unreadable.
        Unavailable: NATS refused the connection or did not answer.
        TetherError: ``unauthenticated`` (NATS rejected the credentials) or
            ``permission_denied`` (NATS refused a subscription); see
            :meth:`RelayServer.start`.
    """
    serve_relay(app, url, **options)
    await run_hooked(app, stop)


async def run_hooked(app: App, stop: asyncio.Event | None = None) -> None:
    """Run ``app``'s start-up hooks, wait for SIGINT/SIGTERM or ``stop``, run its shutdown hooks.

    For an App served without HTTP, whose hooks (a relay, a registration)
    do the serving. Must run in the main thread (it installs signal handlers).

    Raises:
        Exception: whatever a start-up hook raises (the shutdown hooks still
            run): for a relay see :meth:`RelayServer.start`; for a
            registration, :class:`tether.registry.RegistryError`.
        RuntimeError: not called from the main thread's event loop
            (``add_signal_handler`` refuses).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.startup()
        await stop.wait()
    finally:
        try:
            await app.shutdown()  # a second signal meanwhile changes nothing
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
