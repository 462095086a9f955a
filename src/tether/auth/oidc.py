"""Tokens from an outside OpenID Connect provider, checked against its JWKS.

The provider signs ID or access tokens (JWTs) with keys it publishes as a
JSON Web Key Set (RFC 7517) at ``jwks_uri``, found through OpenID Connect
Discovery 1.0 (``{issuer}/.well-known/openid-configuration``) unless given.
Each token's ``kid`` picks the key; signature, ``iss``, ``aud``, ``exp``
(and ``nbf``, ``iat``) are checked by PyJWT.

Keys are cached. The App fetches them at start-up (in a thread). Keys older
than ``cache_seconds`` are refetched in a background thread while the cached
ones keep serving, so a slow or unreachable provider never stalls a call
whose key is known. A token naming an unknown ``kid`` (key rotation) makes
the calling thread fetch the keys, bounded by ``timeout``, unless that
thread runs an event loop (the App checks HTTP calls on its loop): then the
token is refused at once and the keys are fetched in the background, so an
anonymous caller with a made-up ``kid`` cannot freeze the server; providers
publish a new key before they sign with it, and the background refetch of
stale keys picks it up first. Fetches of either kind start at most once
every ``min_refetch`` seconds, counted from the last attempt whether it
succeeded or not, so forged ``kid`` values or a provider that is down cannot
make the server hammer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from tether.auth.errors import AuthenticationFailed
from tether.auth.identity import Identity, parse_scopes
from tether.auth.tokens import token_problem


class OIDCProvider:
    """One trusted OpenID Connect provider.

    Args:
        issuer: the provider's ``iss`` (exact match).
        audience: the ``aud`` a token must carry (this API's client id).
        jwks_url: where the JWKS is; default from discovery.
        jwks: a JWKS dict to use instead of fetching one.
        algorithms: accepted signing algorithms (never ``none`` or HMAC).
        scopes_claim: the claim holding scopes or roles (a space-separated
            string or a list); ``scope`` by default, ``roles`` or ``groups``
            for some providers.
        subject_claim: the claim naming the caller (``sub``;
            ``preferred_username`` or ``email`` are common choices).
        leeway: seconds of clock skew tolerated.
        cache_seconds: seconds a fetched JWKS is trusted.
        min_refetch: least seconds between two fetches.
        timeout: seconds per HTTP fetch.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        algorithms: Sequence[str] = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"),
        scopes_claim: str = "scope",
        subject_claim: str = "sub",
        leeway: float = 30.0,
        cache_seconds: float = 300.0,
        min_refetch: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        bad = [a for a in algorithms if a.upper().startswith("HS") or a.lower() == "none"]
        if bad:
            raise ValueError(f"OIDC tokens must use public-key algorithms, not {bad}")
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.algorithms = list(algorithms)
        self.scopes_claim = scopes_claim
        self.subject_claim = subject_claim
        self.leeway = leeway
        self.cache_seconds = cache_seconds
        self.min_refetch = min_refetch
        self.timeout = timeout
        self._static = jwks is not None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = -1e18  # monotonic time of the last successful fetch
        self._attempted_at = -1e18  # ... and of the last attempt, successful or not
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        if jwks is not None:
            self._keys = _parse_jwks(dict(jwks))

    def __repr__(self) -> str:
        return f"<OIDCProvider iss={self.issuer!r} aud={self.audience!r}>"

    def refresh_keys(self) -> None:
        """Fetch the JWKS now (discovering ``jwks_uri`` first when needed).

        Raises:
            OSError, ValueError: the provider could not be reached or answered
                something that is not a JWKS.
        """
        if self._static:
            return
        with self._lock:
            self._attempted_at = time.monotonic()
        url = self.jwks_url
        if url is None:
            config = _get_json(
                self.issuer.rstrip("/") + "/.well-known/openid-configuration", self.timeout
            )
            url = str(config["jwks_uri"])
            self.jwks_url = url
        keys = _parse_jwks(_get_json(url, self.timeout))
        with self._lock:
            self._keys = keys
            self._fetched_at = time.monotonic()

    def _may_fetch(self, now: float) -> bool:
        return not self._static and now - self._attempted_at > self.min_refetch

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._background is not None and self._background.is_alive():
                return
            self._attempted_at = time.monotonic()  # no second thread meanwhile
            self._background = threading.Thread(
                target=self._refresh_quietly, name="tether-oidc-jwks", daemon=True
            )
            self._background.start()

    def _refresh_quietly(self) -> None:
        # The cached keys keep serving; the next stale lookup tries again.
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.refresh_keys()

    def _key_for(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        known = kid in self._keys or (kid is None and len(self._keys) == 1)
        if known and now - self._fetched_at > self.cache_seconds and self._may_fetch(now):
            self._refresh_in_background()
        elif not known and self._may_fetch(now) and _on_event_loop():
            self._refresh_in_background()
            raise AuthenticationFailed(
                f"the token's signing key is not one {self.issuer} published when last "
                "asked; its keys are being fetched again, try again shortly",
                refused="token",
            )
        elif not known and self._may_fetch(now):
            try:
                self.refresh_keys()
            except (OSError, ValueError, KeyError) as exc:
                if not self._keys:
                    raise AuthenticationFailed(
                        f"cannot fetch the signing keys of {self.issuer} ({type(exc).__name__})",
                        refused="token",
                    ) from None
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            if not self._keys and not self._static:
                raise AuthenticationFailed(
                    f"cannot fetch the signing keys of {self.issuer} (tried less than "
                    f"{self.min_refetch:g} s ago)",
                    refused="token",
                )
            raise AuthenticationFailed(
                f"the token's signing key is not one {self.issuer} publishes", refused="token"
            )
        return key

    def verify(self, token: str) -> Identity:
        """Verify a provider's token and return its identity (``method="oidc"``).

        Raises:
            AuthenticationFailed: ``refused="token"``: unknown key, bad
                signature, wrong issuer or audience, expired, malformed.
        """
        try:
            header = jwt.get_unverified_header(token)
            key = self._key_for(header.get("kid"))
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", self.subject_claim]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(token_problem(exc), refused="token") from None
        return Identity(
            subject=str(claims[self.subject_claim]),
            scopes=parse_scopes(claims.get(self.scopes_claim)),
            method="oidc",
            expires_at=float(claims["exp"]),
            claims=claims,
        )


def _on_event_loop() -> bool:
    """True when this thread runs an asyncio event loop (blocking it would stall it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _parse_jwks(data: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
    keys: dict[str | None, jwt.PyJWK] = {}
    for raw in data.get("keys", []):
        if raw.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(raw)
        except jwt.PyJWTError:
            continue  # a key type or curve this installation cannot use
        keys[key.key_id] = key
    return keys


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, headers={"accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return data
