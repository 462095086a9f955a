"""``AuthConfig``: how an App authenticates and authorizes its callers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tether.auth.certificates import CertificateAuth
from tether.auth.oidc import OIDCProvider
from tether.auth.passwords import PasswordHasher
from tether.auth.ratelimit import LoginLimiter
from tether.auth.store import CredentialStore

DAY = 86400.0


@dataclass
class AuthConfig:
    """Authentication and authorization settings of an App (``App(..., auth=AuthConfig())``).

    With an ``AuthConfig`` every RPC call, description, OpenAPI document,
    docs page, ``/metrics`` and mounted app (the jobs API) needs a valid identity;
    ``/healthz``, ``/readyz``, ``/auth/login``, ``/auth/refresh`` and
    ``/auth/logout`` stay open.

    Attributes:
        store: users, API keys and refresh sessions: a :class:`CredentialStore`,
            a path to its SQLite file, or None for ``settings.effective_auth_store_path``
            (opened on first use).
        issuer: ``iss`` of the access tokens this App issues and accepts.
        audience: ``aud`` of those tokens; a token for another audience is refused.
        signing_key: HMAC key (or private key PEM) for access tokens;
            default a random key kept in the store (shared by all workers).
        verify_key: the public key when ``algorithm`` is asymmetric.
        algorithm: PyJWT algorithm of access tokens (``HS256``).
        access_ttl: seconds an access token lives (15 minutes).
        refresh_ttl: seconds a login session (its refresh tokens) lives (14 days).
        leeway: seconds of clock skew tolerated on access tokens.
        oidc: outside OpenID Connect providers whose tokens are accepted.
        certificates: subjects of client certificates accepted (mutual TLS),
            or None to ignore client certificates.
        api_keys: accept API keys from the store.
        scopes: scopes required, by service (``"inventory"``), by method
            (``"inventory.add"``), on top of those the interface declares, or
            by jobs action: ``"jobs.submit"`` (``POST /jobs``), ``"jobs.read"``
            (list, get, wait, types, validate), ``"jobs.cancel"`` and
            ``"jobs.work"`` (claim, heartbeat, complete, fail, release,
            mark-cancelled). A jobs action left out needs only an identity,
            except ``"jobs.work"``, which then needs the scope ``"jobs.work"``
            (``{"jobs.work": []}`` opens it to any identity). A job type's own
            ``scopes`` add to ``jobs.submit``'s; they do not guard reading,
            waiting for or cancelling its jobs.
        route_scopes: scopes required for HTTP routes other than RPC calls, by
            path prefix relative to the App (``{"/rpc": ["introspect"],
            "/jobs": ["jobs"]}``: ``/rpc`` covers ``GET /rpc`` and
            ``GET /rpc/{service}``); every matching prefix applies. RPC calls
            are governed by ``scopes`` alone, whatever carries them.
        login_limits: the failed-login limiter (default 5 per user, 20 per
            address, per minute).
        password_hasher: Argon2id parameters for passwords set through the
            default store.
        revocation_cache: seconds a session's revocation state is cached
            per process: an access token stops working at most this long
            after its session logs out in another worker process.
        open_paths: more paths (relative to the App) that need no identity.
    """

    store: CredentialStore | str | Path | None = None
    issuer: str = "tether"
    audience: str = "tether"
    signing_key: bytes | str | None = None
    verify_key: bytes | str | None = None
    algorithm: str = "HS256"
    access_ttl: float = 900.0
    refresh_ttl: float = 14 * DAY
    leeway: float = 0.0
    oidc: Sequence[OIDCProvider] = ()
    certificates: CertificateAuth | None = None
    api_keys: bool = True
    scopes: Mapping[str, Iterable[str]] = field(default_factory=dict)
    route_scopes: Mapping[str, Iterable[str]] = field(default_factory=dict)
    login_limits: LoginLimiter | None = None
    password_hasher: PasswordHasher | None = None
    revocation_cache: float = 5.0
    open_paths: Sequence[str] = ()
