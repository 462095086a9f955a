"""Status codes, the error envelope and the exception classes of Tether.

The 16 codes are the standard RPC status codes (gRPC's, spelt in snake_case
as Connect spells them). Their HTTP statuses follow the Connect protocol's
table; statuses that carry no envelope (a proxy's 502, say) are read back
with gRPC's HTTP-to-code table.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, ClassVar


class StatusCode(StrEnum):
    """The standard RPC status codes, as they travel on the wire."""

    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"


#: HTTP status for each code (Connect protocol, "Error Codes").
HTTP_STATUS: dict[StatusCode, int] = {
    StatusCode.CANCELLED: 499,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}


def code_for_http_status(status: int) -> StatusCode:
    """Return the code for an HTTP error response that carries no envelope.

    Follows gRPC's "HTTP to gRPC status code mapping": 400 internal,
    401 unauthenticated, 403 permission_denied, 404 unimplemented,
    429/502/503/504 unavailable, anything else unknown.
    """
    table = {
        400: StatusCode.INTERNAL,
        401: StatusCode.UNAUTHENTICATED,
        403: StatusCode.PERMISSION_DENIED,
        404: StatusCode.UNIMPLEMENTED,
        429: StatusCode.UNAVAILABLE,
        502: StatusCode.UNAVAILABLE,
        503: StatusCode.UNAVAILABLE,
        504: StatusCode.UNAVAILABLE,
    }
    return table.get(status, StatusCode.UNKNOWN)


class TetherError(Exception):
    """Base of every error Tether raises or carries.

    Attributes:
        code: one of the 16 :class:`StatusCode` values.
        message: a human-readable sentence.
        details: JSON-compatible extra data (validation errors, say), or None.
        http_status: the HTTP status the server answers with; defaults to the
            code's Connect mapping and is set apart only for transport-level
            answers (413, 415, 406, 405).
    """

    code: ClassVar[StatusCode] = StatusCode.UNKNOWN

    def __init__(
        self,
        message: str = "",
        details: Any = None,
        *,
        code: StatusCode | str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            # An instance may carry a code of its own (RemoteError does).
            self.code = StatusCode(code)  # type: ignore[misc]
        self.message = message
        self.details = details
        self.http_status = http_status if http_status is not None else HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value!r}, message={self.message!r})"

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}" if self.message else self.code.value

    def to_envelope(self) -> dict[str, Any]:
        """Return the wire form ``{"error": {"code", "message", "details", "type"}}``.

        ``type`` names the :class:`ServiceError` subclass (its ``error_name``)
        so that a client holding the same class can raise it again; it is
        None for Tether's own errors.
        """
        return {
            "error": {
                "code": self.code.value,
                "message": self.message,
                "details": self.details,
                "type": getattr(self, "error_name", None),
            }
        }


#: Tether's own ServiceError subclasses (auth, jobs) by wire name. Only these are
#: known without an interface: a bare class name says nothing of which of the
#: process's classes it means, so application errors are matched against the
#: errors their interface declares, never a process-wide table.
_TETHER_ERRORS: dict[str, type[ServiceError]] = {}


class ServiceError(TetherError):
    """Base class for errors that a service raises on purpose.

    Subclass it, set ``code`` and (optionally) ``error_name``, the wire
    ``type``, default the class name; then declare the class on the interface
    (``@tether.service(errors=[...])`` or ``@tether.method(errors=[...])``).
    The server sends the code, message, details and ``error_name``. A client
    calling through a typed proxy raises the class again when the method's
    declared errors (its own and its service's) hold one of that
    ``error_name``; an error the interface does not declare, and any error of
    a dynamic call (``connection.call(...)``), arrives as :class:`RemoteError`
    with the code and ``error_name``, even when the client could import it.

    Rebuilding on the client does not call the subclass's ``__init__``: the
    instance is made with ``cls.__new__`` and given ``message``, ``details``,
    ``code`` and ``http_status`` as the server sent them. So a subclass may
    take any constructor arguments it likes (``def __init__(self, name)``),
    but whatever the client should see must travel in ``message`` and
    ``details``; attributes set only in ``__init__`` are absent on the
    client side (read them from ``details`` in a property instead).

    Example::

        class NotFound(tether.ServiceError):
            code = tether.StatusCode.NOT_FOUND
    """

    error_name: ClassVar[str] = "ServiceError"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "error_name" not in cls.__dict__:
            cls.error_name = cls.__name__
        if cls.__module__ == "tether" or cls.__module__.startswith("tether."):
            known = _TETHER_ERRORS.setdefault(cls.error_name, cls)
            if known is not cls:
                raise TypeError(
                    f"{cls.__module__}.{cls.__qualname__} and {known.__module__}."
                    f"{known.__qualname__} share the wire name {cls.error_name!r}"
                )


def service_error_class(
    name: str | None, declared: Sequence[type[ServiceError]] = ()
) -> type[ServiceError] | None:
    """The class to raise again for an envelope's ``type``, if any.

    Args:
        name: the envelope's ``type``.
        declared: the errors the called method declares (its own and its
            service's), looked at first.

    Returns:
        The declared class whose ``error_name`` is ``name``; else Tether's
        own error of that name (authentication, jobs); else None.
    """
    if not name:
        return None
    for cls in declared:
        if cls.error_name == name:
            return cls
    return _TETHER_ERRORS.get(name)


def rebuild_service_error(
    cls: type[ServiceError],
    message: str,
    details: Any,
    code: StatusCode,
    http_status: int | None = None,
) -> ServiceError:
    """Make an instance of ``cls`` as the server sent it, without calling its ``__init__``.

    The subclass's own constructor may take other arguments (see
    :class:`ServiceError`); only :class:`TetherError`'s is run, with the
    wire's message, details, code and HTTP status.
    """
    exc = cls.__new__(cls)
    TetherError.__init__(
        exc,
        message,
        details,
        code=None if code is cls.code else code,
        http_status=http_status,
    )
    return exc


class RemoteError(TetherError):
    """An error answered by a remote service that the call's interface does not declare.

    Also raised for failures of the call itself: :class:`DeadlineExceeded`,
    :class:`Unavailable`, and ``data_loss`` when a result does not match the
    declared type. ``code`` is the code the server sent (or the client
    found); ``error_name`` the server's ``type`` for it, when it had one.
    """

    def __init__(
        self,
        message: str = "",
        details: Any = None,
        *,
        code: StatusCode | str = StatusCode.UNKNOWN,
        error_name: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, details, code=code, http_status=http_status)
        self.error_name = error_name


class DeadlineExceeded(RemoteError):
    """The call's deadline passed, on the client or on the server."""

    code = StatusCode.DEADLINE_EXCEEDED

    def __init__(self, message: str = "deadline exceeded", details: Any = None) -> None:
        super().__init__(message, details, code=StatusCode.DEADLINE_EXCEEDED)


class Unavailable(RemoteError):
    """No instance could take the call: refused connection, reset, or a 503."""

    code = StatusCode.UNAVAILABLE

    def __init__(self, message: str = "service unavailable", details: Any = None) -> None:
        super().__init__(message, details, code=StatusCode.UNAVAILABLE)


def error_from_envelope(
    envelope: Any, http_status: int, declared: Sequence[type[ServiceError]] = ()
) -> TetherError:
    """Rebuild the exception that an error response describes.

    Args:
        envelope: the decoded body; ``{"error": {...}}`` when the server is a
            Tether server, anything else otherwise (then the code comes from
            the HTTP status, see :func:`code_for_http_status`).
        http_status: the response's HTTP status.
        declared: the ServiceError subclasses the called method declares;
            empty for a dynamic call.

    Returns:
        The class :func:`service_error_class` finds for the envelope's
        ``type`` (built by :func:`rebuild_service_error`), else
        :class:`DeadlineExceeded` or :class:`Unavailable` for those codes,
        else :class:`RemoteError` with the code and ``error_name``.
    """
    error = envelope.get("error") if isinstance(envelope, dict) else None
    if not isinstance(error, dict):
        code = code_for_http_status(http_status)
        message = f"HTTP {http_status} without an error envelope"
        return _remote_error(code, message, None, None, http_status)
    try:
        code = StatusCode(str(error.get("code")))
    except ValueError:
        code = StatusCode.UNKNOWN
    message = str(error.get("message") or "")
    details = error.get("details")
    name = error.get("type")
    name = name if isinstance(name, str) else None
    cls = service_error_class(name, declared)
    if cls is not None:
        return rebuild_service_error(cls, message, details, code, http_status)
    return _remote_error(code, message, details, name, http_status)


def _remote_error(
    code: StatusCode, message: str, details: Any, name: str | None, http_status: int
) -> RemoteError:
    """A RemoteError for ``code``: DeadlineExceeded and Unavailable for theirs."""
    exc: RemoteError
    if code is StatusCode.DEADLINE_EXCEEDED:
        exc = DeadlineExceeded(message, details)
    elif code is StatusCode.UNAVAILABLE:
        exc = Unavailable(message, details)
    else:
        return RemoteError(message, details, code=code, error_name=name, http_status=http_status)
    exc.error_name, exc.http_status = name, http_status
    return exc
