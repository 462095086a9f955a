"""Who is calling: the :class:`Identity` every authentication method produces."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

AuthMethod = Literal["api_key", "password", "token", "oidc", "certificate"]

#: Where the App leaves a request's identity and its Authenticator in the ASGI
#: scope's ``state`` for mounted apps (the jobs API); no Authenticator: no auth.
IDENTITY_KEY = "tether.identity"
AUTHENTICATOR_KEY = "tether.auth"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller, as ``tether.current_call().identity`` shows it.

    Attributes:
        subject: the user name, API key owner, OIDC ``sub`` or certificate name.
        scopes: what the caller may do; methods and services list the scopes
            they require (all of them must be held).
        method: how the caller proved it: ``password`` (an access token from
            ``/auth/login``), ``token`` (an access token from ``/auth/refresh``
            or given as is), ``api_key``, ``oidc`` or ``certificate``.
        expires_at: Unix time (seconds) when the credential stops being
            valid, or None (API keys, certificates checked per connection).
        session: the refresh-token family an access token belongs to, if any.
        claims: the verified token claims (JWT methods), else empty.
    """

    subject: str
    scopes: frozenset[str] = frozenset()
    method: AuthMethod = "token"
    expires_at: float | None = None
    session: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def has(self, required: Iterable[str]) -> bool:
        """True when the identity holds every scope in ``required``."""
        return self.scopes.issuperset(required)

    def missing(self, required: Iterable[str]) -> list[str]:
        """The scopes of ``required`` the identity lacks, sorted."""
        return sorted(set(required) - self.scopes)

    def expired(self, now: float | None = None) -> bool:
        """True when ``expires_at`` has passed (``now`` in Unix seconds)."""
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (``GET /auth/whoami``): never any secret."""
        return {
            "subject": self.subject,
            "scopes": sorted(self.scopes),
            "method": self.method,
            "expires_at": self.expires_at,
        }


def parse_scopes(value: Any) -> frozenset[str]:
    """Scopes from a claim: a space-separated string (OAuth 2 ``scope``) or a list.

    Anything else (None, numbers) gives no scopes.
    """
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(str(v) for v in value)
    return frozenset()
