"""Authentication and authorization for Tether Apps.

Configure an App with ``tether.App(..., auth=AuthConfig(...))``: API keys,
users with Argon2id passwords and JWT access/refresh tokens (``/auth``
endpoints), outside OpenID Connect providers, and client certificates under
mutual TLS. Services and methods declare required scopes with
``@tether.service(scopes=[...])`` and ``@tether.method(scopes=[...])``; a
method reads its caller with ``tether.current_call().identity``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.auth.authenticator import Authenticator, authorize_request, request_identity
    from tether.auth.certificates import CertificateAuth, certificate_name
    from tether.auth.config import AuthConfig
    from tether.auth.errors import AuthenticationFailed, PermissionDenied, TooManyAttempts
    from tether.auth.identity import Identity
    from tether.auth.oidc import OIDCProvider
    from tether.auth.passwords import PasswordHasher, fast_hasher
    from tether.auth.ratelimit import Limit, LoginLimiter
    from tether.auth.store import CredentialStore
    from tether.auth.tokens import TokenIssuer

# Imported on first use: ``import tether`` stays light (no JWT, argon2 or Starlette).
_WHERE = {
    "AuthConfig": "tether.auth.config",
    "AuthenticationFailed": "tether.auth.errors",
    "Authenticator": "tether.auth.authenticator",
    "CertificateAuth": "tether.auth.certificates",
    "CredentialStore": "tether.auth.store",
    "Identity": "tether.auth.identity",
    "Limit": "tether.auth.ratelimit",
    "LoginLimiter": "tether.auth.ratelimit",
    "OIDCProvider": "tether.auth.oidc",
    "PasswordHasher": "tether.auth.passwords",
    "PermissionDenied": "tether.auth.errors",
    "TokenIssuer": "tether.auth.tokens",
    "TooManyAttempts": "tether.auth.errors",
    "authorize_request": "tether.auth.authenticator",
    "certificate_name": "tether.auth.certificates",
    "fast_hasher": "tether.auth.passwords",
    "request_identity": "tether.auth.authenticator",
}


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'tether.auth' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AuthConfig",
    "AuthenticationFailed",
    "Authenticator",
    "CertificateAuth",
    "CredentialStore",
    "Identity",
    "Limit",
    "LoginLimiter",
    "OIDCProvider",
    "PasswordHasher",
    "PermissionDenied",
    "TokenIssuer",
    "TooManyAttempts",
    "authorize_request",
    "certificate_name",
    "fast_hasher",
    "request_identity",
]
