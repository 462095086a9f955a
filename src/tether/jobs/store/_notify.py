"""In-process wake-ups for waiters on any event loop or thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from types import TracebackType


class Subscription:
    """Interest of one asyncio task in a set of topics; use as a context manager."""

    def __init__(self, notifier: Notifier, topics: Iterable[str]) -> None:
        """Register on ``notifier`` for ``topics`` from the running event loop."""
        self._notifier = notifier
        self._topics = tuple(topics)
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def _fire(self) -> None:
        """Wake the waiter; safe from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification.

        Returns:
            True when a notification arrived (since the last ``wait``), False on timeout.
        """
        if not self._event.is_set() and timeout > 0:
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                pass
        fired = self._event.is_set()
        self._event.clear()
        return fired

    def __enter__(self) -> Subscription:
        """Start receiving notifications."""
        self._notifier._add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop receiving notifications."""
        self._notifier._remove(self)


class Notifier:
    """Thread-safe broadcast of topic names (e.g. ``work:QUEUE``, ``job:ID``) to waiters."""

    def __init__(self) -> None:
        """Create a notifier with no subscribers."""
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}

    def subscribe(self, topics: Iterable[str]) -> Subscription:
        """Return a subscription to ``topics``; enter it before checking the condition."""
        return Subscription(self, topics)

    def notify(self, *topics: str) -> None:
        """Wake every subscriber of any of ``topics``; callable from any thread."""
        with self._lock:
            targets = {sub for topic in topics for sub in self._subs.get(topic, ())}
        for sub in targets:
            sub._fire()

    def _add(self, sub: Subscription) -> None:
        with self._lock:
            for topic in sub._topics:
                self._subs.setdefault(topic, set()).add(sub)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            for topic in sub._topics:
                subs = self._subs.get(topic)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subs[topic]


def work_topic(queue: str) -> str:
    """Topic announcing new or re-queued work in ``queue``."""
    return f"work:{queue}"


def job_topic(job_id: str) -> str:
    """Topic announcing a change of job ``job_id``."""
    return f"job:{job_id}"
