"""Prometheus metrics of an App, served at ``GET /metrics``.

Every App has its own :class:`prometheus_client.CollectorRegistry` (not the
global default one), so several Apps in one process do not clash.

The call metrics sit on the hot path of every call, where ``prometheus_client``'s
own ``Counter``/``Histogram``/``Gauge`` would cost some 2.5 us a call even with
their labelled children cached (a lock and a few method calls per value). So
each hosted method keeps plain numbers under a lock of its own
(:class:`MethodStats`: taken as a call starts and as it ends, about 0.7 us; some
1 us added to a whole call), and :class:`CallMetrics`, a collector in the App's
registry, turns them into metric families when ``/metrics`` is scraped. Jobs
change state far less often: they use ordinary ``prometheus_client`` counters
(:class:`JobMetrics`).

Metrics:

* ``tether_calls_total{service, method, code}``: calls answered, by status code
  (``ok`` or an error code such as ``invalid_argument``);
* ``tether_call_duration_seconds{service, method}``: histogram of the time from
  the request reaching the dispatcher to its response being ready;
* ``tether_calls_in_flight{service, method}``: calls running now;
* ``tether_jobs_submitted_total{type}`` and
  ``tether_jobs_completed_total{type, state}`` (``succeeded``, ``failed``,
  ``cancelled``), once the App has a job store.

Calls to a service or method the App does not host are counted under
``"(unknown)"`` (so callers cannot make up label values).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from tether.jobs.model import Job

#: ``Content-Type`` of ``GET /metrics``: the Prometheus text format 0.0.4, which
#: ``generate_latest`` writes. (From ``prometheus_client`` 0.23 on,
#: ``CONTENT_TYPE_LATEST`` names version 1.0.0, for UTF-8 metric names; the
#: library's own exporters still answer 0.0.4 unless the scraper asks otherwise.)
CONTENT_TYPE: str = getattr(
    prometheus_client, "CONTENT_TYPE_PLAIN_0_0_4", prometheus_client.CONTENT_TYPE_LATEST
)

#: Upper bounds (seconds) of the call-duration histogram buckets: in-process
#: calls take tens of microseconds, HTTP calls hundreds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: The label value of a service or method the App does not host.
UNKNOWN = "(unknown)"

_LE = [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]  # as prometheus_client writes them


class MethodStats:
    """The call figures of one ``(service, method)``, updated under one lock.

    ``enter`` when a call starts running, ``leave``/``leave_ok`` when its
    response is ready; ``record`` for a call refused before it ran.
    """

    __slots__ = ("_lock", "buckets", "codes", "in_flight", "method", "ok", "service", "sum")

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self._lock = threading.Lock()
        self.in_flight = 0
        self.ok = 0
        self.codes: dict[str, int] = {}  # error code -> calls
        self.sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, not cumulative

    def __repr__(self) -> str:
        return f"<MethodStats {self.service}.{self.method} ok={self.ok} errors={self.codes}>"

    def enter(self) -> None:
        """A call starts running."""
        with self._lock:
            self.in_flight += 1

    def leave_ok(self, seconds: float) -> None:
        """A call that :meth:`enter` counted succeeded after ``seconds``."""
        with self._lock:
            self.in_flight -= 1
            self.ok += 1
            self.sum += seconds
            self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    def leave(self, code: str, seconds: float) -> None:
        """A call that :meth:`enter` counted ended with the error ``code``."""
        with self._lock:
            self.in_flight -= 1
            self.codes[code] = self.codes.get(code, 0) + 1
            self.sum += seconds
            self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    def record(self, code: str, seconds: float | None) -> None:
        """A call refused before it ran (never :meth:`enter`-ed), with the error ``code``;
        ``seconds`` None: counted, not timed (refused before the dispatcher saw it)."""
        with self._lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            if seconds is not None:
                self.sum += seconds
                self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    def snapshot(self) -> tuple[int, int, dict[str, int], float, list[int]]:
        """``(in_flight, ok, codes, sum, buckets)``, consistent with each other."""
        with self._lock:
            return self.in_flight, self.ok, dict(self.codes), self.sum, list(self.buckets)


class CallMetrics:
    """A collector of the call metrics of one App, from the :class:`MethodStats`
    of its methods (see the module docstring)."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], MethodStats] = {}
        self._services: set[str] = set()
        self._lock = threading.Lock()

    def add(self, service: str, method: str) -> MethodStats:
        """The figures of a hosted method (made on first use)."""
        with self._lock:
            self._services.add(service)
            stats = self._stats.get((service, method))
            if stats is None:
                stats = self._stats[(service, method)] = MethodStats(service, method)
            return stats

    def stats(self, service: str, method: str) -> MethodStats:
        """The figures a call of ``service.method`` counts in: its own when hosted,
        else those of ``UNKNOWN``."""
        stats = self._stats.get((service, method))
        if stats is not None:
            return stats
        if service not in self._services:
            service = UNKNOWN
        with self._lock:
            stats = self._stats.get((service, UNKNOWN))
            if stats is None:
                stats = self._stats[(service, UNKNOWN)] = MethodStats(service, UNKNOWN)
            return stats

    def record(self, service: str, method: str, code: str, seconds: float | None) -> None:
        """Count a call refused before it ran; see :meth:`MethodStats.record`."""
        self.stats(service, method).record(code, seconds)

    def describe(self) -> Iterable[Metric]:
        """The metric names this collector owns (for the registry's clash check)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The metric families with the current figures."""
        calls, duration, in_flight = families = self._families()
        with self._lock:
            everything = list(self._stats.values())
        for stats in everything:
            labels = [stats.service, stats.method]
            running, ok, codes, total, buckets = stats.snapshot()
            calls.add_metric([*labels, "ok"], ok)
            for code, count in sorted(codes.items()):
                calls.add_metric([*labels, code], count)
            duration.add_metric(labels, list(zip(_LE, _cumulative(buckets), strict=True)), total)
            in_flight.add_metric(labels, running)
        return families

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "tether_calls",
                "RPC calls answered, by status code (ok or the error code).",
                labels=["service", "method", "code"],
            ),
            HistogramMetricFamily(
                "tether_call_duration_seconds",
                "Time to answer an RPC call, from the dispatcher receiving it to its response.",
                labels=["service", "method"],
            ),
            GaugeMetricFamily(
                "tether_calls_in_flight", "RPC calls running now.", labels=["service", "method"]
            ),
        )


