"""uvicorn's httptools protocol plus the ASGI TLS extension (the client certificate).

uvicorn (0.54 here) puts nothing of TLS in the ASGI scope but ``scheme``:
the peer certificate a mutual-TLS client presented is out of the App's
reach. This subclass of uvicorn's ``HttpToolsProtocol`` adds
``scope["extensions"]["tls"]`` as the ASGI TLS extension specifies
(``client_cert_chain``: PEM strings, leaf first; ``tls_version``), read
once per connection from the SSL object after the handshake (asyncio calls
``connection_made`` once the handshake is done). ``tether serve`` selects
it with uvicorn's ``http=`` option when TLS is on; other ASGI servers that
implement the extension (Hypercorn) need nothing.

Only the leaf is available (``SSLObject.getpeercert`` has no chain before
Python 3.13), so ``client_cert_chain`` holds one certificate.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension dict for a connection, or None when not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class TLSHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that adds the ASGI TLS extension to every request's scope."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = tls_extension(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            scope: Any = self.scope
            scope["extensions"] = {**scope.get("extensions", {}), "tls": self._tls}
