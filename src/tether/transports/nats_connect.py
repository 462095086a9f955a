"""Connecting to NATS for the relay: subjects, credentials, TLS and clear errors.

Both sides of the relay (:mod:`tether.server.relay` and
:mod:`tether.transports.nats`) open their NATS connection here, so they read
the same settings and report a refused connection or rejected credentials
the same way. Once connected, nats-py reconnects by itself, forever, and
restores every subscription.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NatsClient

from tether.errors import StatusCode, TetherError, Unavailable
from tether.settings import Settings

log = logging.getLogger("tether.relay")

RPC_PREFIX = "tether.rpc"
INSTANCE_PREFIX = "tether.inst"
STATUS_HEADER = "tether-status"

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]

_FORBIDDEN_IN_TOKEN = frozenset(".*> \t\r\n")


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it can be one token of a NATS subject.

    Raises:
        ValueError: it is empty or holds ``.``, ``*``, ``>`` or whitespace.
    """
    if not value or _FORBIDDEN_IN_TOKEN & set(value):
        raise ValueError(
            f"{kind} {value!r} cannot travel over the relay: NATS subject tokens must be "
            "non-empty, without '.', '*', '>' or whitespace"
        )
    return value


def subject_prefix(instance_id: str | None) -> str:
    """``tether.rpc`` (any instance, queue group) or ``tether.inst.{id}`` (that one).

    Raises:
        ValueError: ``instance_id`` is not a valid subject token.
    """
    if instance_id is None:
        return RPC_PREFIX
    return f"{INSTANCE_PREFIX}.{check_token('instance id', instance_id)}"


def split_address(url: str, instance_id: str | None = None) -> tuple[str, str | None]:
    """``"nats://host:port#ID"`` -> ``("nats://host:port", "ID")``; ``instance_id``
    (when given) wins over the fragment. The form a relay instance's address takes."""
    base, _, fragment = url.partition("#")
    return base, instance_id or fragment or None


@dataclass(frozen=True)
class NatsCredentials:
    """How to log in to NATS; every field is optional.

    Attributes:
        user, password: user and password (or put them in the URL).
        token: an authorization token.
        nkey_seed_file: file holding an NKey user seed (needs ``nkeys``).
        creds_file: a ``.creds`` file: user JWT and NKey seed (needs ``nkeys``).
        tls_ca_bundle: CA bundle (PEM) the server's certificate is checked with.
        tls_cert, tls_key: client certificate and key (PEM) for mutual TLS.

    TLS is used when the URL is ``tls://``, when the server requires it, or
    when ``tls_ca_bundle`` or ``tls_cert`` is set.
    """

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls_ca_bundle: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name in ('password', 'token') else getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) is not None
        )
        return f"NatsCredentials({shown})"

    @classmethod
    def from_settings(cls, settings: Settings, url: str = "") -> NatsCredentials:
        """The ``nats_*`` settings; with a ``tls://`` URL and no ``nats_tls_*``
        setting, the generic ``tls_*`` ones."""
        secret = settings.nats_password
        token = settings.nats_token
        ca, cert, key = settings.nats_tls_ca_bundle, settings.nats_tls_cert, settings.nats_tls_key
        if url.startswith("tls://") and not (ca or cert or key):
            ca, cert, key = settings.tls_ca_bundle, settings.tls_cert, settings.tls_key
        return cls(
            user=settings.nats_user,
            password=secret.get_secret_value() if secret is not None else None,
            token=token.get_secret_value() if token is not None else None,
            nkey_seed_file=settings.nats_nkey_seed_file,
            creds_file=settings.nats_creds_file,
            tls_ca_bundle=ca,
            tls_cert=cert,
            tls_key=key,
        )

    def over(self, fallback: NatsCredentials) -> NatsCredentials:
        """These credentials, with the fields left unset taken from ``fallback``."""
        missing = {
            f.name: getattr(fallback, f.name) for f in fields(self) if getattr(self, f.name) is None
        }
        return replace(self, **missing)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context when a CA bundle or client certificate is set, else None.

        Raises:
            ValueError: a file cannot be read or is not PEM.
        """
        if self.tls_ca_bundle is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_bundle) if self.tls_ca_bundle else None
            )
            if self.tls_cert is not None:
                context.load_cert_chain(
                    str(self.tls_cert), str(self.tls_key) if self.tls_key else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the NATS TLS files: {exc}") from None
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (only those that are set).

        Raises:
            ValueError: a TLS or key file cannot be read.
        """
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
        if self.password is not None:
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.creds_file is not None:
            options["user_credentials"] = str(_readable(self.creds_file, "creds file"))
        elif self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(_readable(self.nkey_seed_file, "NKey seed file"))
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        return options


