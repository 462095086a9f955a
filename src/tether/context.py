"""The context of the call being served: deadline, request id, caller.

The server sets it (a ``contextvars`` variable) around every method call, so
a method can read it with :func:`current_call`, and a client used inside the
method inherits its deadline: a nested call never outlives its caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CallContext:
    """One call being served.

    Attributes:
        service: the service's wire name.
        method: the method's wire name.
        request_id: the caller's ``tether-request-id``, or one made up.
        deadline: ``time.monotonic()`` value past which the call is abandoned,
            or None for no deadline.
        headers: the request headers, lower-case names.
        identity: who is calling, once authentication has run (None if off).
    """

    service: str
    method: str
    request_id: str
    deadline: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    identity: Any = None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None."""
        return None if self.deadline is None else self.deadline - time.monotonic()


_current: ContextVar[CallContext | None] = ContextVar("tether_call", default=None)


def current_call() -> CallContext | None:
    """The call being served in this context, or None outside any call."""
    return _current.get()


def inherited_deadline() -> float | None:
    """The monotonic deadline of the call being served here, if any."""
    ctx = _current.get()
    return None if ctx is None else ctx.deadline


@contextmanager
def call_scope(ctx: CallContext) -> Iterator[CallContext]:
    """Make ``ctx`` the current call for the duration of the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


# The call path's own handles on the variable: bound methods, no Python frame
# of their own. enter_call(ctx) makes ``ctx`` current and returns the token
# that leave_call(token) takes to restore the previous one; get_call() is
# current_call().
enter_call = _current.set
leave_call = _current.reset
get_call = _current.get
