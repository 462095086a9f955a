"""Tokens from an outside OpenID Connect provider, checked against its JWKS.

The provider signs ID or access tokens (JWTs) with keys it publishes as a
JSON Web Key Set (RFC 7517) at ``jwks_uri``, found through OpenID Connect
Discovery 1.0 (``{issuer}/.well-known/openid-configuration``) unless given.
Each token's ``kid`` picks the key; signature, ``iss``, ``aud``, ``exp``
(and ``nbf``, ``iat``) are checked by PyJWT.

Keys are cached: refetched when older than ``cache_seconds``, or when a
token names an unknown ``kid`` (key rotation), at most once every
``min_refetch`` seconds so that forged ``kid`` values cannot make the
server hammer the provider. The App fetches the keys at start-up (in a
thread); a later fetch happens in the calling thread, bounded by ``timeout``.
"""

from __future__ import annotations

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
        self._fetched_at = -1e18
        self._lock = threading.Lock()
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

    def _key_for(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self.cache_seconds
        if not self._static and (
            stale or (kid not in self._keys and now - self._fetched_at > self.min_refetch)
        ):
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
