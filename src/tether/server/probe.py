"""Waiting until this process's own HTTP server takes calls.

uvicorn runs an App's start-up hooks before it binds its port, so an
instance that registered during start-up would be found by clients while its
port still refuses connections. :func:`wait_until_serving` polls the local
port's ``GET /healthz`` until it answers; the registration waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

log = logging.getLogger("tether.registry")

_LOCAL = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}
_ATTEMPT_TIMEOUT = 2.0  # seconds for one probe
_FIRST_PAUSE = 0.02  # seconds between probes at first; grows to _MAX_PAUSE
_MAX_PAUSE = 0.5
_PATIENCE = 30.0  # seconds before a warning that the server does not answer yet


def local_host(host: str) -> str:
    """The address to reach a server listening on ``host`` from this machine: a
    wildcard (``0.0.0.0``, ``::``) becomes the loopback address of its family."""
    return _LOCAL.get(host, host.strip("[]"))


async def answers_healthz(host: str, port: int, *, tls: bool) -> bool:
    """True when ``GET /healthz`` on ``host:port`` answers 200.

    One probe takes at most 2 seconds (connecting, the TLS handshake and the
    status line together); one that runs out of them, or cannot connect, is
    False, never an error. With ``tls``, the certificate is not checked
    (this is our own server, probed for liveness only), and a server that
    accepted the connection but ends the exchange, or does not answer within
    the 2 seconds, once TLS is under way (it wants a client certificate:
    mutual TLS) counts as serving, since it accepted the connection.
    """
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    accepted = False
    try:
        async with asyncio.timeout(_ATTEMPT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            accepted = True
            try:
                writer.write(
                    b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
                )
                status_line = await reader.readline()
            finally:
                writer.close()
    except ssl.SSLError:
        return True
    except (OSError, TimeoutError):
        return tls and accepted
    return status_line.startswith(b"HTTP/1.") and status_line[9:12] == b"200"


async def wait_until_serving(host: str, port: int, *, tls: bool = False) -> None:
    """Return once the HTTP server on ``host:port`` (a wildcard means this
    machine's loopback) answers ``GET /healthz`` with 200.

    Polls every 20 ms at first, then less often (at most every 0.5 s);
    never gives up (cancel it), warning once after 30 s.
    """
    target = local_host(host)
    started = time.monotonic()
    pause = _FIRST_PAUSE
    warned = False
    while not await answers_healthz(target, port, tls=tls):
        if not warned and time.monotonic() - started > _PATIENCE:
            log.warning(
                "%s:%d does not answer /healthz yet; not registered until it does", host, port
            )
            warned = True
        await asyncio.sleep(pause)
        pause = min(pause * 2, _MAX_PAUSE)