def _cumulative(counts: list[int]) -> Iterator[int]:
    total = 0
    for count in counts:
        total += count
        yield total


class JobMetrics:
    """Job counters of an App with a job store; a :class:`tether.jobs.manager.JobObserver`.

    The App's job manager (its ``/jobs`` API) and the workers made with the App
    in this process report to it; jobs that a lease expiry ends, or that workers
    in other processes finish straight in the store, are not seen here.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._submitted = Counter(
            "tether_jobs_submitted",
            "Jobs submitted, by job type.",
            ["type"],
            registry=registry,
        )
        self._completed = Counter(
            "tether_jobs_completed",
            "Jobs that reached a final state (succeeded, failed, cancelled), by job type.",
            ["type", "state"],
            registry=registry,
        )

    def submitted(self, job: Job) -> None:
        """A new job was stored."""
        self._submitted.labels(job.type).inc()

    def finished(self, job: Job) -> None:
        """A job reached a final state (``job.state``)."""
        self._completed.labels(job.type, job.state.value).inc()


class Metrics:
    """The metrics of one App: its own registry with the call and job metrics.

    Attributes:
        registry: the App's ``CollectorRegistry``; register more collectors or
            metrics there to serve them at ``/metrics`` as well.
        calls: the call metrics.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = CallMetrics()
        self.registry.register(self.calls)
        self._jobs: JobMetrics | None = None

    def __repr__(self) -> str:
        return f"<Metrics jobs={self._jobs is not None}>"

    @property
    def jobs(self) -> JobMetrics:
        """The job counters, registered on first use (when the App gets a job store)."""
        if self._jobs is None:
            self._jobs = JobMetrics(self.registry)
        return self._jobs

    def render(self) -> bytes:
        """The text served at ``/metrics`` (content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
