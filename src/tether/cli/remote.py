"""Small HTTP GETs the CLI makes (descriptions, health), on the sync transport."""

from __future__ import annotations

from typing import Any

from tether.codec import Codec, decode_any
from tether.errors import TetherError, error_from_envelope
from tether.transports.http_sync import SyncHTTPTransport


def fetch(url: str, path: str, timeout: float) -> tuple[int, Any]:
    """GET ``url + path``: the status and the decoded JSON body (None if not JSON).

    Sends the credentials stored for ``url`` (``tether login``), if any.

    Raises:
        TetherError: Unavailable or DeadlineExceeded.
    """
    from tether.client.auth import resolve
    from tether.settings import get_settings

    auth, context = resolve(url, get_settings())  # the stored credentials, if any
    transport = SyncHTTPTransport(url, ssl_context=context)
    try:
        headers = {"accept": "application/json", **(auth.headers() if auth else {})}
        raw = transport.request("GET", path, None, headers, timeout)
        if raw.status == 401 and auth is not None and auth.on_unauthorized():
            headers.update(auth.headers())
            raw = transport.request("GET", path, None, headers, timeout)
    finally:
        transport.close()
    try:
        return raw.status, decode_any(raw.body, Codec.JSON)
    except TetherError:
        return raw.status, None


def fetch_json(url: str, path: str, timeout: float) -> Any:
    """GET ``url + path`` and decode its JSON body (see :func:`fetch`).

    Raises:
        TetherError: Unavailable, DeadlineExceeded, or the error the server answered.
    """
    status, body = fetch(url, path, timeout)
    if status >= 400:
        raise error_from_envelope(body, status)
    return body
