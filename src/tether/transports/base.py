"""What every transport shares: the raw response and the transport protocols.

A transport moves an encoded request to a service and brings back the
encoded response; it knows nothing of types. Connections (``tether.client``)
do the binding, encoding and error mapping on top, identically for every
transport.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RawResponse:
    """An encoded response: HTTP status, ``content-type``, body bytes, and the
    seconds of a ``Retry-After`` header when the server sent one."""

    status: int
    content_type: str
    body: bytes
    retry_after: float | None = None


def check_seconds(value: float, name: str = "timeout") -> float:
    """Return ``value`` if it is a usable number of seconds (``name``: for the message).

    Raises:
        ValueError: it is zero, negative, NaN or infinite.
    """
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive, finite seconds, got {value!r}")
    return value


def retry_after_seconds(value: str | bytes) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait, or None when it makes no sense.

    The header holds either seconds (``120``; a decimal is taken too) or an
    HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``), which is made relative to
    now (0 when it has passed).
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and math.isfinite(seconds) else None
    from email.utils import parsedate_tz  # rare: imported only for a date

    try:
        parts = parsedate_tz(text.strip())
        if parts is None:
            return None
        # HTTP dates are GMT; a date without a zone is taken as GMT too.
        when = calendar.timegm(parts[:6]) - (parts[9] or 0)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    return max(0.0, when - time.time())


class SyncTransport(Protocol):
    """Sends one encoded call and waits for its answer (blocking)."""

    def send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Send a call; ``timeout`` in seconds covers the whole exchange.

        Raises:
            tether.Unavailable: the service could not be reached or the
                connection broke.
            tether.DeadlineExceeded: no answer within ``timeout``.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class AsyncTransport(Protocol):
    """The asyncio twin of :class:`SyncTransport`."""

    async def send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Send a call; see :meth:`SyncTransport.send`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
