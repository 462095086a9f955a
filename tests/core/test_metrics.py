"""``GET /metrics``: the Prometheus figures of the calls (and jobs) an App serves,
scraped from real uvicorn servers and parsed with ``prometheus_client``'s parser."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import tether
from tests.apps.behaviour import BehaveImpl
from tests.fixtures.servers import ServerProcess
from tests.jobs.helpers import http
from tether.server.metrics import UNKNOWN

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The behaviour App in a server of this module's own (nothing else calls it)."""
    process = ServerProcess("tests.apps.behaviour:app").start()
    yield process
    process.stop()


def request(
    server: ServerProcess,
    verb: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: ``(status, headers with lower-case names, body)``."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(verb, path, body, headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """``({family: type}, {(sample name, sorted labels): value})``."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, _key(sample))] = sample.value
    return types, samples


def _key(sample: Sample) -> Labels:
    return tuple(sorted(sample.labels.items()))


def scrape(server: ServerProcess) -> Samples:
    status, headers, body = request(server, "GET", "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(body.decode())[1]


def calls(samples: Samples, service: str, method: str, code: str) -> float:
    return samples.get(
        ("tether_calls_total", _labels(code=code, method=method, service=service)), 0.0
    )


def _labels(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def duration(samples: Samples, service: str, method: str, part: str, le: str = "") -> float:
    labels = {"method": method, "service": service, **({"le": le} if le else {})}
    return samples[(f"tether_call_duration_seconds_{part}", _labels(**labels))]


def in_flight(samples: Samples, service: str, method: str) -> float:
    return samples[("tether_calls_in_flight", _labels(method=method, service=service))]


def post(server: ServerProcess, path: str, body: bytes) -> int:
    return request(server, "POST", path, body, {"content-type": "application/json"})[0]


def test_calls_are_counted_by_status_code(server: ServerProcess) -> None:
    before = scrape(server)
    with tether.Client(timeout=10) as client:
        conn = client.connect(server.url)
        for _ in range(3):
            assert conn.call("behave.greet", name="x") == "hello x!"
        assert conn.call("behave.async_greet", name="y") == "hello y"
        for kind in ("missing", "missing", "busy", "crash"):
            with pytest.raises(tether.TetherError):
                conn.call("behave.fail", kind=kind)
    assert post(server, "/rpc/behave/greet", b"{}") == 400  # no name: refused before it ran
    assert post(server, "/rpc/behave/no_such_method", b"{}") == 404
    assert post(server, "/rpc/no-such-service/greet", b"{}") == 404
    after = scrape(server)

    def delta(service: str, method: str, code: str) -> float:
        return calls(after, service, method, code) - calls(before, service, method, code)

    assert delta("behave", "greet", "ok") == 3
    assert delta("behave", "greet", "invalid_argument") == 1
    assert delta("behave", "async_greet", "ok") == 1
    assert delta("behave", "fail", "not_found") == 2
    assert delta("behave", "fail", "resource_exhausted") == 1
    assert delta("behave", "fail", "internal") == 1
    assert delta("behave", "fail", "ok") == 0
    # Made-up names do not become label values.
    assert delta("behave", UNKNOWN, "unimplemented") == 1
    assert delta(UNKNOWN, UNKNOWN, "unimplemented") == 1
    assert not [key for key in after if "no_such" in str(key) or "no-such" in str(key)]
    # A hosted method nobody called is listed, at zero.
    assert calls(after, "behave", "nothing", "ok") == 0
    # Every call answered is timed, the refused ones too; none is running now.
    count = duration(after, "behave", "greet", "count")
    assert count - duration(before, "behave", "greet", "count") == 4
    assert duration(after, "behave", "greet", "bucket", "+Inf") == count
    assert 0 < duration(after, "behave", "greet", "sum") < count
    assert (
        duration(after, "behave", "fail", "count") - duration(before, "behave", "fail", "count")
        == 4
    )
    assert in_flight(after, "behave", "greet") == in_flight(after, "behave", "fail") == 0


def test_the_text_parses_with_the_expected_families(server: ServerProcess) -> None:
    status, _, body = request(server, "GET", "/metrics")
    assert status == 200
    types, samples = parse(body.decode())
    assert types == {
        "tether_calls": "counter",
        "tether_call_duration_seconds": "histogram",
        "tether_calls_in_flight": "gauge",
    }  # no job store, no job metrics
    assert "# TYPE tether_calls_total counter" in body.decode()
    buckets = [
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "tether_call_duration_seconds_bucket" and dict(labels)["method"] == "greet"
    ]
    bounds = [b for b, _ in sorted(buckets)]
    assert bounds[0] == 0.0001 and bounds[-1] == float("inf")
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts)  # cumulative


def test_running_calls_are_in_flight_then_timed(server: ServerProcess) -> None:
    before = scrape(server)
    with tether.Client(timeout=10) as client:
        conn = client.connect(server.url)
        caller = threading.Thread(target=conn.call, args=("behave.sleep",), kwargs={"seconds": 0.4})
        caller.start()
        deadline = time.monotonic() + 5
        while in_flight(scrape(server), "behave", "sleep") != 1:
            assert time.monotonic() < deadline, "the call never showed in flight"
            time.sleep(0.02)
        caller.join(10)
    after = scrape(server)
    assert in_flight(after, "behave", "sleep") == 0
    assert calls(after, "behave", "sleep", "ok") - calls(before, "behave", "sleep", "ok") == 1

    def added(le: str) -> float:
        return duration(after, "behave", "sleep", "bucket", le) - duration(
            before, "behave", "sleep", "bucket", le
        )

    # It slept 0.4 s, so it took more than 0.25 s; a loaded machine may add to
    # that, but not seconds (in milliseconds, say, it would land in +Inf).
    assert added("0.25") == 0 and added("5.0") == 1
    assert (
        0.4
        <= duration(after, "behave", "sleep", "sum") - duration(before, "behave", "sleep", "sum")
        < 5.0
    )


def test_metrics_off_is_404_and_the_calls_still_work() -> None:
    server = ServerProcess("tests.apps.unmetered:app").start()
    try:
        status, _, body = request(server, "GET", "/metrics")
        assert status == 404, body
        assert b"not_found" in body
        with tether.Client(timeout=10) as client:
            assert client.connect(server.url).call("behave.greet", name="z") == "hello z!"
        assert request(server, "GET", "/metrics")[0] == 404
    finally:
        server.stop()


def test_apps_in_one_process_count_apart() -> None:
    first, second = tether.App(BehaveImpl()), tether.App(BehaveImpl())
    off = tether.App(BehaveImpl(), metrics=False)
    assert first.metrics is not None and second.metrics is not None
    assert first.metrics.registry is not second.metrics.registry
    with tether.Client() as client:
        for codec in ("json", "python"):  # both in-process paths count
            assert client.integrated(first, codec=codec).call("behave.greet", name="a")
        assert client.integrated(off, codec="python").call("behave.greet", name="a")

        async def async_calls() -> None:
            async with tether.AsyncClient() as aclient:
                conn = aclient.integrated(first, codec="python")
                assert await conn.call("behave.async_greet", name="b") == "hello b"
                with pytest.raises(tether.TetherError):
                    await conn.call("behave.greet")

        asyncio.run(async_calls())
    one = parse(first.metrics.render().decode())[1]
    two = parse(second.metrics.render().decode())[1]
    assert calls(one, "behave", "greet", "ok") == 2
    assert calls(one, "behave", "greet", "invalid_argument") == 1
    assert calls(one, "behave", "async_greet", "ok") == 1
    assert calls(two, "behave", "greet", "ok") == 0
    assert off.metrics is None and off.dispatcher.metrics is None
    assert ("GET", "/metrics") in first.routes() and ("GET", "/metrics") not in off.routes()
    with pytest.raises(ValueError, match="/metrics"):
        first.mount("/metrics", off)
    off.mount("/metrics", first)  # free without metrics: a host may serve its own there
    for app in (first, second, off):
        asyncio.run(app.shutdown())


@pytest.fixture
def jobs_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """The jobs test App on a SQLite store of this test's own."""
    process = ServerProcess(
        "tests.apps.jobs:app", env={"TETHER_JOB_STORE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    ).start()
    yield process
    process.stop()


def test_jobs_are_counted_by_type_and_final_state(jobs_server: ServerProcess) -> None:
    url = jobs_server.url

    def submit(**extra: Any) -> str:
        status, job = http(
            "POST",
            f"{url}/jobs",
            {"type": "raw.echo", "queue": "metered", "parameters": {"reply": {}}, **extra},
        )
        assert status == 201, job
        return str(job["id"])

    first = submit(idempotency_key="k1")
    assert submit(idempotency_key="k1") == first  # the same job: not counted again
    submit()
    submit()
    queued = submit()
    assert http("POST", f"{url}/jobs/{queued}/cancel")[1]["state"] == "cancelled"
    status, claimed = http(
        "POST", f"{url}/jobs/claim", {"worker_id": "w", "queues": ["metered"], "limit": 3}
    )
    assert status == 200 and len(claimed["jobs"]) == 3
    (a, ta), (b, tb), (c, tc) = [(j["id"], j["lease_token"]) for j in claimed["jobs"]]
    assert (
        http("POST", f"{url}/jobs/{a}/complete", {"lease_token": ta, "result": {"answer": 1}})[0]
        == 200
    )
    assert (
        http(
            "POST",
            f"{url}/jobs/{b}/complete",  # an invalid result fails the job
            {"lease_token": tb, "result": {"answer": "one"}},
        )[0]
        == 422
    )
    assert http("POST", f"{url}/jobs/{c}/fail", {"lease_token": tc, "error": {}})[0] == 200

    status, _, body = request(jobs_server, "GET", "/metrics")
    assert status == 200
    types, samples = parse(body.decode())
    assert types["tether_jobs_submitted"] == types["tether_jobs_completed"] == "counter"
    assert samples[("tether_jobs_submitted_total", _labels(type="raw.echo"))] == 4
    for state, count in (("succeeded", 1), ("failed", 2), ("cancelled", 1)):
        assert (
            samples[("tether_jobs_completed_total", _labels(state=state, type="raw.echo"))] == count
        ), state
