"""Identity from a client certificate presented under mutual TLS.

The TLS layer (uvicorn with ``--tls-client-ca``) has already verified the
chain against the client CA; here the verified leaf certificate is read
(cryptography) and its name mapped to an :class:`Identity`: the subject's
common name (CN), else the first subject alternative name (e-mail, DNS
name or URI), as RFC 6125 ranks them for naming a peer.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import NameOID

from tether.auth.errors import AuthenticationFailed
from tether.auth.identity import Identity


@dataclass(frozen=True)
class CertificateName:
    """What a certificate names.

    Attributes:
        subject: the CN, else the first SAN: who the certificate is for.
        common_name: the subject's CN, or None.
        alternative_names: e-mail addresses, DNS names and URIs of the SAN.
        sha256: hex SHA-256 fingerprint of the DER certificate.
        not_after: Unix seconds the certificate expires at.
    """

    subject: str
    common_name: str | None
    alternative_names: tuple[str, ...]
    sha256: str
    not_after: float


@lru_cache(maxsize=1024)
def certificate_name(pem_or_der: str | bytes) -> CertificateName:
    """Read the names of a certificate given as PEM text or DER bytes (cached).

    Raises:
        AuthenticationFailed: ``refused="certificate"`` when it cannot be
            parsed or names nobody.
    """
    try:
        der = ssl.PEM_cert_to_DER_cert(pem_or_der) if isinstance(pem_or_der, str) else pem_or_der
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthenticationFailed(
            "the client certificate cannot be read", refused="certificate"
        ) from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans += ext.get_values_for_type(x509.RFC822Name)
        sans += ext.get_values_for_type(x509.DNSName)
        sans += ext.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass
    subject = cn or (sans[0] if sans else None)
    if not subject:
        raise AuthenticationFailed(
            "the client certificate names no subject (no CN or SAN)", refused="certificate"
        )
    return CertificateName(
        subject,
        cn,
        tuple(sans),
        hashlib.sha256(der).hexdigest(),
        cert.not_valid_after_utc.timestamp(),
    )


class CertificateAuth:
    """Which certificate subjects may call, and with which scopes.

    Args:
        subjects: scopes by certificate subject (CN, else first SAN).
        default_scopes: scopes for any other subject the client CA vouches
            for; None refuses subjects not listed.
    """

    def __init__(
        self,
        subjects: Mapping[str, Iterable[str]] | None = None,
        *,
        default_scopes: Iterable[str] | None = None,
    ) -> None:
        self.subjects = {k: frozenset(v) for k, v in (subjects or {}).items()}
        self.default_scopes = None if default_scopes is None else frozenset(default_scopes)

    def __repr__(self) -> str:
        return f"<CertificateAuth subjects={sorted(self.subjects)}>"

    def identity(self, pem_or_der: str | bytes) -> Identity:
        """The identity of a verified peer certificate.

        Raises:
            AuthenticationFailed: ``refused="certificate"``: unreadable, or
                a subject not allowed here.
        """
        name = certificate_name(pem_or_der)
        scopes = self.subjects.get(name.subject, self.default_scopes)
        if scopes is None:
            raise AuthenticationFailed(
                f"the client certificate for {name.subject!r} is not allowed here",
                refused="certificate",
            )
        return Identity(
            name.subject,
            scopes,
            "certificate",
            name.not_after,
            claims={"sha256": name.sha256, "san": list(name.alternative_names)},
        )
