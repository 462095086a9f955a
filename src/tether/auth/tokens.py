"""Access tokens: short-lived signed JWTs (RFC 7519) issued by the App.

Claims: ``iss``, ``aud``, ``sub``, ``iat``, ``nbf``, ``exp``, a random
``jti``, ``scope`` (space-separated, as OAuth 2 spells it), ``auth_method``
(how the session began) and ``sid`` (the refresh-token family, when the
token came from a login). Signed with HMAC-SHA256 by default; any PyJWT
algorithm works when given a key pair.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from typing import Any, cast

import jwt

from tether.auth.errors import AuthenticationFailed
from tether.auth.identity import AuthMethod, Identity, parse_scopes

_METHODS = {"api_key", "password", "token", "oidc", "certificate"}


class TokenIssuer:
    """Issues and verifies this App's access tokens.

    Args:
        key: the signing key (bytes or text for HMAC; a private key PEM for
            RS*/ES*/EdDSA).
        issuer: the ``iss`` claim issued and required.
        audience: the ``aud`` claim issued and required.
        algorithm: a PyJWT algorithm name (default ``HS256``).
        verify_key: the public key for asymmetric algorithms (default ``key``).
        ttl: seconds an access token lives (default 900).
        leeway: seconds of clock skew tolerated when checking ``exp``/``nbf``.
    """

    def __init__(
        self,
        key: bytes | str,
        *,
        issuer: str,
        audience: str,
        algorithm: str = "HS256",
        verify_key: bytes | str | None = None,
        ttl: float = 900.0,
        leeway: float = 0.0,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive seconds, got {ttl!r}")
        self._key = key
        self._verify_key = verify_key if verify_key is not None else key
        self.issuer = issuer
        self.audience = audience
        self.algorithm = algorithm
        self.ttl = ttl
        self.leeway = leeway

    def __repr__(self) -> str:  # never the key
        return f"<TokenIssuer iss={self.issuer!r} aud={self.audience!r} {self.algorithm}>"

    def issue(
        self,
        subject: str,
        scopes: Iterable[str],
        *,
        method: AuthMethod = "token",
        session: str | None = None,
        ttl: float | None = None,
        now: float | None = None,
        audience: str | None = None,
    ) -> tuple[str, float]:
        """Sign an access token.

        Args:
            ttl: seconds of life (default the issuer's).
            now: the issue time, Unix seconds (tests use it to mint expired tokens).
            audience: another ``aud`` (tests use it for a token meant elsewhere).

        Returns:
            ``(token, expires_at)`` with ``expires_at`` in Unix seconds.
        """
        issued = time.time() if now is None else now
        expires = issued + (self.ttl if ttl is None else ttl)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience or self.audience,
            "sub": subject,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": int(expires),
            "jti": secrets.token_hex(12),
            "scope": " ".join(sorted(set(scopes))),
            "auth_method": method,
        }
        if session is not None:
            claims["sid"] = session
        return jwt.encode(claims, self._key, algorithm=self.algorithm), float(int(expires))

    def verify(self, token: str) -> Identity:
        """Check signature, issuer, audience and expiry; return who the token names.

        Raises:
            AuthenticationFailed: ``refused="token"``, saying which check
                failed (expired, another audience, another issuer, a bad
                signature, malformed). The token itself is never quoted.
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(token_problem(exc), refused="token") from None
        method = claims.get("auth_method")
        return Identity(
            subject=str(claims["sub"]),
            scopes=parse_scopes(claims.get("scope")),
            method=cast(AuthMethod, method if method in _METHODS else "token"),
            expires_at=float(claims["exp"]),
            session=claims.get("sid"),
            claims=claims,
        )


def token_problem(exc: jwt.PyJWTError) -> str:
    """A sentence for a refused JWT, without the token."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the access token has expired"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the token was issued for another audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the token was issued by another issuer"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the token's signature does not verify"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "the token is signed with an algorithm not accepted here"
    if isinstance(exc, jwt.PyJWKClientError):
        return "the token's signing key is not known"
    return "the token is malformed"


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` claim read without verification (to pick the verifier), or None."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = claims.get("iss")
    return iss if isinstance(iss, str) else None
