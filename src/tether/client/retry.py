"""When a failed call may be tried again, and how long to wait first.

Retries happen only where they are safe: the method is declared idempotent,
or the failure happened before the request was sent (a refused
connection). Waits grow exponentially with "full jitter" (AWS Architecture
Blog, "Exponential Backoff and Jitter", 2015), a server's ``Retry-After``
wins when it is longer, and every attempt fits inside the call's deadline (a
``Retry-After`` longer than the time left ends the retries at once). A
discovered connection first ejects the instance that sent ``Retry-After``
for that long and, when another instance is in rotation, tries it at once
without the wait (:meth:`tether.client.discovery.Balancer.retry_wait`).
A retry budget (gRPC's retry throttling, proposal A6: a token bucket that
failures drain and successes refill) stops retries from multiplying load on
a service that is failing for everyone.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from tether.errors import StatusCode, TetherError


@dataclass
class RetryBudget:
    """gRPC-style retry throttling: retries stop while the bucket is under half full.

    Args:
        max_tokens: the bucket's size; every failure takes one token.
        token_ratio: tokens every success puts back.
    """

    max_tokens: float = 10.0
    token_ratio: float = 0.1
    _tokens: float = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._tokens = self.max_tokens

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now."""
        return self._tokens

    def on_failure(self) -> None:
        """A call failed: take a token."""
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1)

    def on_success(self) -> None:
        """A call succeeded: put back ``token_ratio`` of a token."""
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def allows_retry(self) -> bool:
        """True while the bucket is more than half full."""
        return self._tokens > self.max_tokens / 2


@dataclass
class RetryPolicy:
    """How a connection retries.

    Args:
        max_attempts: attempts in all, the first included (1 turns retries off).
        initial_backoff: seconds; the first wait is up to this much.
        max_backoff: seconds; no wait is longer (but for ``Retry-After``).
        multiplier: growth of the backoff ceiling per attempt.
        budget: the shared retry budget.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    budget: RetryBudget = field(default_factory=RetryBudget)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        wait = self.rng.uniform(0, ceiling)
        return max(wait, retry_after) if retry_after is not None else wait

    def should_retry(
        self,
        error: TetherError,
        attempt: int,
        *,
        idempotent: bool,
        remaining: float,
        retry_after: float | None = None,
    ) -> bool:
        """Whether to try again after ``error`` on attempt ``attempt``.

        Only ``unavailable`` errors are retried: when the request was never
        sent (``details["sent"] is False``), always; otherwise only for
        idempotent methods. Never past ``max_attempts``, the budget or the
        deadline (``remaining`` seconds), nor when the server's
        ``retry_after`` (seconds) is longer than the time left: waiting for it
        would spend the deadline, so the answer is returned at once. (Pass
        None for a retry that need not wait for it: on another instance.)
        """
        if attempt >= self.max_attempts or remaining <= 0:
            return False
        if retry_after is not None and retry_after >= remaining:
            return False
        if error.code is not StatusCode.UNAVAILABLE:
            return False
        sent = not (isinstance(error.details, dict) and error.details.get("sent") is False)
        if sent and not idempotent:
            return False
        return self.budget.allows_retry()
