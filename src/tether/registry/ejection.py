"""Outlier ejection: take a failing instance out of rotation for a while.

Pure logic with an injectable clock; thread-safe. Typical use by a client::

    healthy = [r for r in records if r.is_healthy(service)]   # registry health
    instance = selector.select(ejector.available(healthy))
    try:
        ...call...
    except ConnectionRefusedError:       # or a 503
        ejector.record_failure(instance)
    else:
        ejector.record_success(instance)

The n-th consecutive failure ejects for ``base_seconds * multiplier**(n-1)``
seconds, at most ``max_seconds``. When the period ends the instance is in
rotation again; a success resets the count, another failure ejects it for
longer. An instance that the registry marks critical stays out through the
health filter, so it comes back once it is healthy and its period is over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .selectors import candidate_key

__all__ = ["OutlierEjector"]

T = TypeVar("T")


@dataclass
class _State:
    failures: int = 0
    until: float = 0.0


class OutlierEjector:
    """Tracks failures per instance and ejects failing ones for a backoff period.

    Args:
        base_seconds: ejection after the first failure (default 1 s).
        max_seconds: longest ejection (default 30 s).
        multiplier: growth per consecutive failure (default 2).
        clock: monotonic time in seconds (default ``time.monotonic``).
        panic: when every candidate is ejected, :meth:`available` returns them
            all rather than none, so calls still try (default True).

    Candidates are identified like selectors do
    (:func:`~tether.registry.selectors.candidate_key`). Raises ``ValueError``
    for non-positive durations or a multiplier below 1.
    """

    def __init__(
        self,
        *,
        base_seconds: float = 1.0,
        max_seconds: float = 30.0,
        multiplier: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        panic: bool = True,
    ) -> None:
        if base_seconds <= 0 or max_seconds < base_seconds or multiplier < 1:
            raise ValueError("need 0 < base_seconds <= max_seconds and multiplier >= 1")
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.multiplier = multiplier
        self.panic = panic
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[Hashable, _State] = {}

    def record_failure(self, candidate: object, *, at_least: float | None = None) -> float:
        """Record a failed call (connection refused, 503, ...) and eject ``candidate``.

        ``at_least``: seconds it stays out at the least, whatever its count of
        failures (a server's ``Retry-After``: it asked to be left alone that
        long), ``max_seconds`` notwithstanding.

        Returns the seconds it stays ejected. Failures while it is already
        ejected (calls that were in flight) do not lengthen the ejection,
        but for ``at_least``.
        """
        key = candidate_key(candidate)
        now = self._clock()
        least = at_least or 0.0
        with self._lock:
            state = self._states.setdefault(key, _State())
            if state.until > now:
                state.until = max(state.until, now + least)
                return state.until - now
            state.failures += 1
            period = min(
                self.max_seconds, self.base_seconds * self.multiplier ** (state.failures - 1)
            )
            period = max(period, least)
            state.until = now + period
            return period

    def record_success(self, candidate: object) -> None:
        """Record a successful call: the failure count of ``candidate`` restarts at zero
        (ignored while it is ejected, as such a call started before the failure)."""
        if not self._states:
            return  # the common case: nothing failed lately
        key = candidate_key(candidate)
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.until <= self._clock():
                del self._states[key]

    def ejected_for(self, candidate: object) -> float:
        """Seconds ``candidate`` stays ejected (0.0 when it is in rotation)."""
        state = self._states.get(candidate_key(candidate))
        return 0.0 if state is None else max(0.0, state.until - self._clock())

    def is_ejected(self, candidate: object) -> bool:
        """True while ``candidate`` is out of rotation."""
        return self.ejected_for(candidate) > 0.0

    def failures(self, candidate: object) -> int:
        """Consecutive failures of ``candidate`` since its last success."""
        state = self._states.get(candidate_key(candidate))
        return 0 if state is None else state.failures

    def available(self, candidates: Sequence[T]) -> list[T]:
        """The candidates in rotation, in their order. When all are ejected: all of
        them if ``panic`` is on, else an empty list."""
        if not self._states:
            return list(candidates)  # the common case: nothing failed lately
        now = self._clock()
        with self._lock:
            kept = [
                c
                for c in candidates
                if (s := self._states.get(candidate_key(c))) is None or s.until <= now
            ]
        if not kept and self.panic:
            return list(candidates)
        return kept

    def forget(self, candidate: object) -> None:
        """Drop what is known of ``candidate`` (e.g. it re-registered after a restart)."""
        with self._lock:
            self._states.pop(candidate_key(candidate), None)

    def retain(self, candidates: Iterable[object]) -> None:
        """Forget every instance not in ``candidates`` (bounds memory as instances go)."""
        keep = {candidate_key(c) for c in candidates}
        with self._lock:
            for key in [k for k in self._states if k not in keep]:
                del self._states[key]
