"""Selectors: how a call picks one instance among the candidates.

Pure and synchronous; thread-safe. A candidate is any object: instances are
identified by their ``instance_id`` attribute when they have one (e.g.
:class:`~tether.registry.InstanceRecord`), otherwise by the object itself,
which must then be hashable (e.g. a URL string).

Every selector counts calls in flight per candidate through
:meth:`Selector.acquire` / :meth:`Selector.release` (or the
:meth:`Selector.track` context manager); ``least_outstanding`` uses the counts.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
from collections.abc import Hashable, Iterator, Sequence
from typing import Protocol, TypeVar, cast, runtime_checkable

__all__ = [
    "SELECTOR_NAMES",
    "FirstSelector",
    "LeastOutstandingSelector",
    "NoCandidates",
    "RandomSelector",
    "RoundRobinSelector",
    "Selector",
    "candidate_key",
    "make_selector",
]

T = TypeVar("T")

SELECTOR_NAMES: tuple[str, ...] = ("round_robin", "random", "first", "least_outstanding")
"""Valid names for :func:`make_selector`; ``round_robin`` is the default."""


class NoCandidates(LookupError):
    """``select`` was given no candidate: no instance is available."""


def candidate_key(candidate: object) -> Hashable:
    """Identity of ``candidate`` for in-flight counts: its ``instance_id`` attribute
    when it is a string, else the candidate itself (``TypeError`` if unhashable)."""
    instance_id = getattr(candidate, "instance_id", None)
    if isinstance(instance_id, str):
        return instance_id
    hash(candidate)  # raises TypeError for unhashable candidates
    return candidate


@runtime_checkable
class Selector(Protocol):
    """Picks one of several candidates for each call."""

    name: str

    def select(self, candidates: Sequence[T]) -> T:
        """Return one of ``candidates``; raise :class:`NoCandidates` when it is empty."""
        ...

    def acquire(self, candidate: object) -> None:
        """Count one more call in flight on ``candidate``."""
        ...

    def release(self, candidate: object) -> None:
        """Count one call fewer in flight on ``candidate`` (never below zero)."""
        ...

    def track(self, candidate: object) -> contextlib.AbstractContextManager[None]:
        """Context manager: ``acquire`` on entry, ``release`` on exit."""
        ...

    def outstanding(self, candidate: object) -> int:
        """Number of calls in flight on ``candidate``."""
        ...


class _BaseSelector:
    """In-flight bookkeeping shared by the selectors."""

    name = "base"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._in_flight: dict[Hashable, int] = {}

    def acquire(self, candidate: object) -> None:
        """Count one more call in flight on ``candidate``."""
        key = candidate_key(candidate)
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def release(self, candidate: object) -> None:
        """Count one call fewer in flight on ``candidate`` (never below zero)."""
        key = candidate_key(candidate)
        with self._lock:
            count = self._in_flight.get(key, 0) - 1
            if count > 0:
                self._in_flight[key] = count
            else:
                self._in_flight.pop(key, None)

    @contextlib.contextmanager
    def track(self, candidate: object) -> Iterator[None]:
        """Context manager: ``acquire`` on entry, ``release`` on exit (even on error)."""
        self.acquire(candidate)
        try:
            yield
        finally:
            self.release(candidate)

    def outstanding(self, candidate: object) -> int:
        """Number of calls in flight on ``candidate``."""
        return self._in_flight.get(candidate_key(candidate), 0)

    @staticmethod
    def _check(candidates: Sequence[object]) -> None:
        if not candidates:
            raise NoCandidates("no instance available")


class RoundRobinSelector(_BaseSelector):
    """Takes the candidates in turn (a shared counter modulo their number)."""

    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._counter = itertools.count(self._rng.randrange(1 << 16))

    def select(self, candidates: Sequence[T]) -> T:
        """Return the next candidate in turn; raise :class:`NoCandidates` if empty."""
        self._check(candidates)
        return candidates[next(self._counter) % len(candidates)]


class RandomSelector(_BaseSelector):
    """Picks a candidate uniformly at random."""

    name = "random"

    def select(self, candidates: Sequence[T]) -> T:
        """Return a random candidate; raise :class:`NoCandidates` if empty."""
        self._check(candidates)
        return self._rng.choice(candidates)


class FirstSelector(_BaseSelector):
    """Always the first candidate (fail-over order is the order given)."""

    name = "first"

    def select(self, candidates: Sequence[T]) -> T:
        """Return ``candidates[0]``; raise :class:`NoCandidates` if empty."""
        self._check(candidates)
        return candidates[0]


class LeastOutstandingSelector(_BaseSelector):
    """Power of two choices: of two random candidates, the one with fewer calls
    in flight (ties: either)."""

    name = "least_outstanding"

    def select(self, candidates: Sequence[T]) -> T:
        """Return the less loaded of two random candidates; raise
        :class:`NoCandidates` if empty."""
        self._check(candidates)
        if len(candidates) == 1:
            return candidates[0]
        i, j = self._rng.sample(range(len(candidates)), 2)
        a, b = candidates[i], candidates[j]
        return b if self.outstanding(b) < self.outstanding(a) else a


_SELECTORS: dict[str, type[_BaseSelector]] = {
    cls.name: cls
    for cls in (RoundRobinSelector, RandomSelector, FirstSelector, LeastOutstandingSelector)
}


def make_selector(name: str = "round_robin", *, rng: random.Random | None = None) -> Selector:
    """Return a new selector called ``name`` (one of :data:`SELECTOR_NAMES`; ``-``
    and ``_`` are interchangeable). ``rng`` seeds random choices (tests).

    Raises ``ValueError`` listing the valid names when ``name`` is unknown.
    """
    cls = _SELECTORS.get(name.strip().lower().replace("-", "_"))
    if cls is None:
        raise ValueError(f"unknown selector {name!r}; valid selectors: {', '.join(SELECTOR_NAMES)}")
    return cast(Selector, cls(rng))
