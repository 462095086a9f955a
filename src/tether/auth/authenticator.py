"""The Authenticator: turns credentials into an :class:`Identity` and checks scopes.

One object per App, used by three callers that all check the same way:

- the dispatcher's prepare step (every RPC call, whatever carried it: HTTP,
  in-process, the NATS relay) reads the ``authorization`` header;
- the App, before routing any other HTTP request (descriptions, OpenAPI,
  docs, metrics, mounted apps such as the jobs API), and for mutual TLS
  reads the client certificate from the ASGI TLS extension;
- the ``/auth`` endpoints (login, refresh, logout, whoami).

``authorization`` forms: ``Bearer <access token>`` (this App's JWT or an
OIDC provider's, told apart by ``iss``), ``Bearer tak_...`` or
``ApiKey tak_...`` (an API key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.auth.apikeys import looks_like_api_key
from tether.auth.config import AuthConfig
from tether.auth.errors import AuthenticationFailed, PermissionDenied
from tether.auth.identity import AUTHENTICATOR_KEY, IDENTITY_KEY, Identity
from tether.auth.passwords import hash_password, needs_rehash, verify_password
from tether.auth.ratelimit import LoginLimiter
from tether.auth.store import CredentialStore, Session, default_store_path
from tether.auth.tokens import TokenIssuer, unverified_issuer
from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.interface import MethodSpec
    from tether.settings import Settings

log = logging.getLogger("tether.auth")

#: Paths (relative to the App) that never need an identity.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/auth/login", "/auth/refresh", "/auth/logout"})

# The identity the App established for the HTTP request being served; the
# dispatcher's prepare step takes it (and clears it) so nested calls made
# inside the method never inherit it.
_http_identity: ContextVar[Identity | None] = ContextVar("tether_http_identity", default=None)


class Authenticator:
    """Authentication and authorization for one App.

    Args:
        config: the App's :class:`AuthConfig`.
        settings: where the default auth store lives
            (``settings.effective_auth_store_path``); default the process-wide settings.
    """

    def __init__(self, config: AuthConfig, *, settings: Settings | None = None) -> None:
        self.config = config
        self._settings = settings  # where the default store lives; None: process-wide
        self.limiter = config.login_limits or LoginLimiter()
        self._store = config.store if isinstance(config.store, CredentialStore) else None
        self._tokens: TokenIssuer | None = None
        self._required: dict[tuple[str, str], frozenset[str]] = {}
        self._revoked: dict[str, tuple[bool, float]] = {}
        self._providers = {p.issuer: p for p in config.oidc}
        self._open = OPEN_PATHS | frozenset(config.open_paths)
        self._named_scopes = {k: frozenset(v) for k, v in config.scopes.items()}
        self._route_scopes = [
            (p.rstrip("/") or "/", frozenset(v)) for p, v in config.route_scopes.items()
        ]

    def __repr__(self) -> str:
        return f"<Authenticator iss={self.config.issuer!r} aud={self.config.audience!r}>"

    # -- parts made on first use -------------------------------------------

    @property
    def store(self) -> CredentialStore:
        """The credential store, opened on first use."""
        if self._store is None:
            path = self.config.store
            assert not isinstance(path, CredentialStore)
            self._store = CredentialStore(
                Path(path)
                if path is not None
                else self._settings.effective_auth_store_path
                if self._settings is not None
                else default_store_path(),
                hasher=self.config.password_hasher,
            )
        return self._store

    @property
    def tokens(self) -> TokenIssuer:
        """The access-token issuer (its key from the config, else from the store)."""
        if self._tokens is None:
            c = self.config
            self._tokens = TokenIssuer(
                c.signing_key if c.signing_key is not None else self.store.signing_key(),
                issuer=c.issuer,
                audience=c.audience,
                algorithm=c.algorithm,
                verify_key=c.verify_key,
                ttl=c.access_ttl,
                leeway=c.leeway,
            )
        return self._tokens

    async def startup(self) -> None:
        """Open the store, derive the signing key and fetch OIDC keys, off the event loop.

        A provider that cannot be reached now is logged and tried again on use.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self.tokens)
        for provider in self.config.oidc:
            try:
                await loop.run_in_executor(None, provider.refresh_keys)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cannot fetch the signing keys of %s yet: %s", provider.issuer, exc)

    # -- authentication ------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str], peer_cert: str | None = None) -> Identity:
        """Who is calling, from the ``authorization`` header or the client certificate.

        The header wins when both are present.

        Raises:
            AuthenticationFailed: no credentials (``refused="credentials"``),
                or refused ones (``token``, ``api_key``, ``certificate``).
        """
        header = headers.get("authorization")
        if header:
            scheme, _, value = header.strip().partition(" ")
            value = value.strip()
            kind = scheme.lower()
            if kind == "apikey" or (kind == "bearer" and looks_like_api_key(value)):
                return self._api_key(value)
            if kind == "bearer" and value:
                return self._bearer(value)
            raise AuthenticationFailed(
                f"the authorization scheme {scheme!r} is not supported here; send "
                "'Bearer <token>' or 'ApiKey <key>'",
                refused="credentials",
            )
        if peer_cert is not None and self.config.certificates is not None:
            return self.config.certificates.identity(peer_cert)
        raise AuthenticationFailed(
            "authentication required: send 'authorization: Bearer <token>' (log in at "
            "/auth/login), an API key, or a client certificate",
            refused="credentials",
        )

    def _api_key(self, key: str) -> Identity:
        if not self.config.api_keys:
            raise AuthenticationFailed("API keys are not accepted here", refused="api_key")
        record = self.store.check_api_key(key)
        return Identity(
            record.subject,
            record.scopes,
            "api_key",
            record.expires_at,
            claims={"key_id": record.key_id},
        )

    def _bearer(self, token: str) -> Identity:
        issuer = unverified_issuer(token)
        provider = self._providers.get(issuer) if issuer is not None else None
        if provider is not None and issuer != self.config.issuer:
            return provider.verify(token)
        identity = self.tokens.verify(token)
        if identity.session is not None and self._session_revoked(identity.session):
            raise AuthenticationFailed("the access token's session was logged out", refused="token")
        return identity

    def _session_revoked(self, family: str) -> bool:
        now = time.monotonic()
        cached = self._revoked.get(family)
        if cached is not None and (cached[0] or now - cached[1] < self.config.revocation_cache):
            return cached[0]
        revoked = self.store.session_revoked(family)
        if len(self._revoked) > 10_000:
            self._revoked.clear()
        self._revoked[family] = (revoked, now)
        return revoked

    def authenticate_call(self, headers: Mapping[str, str]) -> Identity:
        """The identity of an RPC call (the dispatcher's prepare step calls this).

        Takes the identity the App already established for this HTTP request
        (and clears it, so calls nested inside the method do not inherit it);
        otherwise (in-process, relay) authenticates ``headers``.

        Raises:
            AuthenticationFailed: see :meth:`authenticate`.
        """
        identity = _http_identity.get()
        if identity is not None:
            _http_identity.set(None)
            return identity
        return self.authenticate(headers)

    # -- authorization ----------------------------------------------------------

    def required_scopes(self, spec: MethodSpec) -> frozenset[str]:
        """Scopes a method requires: declared on its service and on itself, plus
        ``AuthConfig.scopes`` under ``"service"`` and ``"service.method"``."""
        key = (spec.service, spec.name)
        found = self._required.get(key)
        if found is None:
            named = self._named_scopes
            found = spec.scopes.union(
                named.get(spec.service, ()), named.get(spec.qualified_name, ())
            )
            self._required[key] = found
        return found

    def route_scopes(self, path: str) -> frozenset[str]:
        """Scopes ``AuthConfig.route_scopes`` requires for an HTTP path (all matching
        prefixes)."""
        found: frozenset[str] = frozenset()
        for prefix, scopes in self._route_scopes:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                found = found | scopes
        return found

    def authorize(self, identity: Identity, spec: MethodSpec) -> None:
        """Check that ``identity`` may call ``spec``'s method.

        Raises:
            PermissionDenied: a required scope is missing (``details["missing"]``).
        """
        required = self.required_scopes(spec)
        if required and not identity.scopes.issuperset(required):
            missing = identity.missing(required)
            raise PermissionDenied(
                f"{spec.qualified_name} requires the scope(s) {', '.join(missing)}, "
                f"which {identity.subject!r} does not hold",
                {"missing": missing},
            )

    def check(
        self,
        identity: Identity,
        name: str,
        extra: Iterable[str] = (),
        default: Iterable[str] = (),
    ) -> None:
        """Check the scopes ``AuthConfig.scopes[name]`` (plus ``extra``) for any action,
        e.g. ``"jobs.submit"``; ``default``: the scopes when ``AuthConfig.scopes``
        does not name the action.

        Raises:
            PermissionDenied: a scope is missing.
        """
        required = self._named_scopes.get(name, frozenset(default)).union(extra)
        missing = identity.missing(required)
        if missing:
            raise PermissionDenied(
                f"{name} requires the scope(s) {', '.join(missing)}, which "
                f"{identity.subject!r} does not hold",
                {"missing": missing},
            )

    # -- the HTTP gate -------------------------------------------------------------

    def admit(self, scope: MutableMapping[str, Any], path: str, verb: str) -> TetherError | None:
        """Authenticate an HTTP request before the App routes it.

        Open paths pass. Any other request needs an identity (from the
        ``authorization`` header or the client certificate), which is put
        into ``scope["state"]["tether.identity"]`` for mounted apps (and the
        Authenticator into ``scope["state"]["tether.auth"]``); for an RPC
        call it is also handed to the dispatcher (see :meth:`authenticate_call`).

        Args:
            scope: the ASGI HTTP scope.
            path: the path relative to the App (``root_path`` removed).
            verb: the HTTP method.

        Returns:
            None to go on, or the error to answer (401; 403 when a scope of
            ``AuthConfig.route_scopes`` is missing).
        """
        if path in self._open:
            return None
        headers = {}
        for name, value in scope["headers"]:
            if name == b"authorization":
                headers["authorization"] = value.decode("latin-1")
                break
        try:
            identity = self.authenticate(headers, peer_certificate(scope))
        except TetherError as exc:
            return exc
        if verb == "POST" and path.startswith("/rpc/") and path.count("/") == 3:
            _http_identity.set(identity)  # the dispatcher checks the method's scopes
        elif self._route_scopes:
            required = self.route_scopes(path)
            if not identity.scopes.issuperset(required):
                missing = identity.missing(required)
                return PermissionDenied(
                    f"{verb} {path} requires the scope(s) {', '.join(missing)}, which "
                    f"{identity.subject!r} does not hold",
                    {"missing": missing},
                )
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[IDENTITY_KEY] = identity
        state[AUTHENTICATOR_KEY] = self
        return None

    # -- logins and sessions ---------------------------------------------------------

    def login(self, username: str, password: str, address: str | None = None) -> dict[str, Any]:
        """Check a user's password and open a session (``POST /auth/login``).

        Blocking (Argon2 takes tens of milliseconds): run it in a thread.

        Returns:
            The token response (see :meth:`token_response`).

        Raises:
            TooManyAttempts: the user or the address failed too often.
            AuthenticationFailed: ``refused="user"`` (unknown user) or
                ``refused="password"`` (wrong password).
        """
        self.limiter.reserve(username, address)
        user = self.store.user(username)
        if user is None:
            log.info("login refused from %s: unknown user", address)
            raise AuthenticationFailed(f"user {username!r} is not known here", refused="user")
        hasher = self.store.hasher
        if not verify_password(user.password_hash, password, hasher):
            log.info("login refused from %s: wrong password for %r", address, username)
            raise AuthenticationFailed(f"wrong password for user {username!r}", refused="password")
        self.limiter.refund(username, address)
        if needs_rehash(user.password_hash, hasher):
            self.store.set_password_hash(username, hash_password(password, hasher))
        session, refresh = self.store.start_session(
            username, user.scopes, "password", self.config.refresh_ttl
        )
        log.info("%r logged in from %s", username, address)
        return self.token_response(session, refresh)

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Spend a refresh token for a new access token and the next refresh token.

        Returns:
            The token response.

        Raises:
            AuthenticationFailed: ``refused="refresh_token"`` (unknown, used
                before: the session is revoked, logged out, expired) or
                ``refused="user"`` (the user was removed).
        """
        session, new = self.store.rotate(refresh_token)
        if session.method == "password":
            user = self.store.user(session.subject)
            if user is None:
                self.store.revoke_session(session.family)
                raise AuthenticationFailed(
                    f"user {session.subject!r} is not known here any more", refused="user"
                )
            session = Session(
                session.family, session.subject, user.scopes, session.method, session.expires_at
            )
        return self.token_response(session, new)

    def logout(self, refresh_token: str | None = None, identity: Identity | None = None) -> bool:
        """Revoke a session, named by one of its refresh tokens or an access token's identity.

        Returns:
            True when a session was revoked.
        """
        family = self.store.session_of(refresh_token) if refresh_token else None
        if family is None and identity is not None:
            family = identity.session
        if family is None:
            return False
        revoked = self.store.revoke_session(family)
        self._revoked[family] = (True, time.monotonic())
        return revoked

    def token_response(self, session: Session, refresh_token: str) -> dict[str, Any]:
        """The JSON body of a login or refresh: an OAuth 2 token response plus extras.

        Keys: ``token_type`` (``Bearer``), ``access_token``, ``expires_in`` and
        ``expires_at`` (seconds, Unix seconds), ``refresh_token``,
        ``refresh_expires_at``, ``scope`` (space-separated), ``subject``.
        """
        token, expires_at = self.tokens.issue(
            session.subject, session.scopes, method="password", session=session.family
        )
        return {
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": max(0, int(expires_at - time.time())),
            "expires_at": expires_at,
            "refresh_token": refresh_token,
            "refresh_expires_at": session.expires_at,
            "scope": " ".join(sorted(session.scopes)),
            "subject": session.subject,
        }

    def issue_token(self, subject: str, scopes: Iterable[str], *, ttl: float | None = None) -> str:
        """Mint an access token without a session (service accounts, tests).

        Args:
            ttl: seconds of life (default ``AuthConfig.access_ttl``).
        """
        token, _ = self.tokens.issue(subject, scopes, method="token", ttl=ttl)
        return token


def peer_certificate(scope: Mapping[str, Any]) -> str | None:
    """The client certificate (PEM) from the ASGI TLS extension, or None."""
    tls = scope.get("extensions", {}).get("tls") if "extensions" in scope else None
    if not tls:
        return None
    chain = tls.get("client_cert_chain")
    return str(chain[0]) if chain else None


def request_identity(scope: Mapping[str, Any]) -> Identity | None:
    """The identity the App established for an HTTP request (mounted apps read it).

    None when the App runs without auth.
    """
    state = scope.get("state") or {}
    identity = state.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else None


def authorize_request(
    scope: Mapping[str, Any], name: str, extra: Iterable[str] = (), default: Iterable[str] = ()
) -> Identity | None:
    """For mounted apps (the jobs API): check the request's identity for action ``name``.

    Does nothing and returns None when the App runs without auth.

    Args:
        extra: scopes needed on top of the action's.
        default: the action's scopes when ``AuthConfig.scopes`` does not name it.

    Raises:
        AuthenticationFailed: auth is on but the request carries no identity.
        PermissionDenied: a scope of ``AuthConfig.scopes[name]`` (else ``default``)
            or ``extra`` is missing.
    """
    state = scope.get("state") or {}
    auth = state.get(AUTHENTICATOR_KEY)
    if not isinstance(auth, Authenticator):
        return None
    identity = request_identity(scope)
    if identity is None:
        raise AuthenticationFailed("authentication required", refused="credentials")
    auth.check(identity, name, extra, default)
    return identity