def _readable(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"the NATS {what} {str(path)!r} does not exist")
    return path


def _auth_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or any(
        word in text for word in ("authorization violation", "authentication", "user not found")
    )


def permission_violation(exc: BaseException) -> bool:
    """True for the error NATS reports when it refuses a subscription or a publish
    for lack of permission (the connection stays open)."""
    return "permissions violation" in str(exc).lower()


def _tls_failure(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLError) or "tls" in str(exc).lower()


async def connect(
    url: str,
    credentials: NatsCredentials,
    *,
    name: str,
    connect_timeout: float = 5.0,
    reconnect_wait: float = 0.5,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    error_cb: ErrorCallback | None = None,
    log_level: int = logging.WARNING,
) -> NatsClient:
    """Open a NATS connection that then reconnects by itself, forever.

    Args:
        url: ``nats://host:port`` or ``tls://host:port`` (several, comma-separated).
        credentials: how to log in.
        name: the connection's name, as NATS monitoring shows it.
        connect_timeout: seconds to wait for the first connection.
        reconnect_wait: seconds between reconnection attempts to one server.
        disconnected_cb, reconnected_cb: coroutine functions called when
            the connection drops and comes back.
        error_cb: coroutine function called with each error NATS reports
            after the first connection (a permissions violation, say), instead
            of logging it.
        log_level: level at which errors after the first connection are
            logged (to ``tether.relay``) when there is no ``error_cb``.

    Raises:
        Unavailable: every server refused or did not answer, or TLS failed
            (``details``: ``{"sent": False}``).
        TetherError: ``unauthenticated`` when NATS rejected the credentials.
        ValueError: a credentials or TLS file cannot be read.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"not a NATS URL: {server!r} (use nats://host:port or tls://...)")
    options = credentials.connect_options()
    errors: list[BaseException] = []
    fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    connected = False

    async def on_error(exc: Exception) -> None:
        if connected:
            if error_cb is not None:
                await error_cb(exc)
            else:
                log.log(log_level, "NATS %s: %s: %s", name, type(exc).__name__, exc)
            return
        errors.append(exc)
        if not fatal.done() and (_auth_failure(exc) or len(errors) >= len(servers)):
            fatal.set_result(exc)

    client = NatsClient()
    attempt = asyncio.ensure_future(
        client.connect(
            servers,
            name=name,
            error_cb=on_error,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            connect_timeout=max(1, round(connect_timeout)),
            reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]  # float works
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            **options,
        )
    )
    waiters: set[asyncio.Future[Any]] = {attempt, fatal}
    try:
        done, _ = await asyncio.wait(
            waiters, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        attempt.cancel()
        await _abandon(client, attempt)
        raise
    if attempt in done and attempt.exception() is None:
        connected = True
        fatal.cancel()
        return client
    attempt.cancel()
    await _abandon(client, attempt)
    cause: BaseException | None = (
        fatal.result()
        if fatal.done() and not fatal.cancelled()
        else (attempt.exception() if attempt.done() and not attempt.cancelled() else None)
    )
    if cause is not None and _auth_failure(cause):
        raise TetherError(
            f"NATS at {url} rejected the credentials ({cause}); check nats_user/nats_password, "
            "nats_token, nats_nkey_seed_file or nats_creds_file",
            code=StatusCode.UNAUTHENTICATED,
        )
    if cause is None:
        reason = f"no answer within {connect_timeout:g} s"
    elif _tls_failure(cause):
        reason = f"TLS failed: {type(cause).__name__}: {cause}"
    else:
        reason = f"{type(cause).__name__}: {cause}"
    raise Unavailable(f"cannot connect to NATS at {url}: {reason}", {"sent": False})


async def _abandon(client: NatsClient, attempt: asyncio.Future[Any]) -> None:
    """Stop a connection attempt and whatever it left running."""
    await asyncio.wait({attempt}, timeout=2.0)
    if attempt.done() and not attempt.cancelled():
        attempt.exception()  # retrieved: the caller reports the cause
    await close_quietly(client)


async def close_quietly(client: NatsClient) -> None:
    """Close a NATS connection, whatever state it is in (even one that never opened).

    nats-py may raise, or leak a CancelledError from its own tasks, when the
    server vanished at that moment; a cancellation of the caller's own task
    still propagates.
    """
    if client.is_closed:
        return
    try:
        await client.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("closing a NATS connection was cut short")
    except Exception:
        log.debug("closing a NATS connection failed", exc_info=True)
