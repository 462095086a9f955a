"""Client TLS: verify the server with a CA bundle, or pin its certificate.

A pin is the hex SHA-256 fingerprint of the server's DER certificate (what
``openssl x509 -noout -fingerprint -sha256`` prints, colons optional). With
a pin alone the chain and host name are not verified (a self-signed server
certificate works); the peer certificate is compared to the pin right after
the handshake, before any byte of the request is sent. The check hooks into
the context's ``sslsocket_class`` (blocking sockets, ``http.client``) and
``sslobject_class`` (asyncio and aiohttp), so both transports honour it
unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path
from typing import Any


def normalise_pin(pin: str) -> str:
    """A pin as 64 lower-case hex digits (colons and spaces dropped).

    Raises:
        ValueError: not a SHA-256 hex fingerprint.
    """
    text = pin.replace(":", "").replace(" ", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("a certificate pin is the 64-hex-digit SHA-256 fingerprint")
    return text


def fingerprint(pem_or_der: str | bytes | Path) -> str:
    """The hex SHA-256 fingerprint of a certificate (PEM text, DER bytes, or a PEM file)."""
    data: str | bytes = pem_or_der.read_text() if isinstance(pem_or_der, Path) else pem_or_der
    der = ssl.PEM_cert_to_DER_cert(data) if isinstance(data, str) else data
    return hashlib.sha256(der).hexdigest()


def check_pin(der: bytes | None, pin: str) -> None:
    """Compare a peer certificate with a pin.

    Raises:
        ssl.SSLCertVerificationError: no certificate, or another one.
    """
    if not der or not hmac.compare_digest(hashlib.sha256(der).hexdigest(), pin):
        raise ssl.SSLCertVerificationError(
            "the server's certificate does not match the pinned SHA-256 fingerprint"
        )


def _pinned_classes(pin: str) -> tuple[type[ssl.SSLSocket], type[ssl.SSLObject]]:
    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check_pin(self.getpeercert(binary_form=True), pin)

    class PinnedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            check_pin(self.getpeercert(binary_form=True), pin)

    return PinnedSocket, PinnedObject


def client_context(
    *,
    ca: str | Path | None = None,
    pin_sha256: str | None = None,
    cert: tuple[str | Path, str | Path] | str | Path | None = None,
) -> ssl.SSLContext:
    """An SSL context for a Tether client.

    Args:
        ca: a CA bundle (PEM) to verify the server with; default the
            system's trust store (unless pinning alone).
        pin_sha256: the server certificate's fingerprint; with ``ca`` both
            checks apply, without it only the pin.
        cert: this client's certificate for mutual TLS: ``(cert, key)``
            PEM files, or one PEM file holding both.

    Raises:
        ValueError: a malformed pin.
        OSError, ssl.SSLError: unreadable CA, certificate or key files.
    """
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if pin_sha256 is not None:
        pin = normalise_pin(pin_sha256)
        if ca is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        sock_class, object_class = _pinned_classes(pin)
        context.sslsocket_class = sock_class
        context.sslobject_class = object_class
    if cert is not None:
        if isinstance(cert, tuple):
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        else:
            context.load_cert_chain(str(cert))
    return context


def describe_tls_error(exc: BaseException | Any) -> str | None:
    """Say which side refused a TLS handshake, from an exception's text, or None.

    ``certificate`` problems of the client (the server's alert) and of the
    server (verification or pin) read differently; used for login messages.
    """
    text = str(exc).lower()
    if "pinned" in text:
        return "the server's certificate does not match the pin"
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return "the server's certificate could not be verified (wrong CA bundle?)"
    if any(
        a in text
        for a in (
            "alert unknown ca",
            "alert bad certificate",
            "certificate required",
            "alert certificate unknown",
            "alert certificate expired",
            "alert decrypt error",
        )
    ):
        return "the server refused the client certificate"
    return None
