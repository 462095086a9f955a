"""Login rate limiting: a token bucket per user and one per client address.

The token bucket (Turner, 1986; as in RFC 2697's meters): a bucket holds up
to ``attempts`` tokens and refills at ``attempts / per`` tokens a second.
Every login attempt reserves a token from the user's bucket and from the
address's *before* the password is checked, atomically, so concurrent
guesses cannot all pass the check at once; a login is refused while either
bucket holds less than one token, and a correct password gives its tokens
back. So a user allows ``attempts`` failures in a burst, then one every
``per / attempts`` seconds; a correct password never costs a token. State is
per process (each uvicorn worker limits on its own).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tether.auth.errors import TooManyAttempts


@dataclass(frozen=True)
class Limit:
    """``attempts`` failures allowed in a burst, refilled over ``per`` seconds."""

    attempts: int
    per: float

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.per <= 0:
            raise ValueError(f"a limit needs attempts >= 1 and per > 0, got {self}")


class _Buckets:
    def __init__(self, limit: Limit, clock: Callable[[], float], max_keys: int) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._state.get(key, (float(self.limit.attempts), now))
        rate = self.limit.attempts / self.limit.per
        return min(float(self.limit.attempts), tokens + (now - at) * rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has one token (0 when it has one now)."""
        level = self._level(key, self._clock())
        if level >= 1:
            return 0.0
        return (1 - level) * self.limit.per / self.limit.attempts

    def take(self, key: str, amount: float = 1.0) -> None:
        """Remove ``amount`` tokens (a negative amount gives them back, up to full)."""
        now = self._clock()
        level = self._level(key, now)
        if len(self._state) >= self._max_keys:
            self._prune(now)
        self._state[key] = (min(float(self.limit.attempts), max(0.0, level - amount)), now)

    def _prune(self, now: float) -> None:
        full = [k for k in self._state if self._level(k, now) >= self.limit.attempts]
        for k in full:
            del self._state[k]
        if len(self._state) >= self._max_keys:  # still full: forget the oldest half
            for k in sorted(self._state, key=lambda k: self._state[k][1])[: self._max_keys // 2]:
                del self._state[k]


class LoginLimiter:
    """Limits failed logins per user name and per client address.

    Args:
        per_user: failures allowed per user (default 5, refilled over 60 s).
        per_address: failures allowed per address (default 20 over 60 s).
        clock: monotonic seconds (tests pass a fake clock).
        max_keys: users or addresses remembered before full buckets are dropped.
    """

    def __init__(
        self,
        per_user: Limit = Limit(5, 60.0),
        per_address: Limit = Limit(20, 60.0),
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self._users = _Buckets(per_user, clock, max_keys)
        self._addresses = _Buckets(per_address, clock, max_keys)
        self._lock = threading.Lock()

    def reserve(self, user: str, address: str | None) -> None:
        """Take a token for a login attempt, or refuse it while a bucket is empty.

        Call before checking the password; call :meth:`refund` when the
        password was right. The check and the take happen under one lock, so
        concurrent attempts for one user never exceed its bucket.

        Raises:
            TooManyAttempts: ``details={"retry_after": whole seconds}``; no
                token was taken.
        """
        with self._lock:
            wait = max(self._users.wait(user), self._addresses.wait(address) if address else 0.0)
            if wait <= 0:
                self._users.take(user)
                if address:
                    self._addresses.take(address)
                return
        seconds = max(1, math.ceil(wait))
        raise TooManyAttempts(
            f"too many failed logins; try again in {seconds} s", {"retry_after": seconds}
        )

    def refund(self, user: str, address: str | None) -> None:
        """Give back the tokens that :meth:`reserve` took (the login succeeded)."""
        with self._lock:
            self._users.take(user, -1.0)
            if address:
                self._addresses.take(address, -1.0)
