"""The errors authentication and authorization raise.

They are :class:`tether.ServiceError` subclasses (wire ``type``
``tether.AuthenticationFailed`` and so on), so a Tether client raises the
same class again, with ``details["refused"]`` naming what was refused:
``user``, ``password``, ``token``, ``refresh_token``, ``api_key`` or
``certificate`` (or ``credentials`` when none was given).
"""

from __future__ import annotations

from typing import Any, Literal

from tether.errors import ServiceError, StatusCode

Refused = Literal[
    "credentials", "user", "password", "token", "refresh_token", "api_key", "certificate"
]


class AuthenticationFailed(ServiceError):
    """The caller is not authenticated: no credentials, or credentials refused (401).

    ``details`` is ``{"refused": what}``; the message says why, and never
    repeats a secret.
    """

    code = StatusCode.UNAUTHENTICATED
    error_name = "tether.AuthenticationFailed"

    def __init__(
        self,
        message: str = "authentication required",
        details: Any = None,
        *,
        refused: Refused | None = None,
    ) -> None:
        if refused is not None:
            details = {**(details if isinstance(details, dict) else {}), "refused": refused}
        super().__init__(message, details)

    @property
    def refused(self) -> str | None:
        """What was refused (see the module docstring), when the server said."""
        return self.details.get("refused") if isinstance(self.details, dict) else None


class PermissionDenied(ServiceError):
    """The caller is authenticated but lacks a required scope (403).

    ``details`` is ``{"missing": [scopes]}``.
    """

    code = StatusCode.PERMISSION_DENIED
    error_name = "tether.PermissionDenied"


class TooManyAttempts(ServiceError):
    """Too many failed logins for a user or from an address (429).

    ``details`` is ``{"retry_after": seconds}``.
    """

    code = StatusCode.RESOURCE_EXHAUSTED
    error_name = "tether.TooManyAttempts"
