"""Readiness checks: timeouts, caching, cancellation, and their own threads.

The App is driven in-process (its dispatcher and ``readiness()``), which is
where these rules live; ``/readyz`` over HTTP is covered by the discovery
and CLI tests.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import tether

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@tether.service(name="echo")
class Echo:
    def echo(self, text: str) -> str:
        """Answer ``text`` (a sync method: it runs in the App's thread pool)."""
        ...


class EchoImpl(Echo):
    def echo(self, text: str) -> str:
        return text


async def call_echo(app: tether.App) -> bytes:
    response = await app.dispatcher.dispatch(
        "echo", "echo", b'{"text":"hi"}', {"content-type": "application/json"}
    )
    assert response.status == 200
    return response.body


async def test_a_hung_sync_check_does_not_starve_method_calls(anyio_backend: str) -> None:
    app = tether.App(EchoImpl(), max_workers=1)  # one thread for sync methods
    release = threading.Event()
    runs = 0

    @app.health_check(timeout=0.1)
    def stuck() -> bool:
        nonlocal runs
        runs += 1
        release.wait(60)
        return True

    try:
        for _ in range(5):
            ready, checks = await app.readiness()
            assert not ready and checks["stuck"]["status"] == "failing"
        assert runs == 1  # not started again while its first run hangs
        assert "has not finished" in checks["stuck"]["error"]
        # The hung check holds no thread of the App's pool: a sync method runs.
        # (wait_for only bounds a failure, which would otherwise hang the test.)
        assert await asyncio.wait_for(call_echo(app), 10) == b'"hi"'
    finally:
        release.set()
        app.dispatcher.close()


async def test_a_sync_check_past_its_timeout_counts_as_failed(anyio_backend: str) -> None:
    app = tether.App(EchoImpl())
    release = threading.Event()

    @app.health_check(timeout=0.1)
    def slow() -> bool:
        return release.wait(30)

    try:
        ready, checks = await app.readiness()
        assert not ready
        assert checks["slow"]["status"] == "failing"
        assert checks["slow"]["error"] == "timed out after 0.1 s"
    finally:
        release.set()
        app.dispatcher.close()


async def test_a_finished_sync_check_runs_again(anyio_backend: str) -> None:
    app = tether.App(EchoImpl())
    outcomes = iter([False, True])

    @app.health_check(timeout=5)
    def flip() -> bool:
        return next(outcomes)

    try:
        assert (await app.readiness())[0] is False
        assert (await app.readiness())[0] is True
    finally:
        app.dispatcher.close()


async def test_a_timed_out_async_check_is_cancelled(anyio_backend: str) -> None:
    app = tether.App(EchoImpl())
    cancelled = asyncio.Event()

    @app.health_check(timeout=0.1)
    async def hangs() -> bool:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    try:
        ready, checks = await app.readiness()
        assert not ready and checks["hangs"]["error"] == "timed out after 0.1 s"
        assert cancelled.is_set()
    finally:
        app.dispatcher.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_cache_reuses_a_result(kind: str, anyio_backend: str) -> None:
    app = tether.App(EchoImpl())
    runs = {"cached": 0, "fresh": 0}

    def count(name: str) -> bool:
        runs[name] += 1
        return runs[name] == 1  # passes the first time only

    if kind == "sync":
        app.health_check("cached", cache=60)(lambda: count("cached"))
        app.health_check("fresh")(lambda: count("fresh"))
    else:

        async def cached() -> bool:
            return count("cached")

        async def fresh() -> bool:
            return count("fresh")

        app.health_check(cache=60)(cached)
        app.health_check()(fresh)
    try:
        results = [(await app.readiness())[1] for _ in range(3)]
    finally:
        app.dispatcher.close()
    assert runs == {"cached": 1, "fresh": 3}
    assert [r["cached"]["status"] for r in results] == ["passing"] * 3  # the cached result
    assert [r["fresh"]["status"] for r in results] == ["passing", "failing", "failing"]
