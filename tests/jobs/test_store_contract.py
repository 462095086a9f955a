"""One contract suite for every job store: SQLite (a file in tmp_path) and PostgreSQL
(a fresh database on a real server, see tests/fixtures/postgres.py)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tether.jobs import (
    DuplicateJob,
    IllegalTransition,
    JobNotFound,
    JobState,
    LeaseLost,
    check_transition,
)
from tether.jobs.model import TRANSITIONS, Job, is_legal_transition
from tether.jobs.store import JobStore, PostgresJobStore, SqliteJobStore, make_store, open_store
from tether.jobs.store.migrations import LATEST_VERSION

from . import _procs

pytestmark = pytest.mark.anyio

LEASE = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """URL of an empty database for each store kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


async def until_due(store: JobStore, when: datetime, queue: str = "default") -> None:
    """Wait until ``when`` has passed and the store sees work due on ``queue``."""
    while datetime.now(UTC) < when:
        await asyncio.sleep(max((when - datetime.now(UTC)).total_seconds(), 0.01))
    await store.wait_for_work([queue], 30)


async def claim_one(store: JobStore, queue: str = "default", **kw: Any) -> Any:
    claims = await store.claim(
        worker_id="w1", queues=[queue], limit=1, lease_seconds=kw.pop("lease_seconds", LEASE), **kw
    )
    assert len(claims) == 1
    return claims[0]


def raw_update_state(url: str, job_id: str, state: str) -> None:
    """Change a job's state behind the store's back (to test the database's own guard)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            conn.execute("UPDATE tether_jobs SET state = ? WHERE id = ?", (state, job_id))
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("UPDATE tether_jobs SET state = %s WHERE id = %s", (state, job_id))


# -- submit / get / list -----------------------------------------------------------------


async def test_submit_and_get(store: JobStore) -> None:
    before = datetime.now(UTC)
    job = await store.submit("resize", {"path": "a.png", "sizes": [1, 2]}, queue="img", priority=5)
    assert job.state is JobState.QUEUED
    assert (job.type, job.queue, job.priority) == ("resize", "img", 5)
    assert job.parameters == {"path": "a.png", "sizes": [1, 2]}
    assert (job.attempts, job.max_attempts, job.version) == (0, 3, 1)
    assert len(job.id) == 26
    assert job.created_at.tzinfo is UTC and job.scheduled_at.tzinfo is UTC
    assert (
        before - timedelta(seconds=2) <= job.created_at <= datetime.now(UTC) + timedelta(seconds=2)
    )
    assert job.scheduled_at == job.created_at
    assert job.started_at is None and job.finished_at is None and job.lease_token is None
    assert job.result is None and job.error is None
    assert not job.cancel_requested and not job.terminal

    got = await store.get(job.id)
    assert got == job
    json.dumps(got.to_dict())  # JSON-ready

    with pytest.raises(JobNotFound) as info:
        await store.get("0" * 26)
    assert info.value.code == "not_found" and info.value.http_status == 404


async def test_submit_rejects_bad_arguments(store: JobStore) -> None:
    with pytest.raises(ValueError, match="timezone"):
        await store.submit("t", {}, run_at=datetime.now())
    with pytest.raises(ValueError, match="max_attempts"):
        await store.submit("t", {}, max_attempts=0)
    with pytest.raises(ValueError, match="JSON"):
        await store.submit("t", {"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        await store.submit("t", {"x": float("nan")})
    with pytest.raises(ValueError):
        await store.claim(worker_id="w", queues=[], lease_seconds=1)
    with pytest.raises(ValueError):
        await store.claim(worker_id="w", queues=["default"], lease_seconds=0)
    with pytest.raises(ValueError):
        await store.claim(worker_id="w", queues=["default"], limit=0, lease_seconds=1)
    assert (await store.list())[0] == []


async def test_list_filters_and_cursor(store: JobStore) -> None:
    submitted = []
    for i in range(7):
        submitted.append(
            await store.submit("even" if i % 2 == 0 else "odd", {"i": i}, queue=f"q{i % 3}")
        )
    newest_first = [j.id for j in reversed(submitted)]

    page, cursor = await store.list(limit=3)
    seen = [j.id for j in page]
    pages = 1
    while cursor is not None:
        page, cursor = await store.list(limit=3, cursor=cursor)
        seen += [j.id for j in page]
        pages += 1
    assert seen == newest_first
    assert pages == 3

    evens, nxt = await store.list(type="even")
    assert [j.parameters["i"] for j in evens] == [6, 4, 2, 0] and nxt is None
    q1, _ = await store.list(queue="q1")
    assert [j.parameters["i"] for j in q1] == [4, 1]
    both, _ = await store.list(type="odd", queue="q0")
    assert [j.parameters["i"] for j in both] == [3]

    await claim_one(store, "q2")  # the oldest job of q2: i=2
    running, _ = await store.list(state="running")
    assert [j.parameters["i"] for j in running] == [2]
    queued, _ = await store.list(state=JobState.QUEUED, type="even")
    assert [j.parameters["i"] for j in queued] == [6, 4, 0]

    one, cur = await store.list(type="even", limit=2)
    rest, end = await store.list(type="even", limit=2, cursor=cur)
    assert [j.parameters["i"] for j in one + rest] == [6, 4, 2, 0] and end is None

    with pytest.raises(ValueError):
        await store.list(cursor="not a cursor")
    with pytest.raises(ValueError):
        await store.list(state="sleeping")
    with pytest.raises(ValueError):
        await store.list(limit=0)


async def test_idempotency_key(store: JobStore) -> None:
    first = await store.submit("mail", {"to": "a"}, idempotency_key="k1")
    again = await store.submit("mail", {"to": "a"}, idempotency_key="k1")
    assert again.id == first.id
    with pytest.raises(DuplicateJob) as info:
        await store.submit("mail", {"to": "b"}, idempotency_key="k1")
    assert info.value.existing_id == first.id and info.value.http_status == 409

    racing = await asyncio.gather(
        *(store.submit("mail", {"to": "c"}, idempotency_key="k2") for _ in range(8))
    )
    assert len({j.id for j in racing}) == 1
    other = await store.submit("mail", {"to": "a"}, idempotency_key="k3")
    assert other.id != first.id
    jobs, _ = await store.list()
    assert len(jobs) == 3


# -- claiming ----------------------------------------------------------------------------


async def test_claim_order_priorities_and_run_at(store: JobStore) -> None:
    low = await store.submit("t", {"n": "low"}, priority=-1)
    first_mid = await store.submit("t", {"n": "mid1"})
    second_mid = await store.submit("t", {"n": "mid2"})
    high = await store.submit("t", {"n": "high"}, priority=10)
    # Due in 3 s: the claims below come long before (unless the machine stalls that long).
    later = await store.submit(
        "t", {"n": "later"}, priority=100, run_at=datetime.now(UTC) + timedelta(seconds=3)
    )
    assert later.scheduled_at > later.created_at

    claims = await store.claim(worker_id="w", queues=["default"], limit=10, lease_seconds=LEASE)
    assert [c.job.id for c in claims] == [high.id, first_mid.id, second_mid.id, low.id]
    assert await store.claim(worker_id="w", queues=["default"], limit=10, lease_seconds=LEASE) == []

    await until_due(store, later.scheduled_at)
    claims = await store.claim(worker_id="w", queues=["default"], limit=10, lease_seconds=LEASE)
    assert [c.job.id for c in claims] == [later.id]


async def test_claim_limit_filters_and_lease(store: JobStore) -> None:
    for i in range(5):
        await store.submit("a", {"i": i}, queue="main")
    await store.submit("b", {}, queue="main")
    await store.submit("a", {}, queue="other")

    before = datetime.now(UTC)
    two = await store.claim(worker_id="w7", queues=["main"], limit=2, lease_seconds=20)
    assert len(two) == 2
    for claim in two:
        job = claim.job
        assert job.state is JobState.RUNNING and job.attempts == 1 and job.worker_id == "w7"
        assert claim.lease_token == job.lease_token and len(claim.lease_token) >= 16
        assert claim.lease_expires_at == job.lease_expires_at
        assert job.started_at is not None
        expected = before + timedelta(seconds=20)
        assert abs((claim.lease_expires_at - expected).total_seconds()) < 2
        assert job.version == 2
    assert two[0].lease_token != two[1].lease_token

    only_b = await store.claim(
        worker_id="w", queues=["main"], types=["b"], limit=10, lease_seconds=LEASE
    )
    assert [c.job.type for c in only_b] == ["b"]
    rest = await store.claim(worker_id="w", queues=["main", "other"], limit=10, lease_seconds=LEASE)
    assert len(rest) == 4 and {c.job.queue for c in rest} == {"main", "other"}
    assert await store.claim(worker_id="w", queues=["main", "other"], lease_seconds=LEASE) == []


async def test_concurrent_claimers_across_processes(store: JobStore, store_url: str) -> None:
    ids = {(await store.submit("t", {"i": i}, queue="q")).id for i in range(200)}
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_procs.claim_all_process, args=(store_url, f"p{n}", 2, barrier, results))
        for n in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        await asyncio.to_thread(barrier.wait, 60)
        got = [await asyncio.to_thread(results.get, True, 60) for _ in procs]
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.join, 30)
    claimed = [job_id for _, taken in got for job_id in taken]
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == ids
    assert all(taken for _, taken in got), "both processes claimed jobs"
    jobs, _ = await store.list(limit=1000)
    assert all(j.state is JobState.SUCCEEDED and j.attempts == 1 for j in jobs)


async def test_concurrent_claimers_in_process(store: JobStore, store_url: str) -> None:
    for i in range(100):
        await store.submit("t", {"i": i}, queue="q")
    other = await open_store(store_url)
    try:
        found = await asyncio.gather(
            _procs.claim_all(store_url, "x", 2, None),
            *(_procs._claim_loop(s, f"local{n}") for n, s in enumerate([store, other, store])),
        )
    finally:
        await other.close()
    claimed = [job_id for ids in found for job_id in ids]
    assert len(claimed) == len(set(claimed)) == 100


# -- leases --------------------------------------------------------------------------------


async def test_heartbeat_extends_lease_and_carries_progress(store: JobStore) -> None:
    job = await store.submit("t", {})
    claim = await claim_one(store, lease_seconds=1)
    assert await store.heartbeat(job.id, claim.lease_token, lease_seconds=60) is False
    after = await store.get(job.id)
    assert after.lease_expires_at is not None
    assert after.lease_expires_at > claim.lease_expires_at + timedelta(seconds=50)
    assert after.version == claim.job.version  # a bare heartbeat is not a visible change

    assert (
        await store.heartbeat(
            job.id, claim.lease_token, lease_seconds=60, progress=0.25, message="a quarter"
        )
        is False
    )
    after = await store.get(job.id)
    assert (after.progress, after.progress_message) == (0.25, "a quarter")
    assert after.version == claim.job.version + 1
    await store.heartbeat(job.id, claim.lease_token, lease_seconds=60, progress=0.5)
    after = await store.get(job.id)
    assert (after.progress, after.progress_message) == (0.5, "a quarter")

    with pytest.raises(ValueError):
        await store.heartbeat(job.id, claim.lease_token, lease_seconds=60, progress=1.5)
    with pytest.raises(LeaseLost) as info:
        await store.heartbeat(job.id, "wrong", lease_seconds=60)
    assert info.value.code == "aborted" and info.value.http_status == 409
    with pytest.raises(JobNotFound):
        await store.heartbeat("0" * 26, claim.lease_token, lease_seconds=60)

    await store.cancel(job.id)
    assert await store.heartbeat(job.id, claim.lease_token, lease_seconds=60) is True


async def test_wrong_or_expired_lease_is_lost(store: JobStore) -> None:
    job = await store.submit("t", {})
    claim = await claim_one(store, lease_seconds=0.3)
    with pytest.raises(LeaseLost, match="wrong lease token"):
        await store.complete(job.id, "f" * 32, {"ok": True})
    with pytest.raises(LeaseLost):
        await store.fail(job.id, "f" * 32, {"code": "boom", "message": "x"})
    with pytest.raises(LeaseLost):
        await store.mark_cancelled(job.id, "f" * 32)
    await asyncio.sleep(0.4)
    # Expired but not yet re-queued: still lost.
    with pytest.raises(LeaseLost, match="expired"):
        await store.complete(job.id, claim.lease_token, {"ok": True})
    with pytest.raises(LeaseLost, match="expired"):
        await store.heartbeat(job.id, claim.lease_token, lease_seconds=10)
    assert (await store.get(job.id)).state is JobState.RUNNING

    assert await store.requeue_expired() == 1
    again = await claim_one(store)
    with pytest.raises(LeaseLost):
        await store.complete(job.id, claim.lease_token, {"stale": True})
    done = await store.complete(job.id, again.lease_token, {"ok": 1})
    assert done.state is JobState.SUCCEEDED
    with pytest.raises(LeaseLost, match="succeeded"):
        await store.complete(job.id, again.lease_token, {"ok": 2})
    assert (await store.get(job.id)).result == {"ok": 1}


async def test_expired_lease_requeues_then_fails_after_max_attempts(store: JobStore) -> None:
    job = await store.submit("t", {}, max_attempts=2)
    assert await store.requeue_expired() == 0
    first = await claim_one(store, lease_seconds=0.2)
    assert first.job.attempts == 1
    await asyncio.sleep(0.3)
    assert await store.requeue_expired() == 1
    requeued = await store.get(job.id)
    assert requeued.state is JobState.QUEUED and requeued.attempts == 1
    assert requeued.lease_token is None and requeued.lease_expires_at is None
    assert requeued.error is not None and requeued.error["code"] == "lease_expired"
    assert requeued.finished_at is None

    second = await claim_one(store, lease_seconds=0.2)
    assert second.job.attempts == 2 and second.lease_token != first.lease_token
    await asyncio.sleep(0.3)
    assert await store.requeue_expired() == 1
    failed = await store.get(job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 2
    assert failed.error is not None and failed.error["code"] == "lease_expired"
    assert failed.finished_at is not None and failed.terminal
    assert await store.claim(worker_id="w", queues=["default"], lease_seconds=1) == []
    assert await store.requeue_expired() == 0


async def test_complete(store: JobStore) -> None:
    job = await store.submit("t", {})
    claim = await claim_one(store)
    await store.heartbeat(job.id, claim.lease_token, lease_seconds=LEASE, progress=0.5)
    done = await store.complete(job.id, claim.lease_token, {"count": 3})
    assert done.state is JobState.SUCCEEDED and done.result == {"count": 3}
    assert done.progress == 1.0 and done.finished_at is not None and done.error is None
    assert done.lease_token is None and done.lease_expires_at is None
    assert await store.get(job.id) == done


async def test_fail_with_and_without_retry(store: JobStore) -> None:
    job = await store.submit("t", {}, max_attempts=2)
    claim = await claim_one(store)
    before = datetime.now(UTC)
    retried = await store.fail(
        job.id,
        claim.lease_token,
        {"code": "io", "message": "disk", "details": {"f": 1}},
        retry_delay=3,
    )
    after = datetime.now(UTC)
    assert retried.state is JobState.QUEUED and retried.attempts == 1
    assert retried.error == {"code": "io", "message": "disk", "details": {"f": 1}}
    # 3 s after the store's clock read the failure (microseconds, both sides).
    tick = timedelta(milliseconds=1)
    assert (
        before + timedelta(seconds=3) - tick
        <= retried.scheduled_at
        <= after + timedelta(seconds=3) + tick
    )
    assert await store.claim(worker_id="w", queues=["default"], lease_seconds=1) == []
    await until_due(store, retried.scheduled_at)
    second = await claim_one(store)
    assert second.job.attempts == 2
    final = await store.fail(job.id, second.lease_token, {"code": "io"}, retry_delay=0)
    assert final.state is JobState.FAILED and final.finished_at is not None
    assert final.error == {"code": "io", "message": "", "details": None}

    other = await store.submit("t", {}, max_attempts=5)
    claim = await claim_one(store)
    no_retry = await store.fail(other.id, claim.lease_token, {"code": "bad", "message": "m"})
    assert no_retry.state is JobState.FAILED and no_retry.attempts == 1
    with pytest.raises(ValueError):
        await store.fail(other.id, claim.lease_token, {"code": "x"}, retry_delay=-1)


async def test_release_hands_job_back_without_counting(store: JobStore) -> None:
    job = await store.submit("t", {}, max_attempts=1)
    claim = await claim_one(store)
    back = await store.release(job.id, claim.lease_token)
    assert back.state is JobState.QUEUED and back.attempts == 0 and back.lease_token is None
    again = await claim_one(store)
    assert again.job.attempts == 1
    with pytest.raises(LeaseLost):
        await store.release(job.id, claim.lease_token)


# -- cancellation and transitions ------------------------------------------------------------


async def test_cancel_queued_and_running(store: JobStore) -> None:
    queued = await store.submit("t", {"n": 1})
    cancelled = await store.cancel(queued.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert await store.claim(worker_id="w", queues=["default"], lease_seconds=1) == []

    running = await store.submit("t", {"n": 2})
    claim = await claim_one(store)
    flagged = await store.cancel(running.id)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert await store.heartbeat(running.id, claim.lease_token, lease_seconds=LEASE) is True
    acked = await store.mark_cancelled(running.id, claim.lease_token)
    assert acked.state is JobState.CANCELLED and acked.lease_token is None

    for job_id in (queued.id, running.id):
        with pytest.raises(IllegalTransition) as info:
            await store.cancel(job_id)
        assert info.value.code == "failed_precondition"
    with pytest.raises(JobNotFound):
        await store.cancel("0" * 26)


async def test_mark_cancelled_needs_a_requested_cancellation(store: JobStore) -> None:
    job = await store.submit("t", {})
    claim = await claim_one(store)
    with pytest.raises(IllegalTransition) as info:
        await store.mark_cancelled(job.id, claim.lease_token)
    assert (info.value.source, info.value.target) == ("running", "cancelled")
    still = await store.get(job.id)
    assert still.state is JobState.RUNNING and still.lease_token == claim.lease_token
    await store.cancel(job.id)
    assert (await store.mark_cancelled(job.id, claim.lease_token)).state is JobState.CANCELLED


async def test_leases_and_delays_out_of_range_are_refused(store: JobStore) -> None:
    job = await store.submit("t", {})
    for lease in (0, -1, float("nan"), float("inf"), 1e16):
        with pytest.raises(ValueError, match="lease_seconds"):
            await store.claim(worker_id="w", queues=["default"], lease_seconds=lease)
    claim = await claim_one(store)
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.heartbeat(job.id, claim.lease_token, lease_seconds=1e16)
    for delay in (-1.0, 1e16, float("nan")):
        with pytest.raises(ValueError, match="retry_delay"):
            await store.fail(job.id, claim.lease_token, {"code": "x"}, retry_delay=delay)
    assert (await store.get(job.id)).state is JobState.RUNNING  # nothing changed


async def test_cancel_requested_job_is_never_retried(store: JobStore) -> None:
    expiring = await store.submit("t", {}, max_attempts=5)
    await claim_one(store, lease_seconds=0.2)
    await store.cancel(expiring.id)
    await asyncio.sleep(0.3)
    assert await store.requeue_expired() == 1
    assert (await store.get(expiring.id)).state is JobState.CANCELLED

    failing = await store.submit("t", {}, max_attempts=5)
    claim = await claim_one(store)
    await store.cancel(failing.id)
    failed = await store.fail(failing.id, claim.lease_token, {"code": "x"}, retry_delay=0)
    assert failed.state is JobState.FAILED

    released = await store.submit("t", {}, max_attempts=5)
    claim = await claim_one(store)
    await store.cancel(released.id)
    assert (await store.release(released.id, claim.lease_token)).state is JobState.CANCELLED


def test_transition_table() -> None:
    states = list(JobState)
    legal = {(a, b) for a in states for b in states if is_legal_transition(a, b)}
    assert legal == {
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.QUEUED),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.CANCELLED),
    }
    assert legal == {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    check_transition("queued", "running")
    with pytest.raises(IllegalTransition):
        check_transition(JobState.SUCCEEDED, JobState.QUEUED)
    with pytest.raises(IllegalTransition):
        check_transition("queued", "succeeded")
    with pytest.raises(ValueError):
        check_transition("queued", "nope")


async def test_database_refuses_illegal_transitions(store: JobStore, store_url: str) -> None:
    job = await store.submit("t", {})
    claim = await claim_one(store)
    await store.complete(job.id, claim.lease_token, {})
    waiting = await store.submit("t", {})
    for job_id, state in ((job.id, "queued"), (job.id, "running"), (waiting.id, "succeeded")):
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
            await asyncio.to_thread(raw_update_state, store_url, job_id, state)
    assert (await store.get(job.id)).state is JobState.SUCCEEDED
    assert (await store.get(waiting.id)).state is JobState.QUEUED
    await asyncio.to_thread(raw_update_state, store_url, waiting.id, "cancelled")  # legal
    assert (await store.get(waiting.id)).state is JobState.CANCELLED


# -- waiting ------------------------------------------------------------------------------


async def test_wait_for_work_wakes_promptly_on_submit(store: JobStore, store_url: str) -> None:
    # Nothing there: returns after the timeout.
    start = time.monotonic()
    await store.wait_for_work(["w"], timeout=0.3)
    assert 0.25 <= time.monotonic() - start < 10  # at its timeout, not later

    # Submitted through the same store, and through another store of this process.
    other = await open_store(store_url)
    try:
        for submitter in (store, other):
            waiter = asyncio.create_task(store.wait_for_work(["w"], timeout=20))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            start = time.monotonic()
            job = await submitter.submit("t", {}, queue="w")
            await asyncio.wait_for(waiter, 15)
            assert time.monotonic() - start < 10  # woken, not at its 20 s timeout
            # Work is there: returns at once.
            start = time.monotonic()
            await store.wait_for_work(["w"], timeout=20)
            assert time.monotonic() - start < 10
            claim = await claim_one(store, "w")
            assert claim.job.id == job.id
    finally:
        await other.close()

    # Other queues and other types do not wake it; a delayed job wakes it when due.
    await store.submit("t", {}, queue="elsewhere")
    await store.submit("other-type", {}, queue="w")
    start = time.monotonic()
    await store.wait_for_work(["w"], timeout=0.3, types=["t"])
    assert time.monotonic() - start >= 0.25
    await store.submit("t", {}, queue="w", run_at=datetime.now(UTC) + timedelta(seconds=0.4))
    start = time.monotonic()
    await store.wait_for_work(["w"], timeout=20, types=["t"])
    assert 0.3 <= time.monotonic() - start < 10  # when due, not at its 20 s timeout


async def test_wait_for_work_wakes_on_submit_from_another_process(
    store: JobStore, store_url: str
) -> None:
    # PostgreSQL must wake through LISTEN/NOTIFY: its waiter polls only every 30 s here.
    # SQLite has no notifications across processes: it polls (every 0.05 s by default).
    postgres = store_url.startswith("postgres")
    waiting = await open_store(store_url, **({"poll_interval": 30} if postgres else {}))
    await waiting.wait_for_work(["x"], timeout=0.1)  # starts PostgreSQL's LISTEN
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    waiter = asyncio.create_task(waiting.wait_for_work(["x"], timeout=30))
    proc = ctx.Process(target=_procs.submit_process, args=(store_url, "x", results))
    proc.start()
    try:
        await asyncio.wait_for(waiter, 25)
        woke = time.time()
        submitted = await asyncio.to_thread(results.get, True, 10)
    finally:
        await asyncio.to_thread(proc.join, 30)
        await waiting.close()
    # Woken by the notification: sooner than the 5 s safety poll of a listening waiter.
    assert woke - submitted < 4.0
    assert len(await store.claim(worker_id="w", queues=["x"], lease_seconds=1)) == 1


async def test_wait_for_change(store: JobStore) -> None:
    job = await store.submit("t", {})
    start = time.monotonic()
    same = await store.wait_for_change(job.id, timeout=0.3)
    assert same == job and time.monotonic() - start >= 0.25

    waiter = asyncio.create_task(store.wait_for_change(job.id, timeout=20))
    await asyncio.sleep(0.1)
    claim = await claim_one(store)
    changed = await asyncio.wait_for(waiter, 15)
    assert changed.state is JobState.RUNNING and changed.version > job.version

    # A stale version returns at once; progress is a change; terminal returns at once.
    assert (await store.wait_for_change(job.id, 20, since_version=job.version)).version > 1
    waiter = asyncio.create_task(store.wait_for_change(job.id, 20))
    await asyncio.sleep(0.1)
    await store.heartbeat(job.id, claim.lease_token, lease_seconds=LEASE, progress=0.5)
    assert (await asyncio.wait_for(waiter, 15)).progress == 0.5
    await store.complete(job.id, claim.lease_token, {"ok": True})
    start = time.monotonic()
    done = await store.wait_for_change(job.id, timeout=20)
    assert done.state is JobState.SUCCEEDED and time.monotonic() - start < 10
    with pytest.raises(JobNotFound):
        await store.wait_for_change("0" * 26, timeout=0.1)


# -- migrations and URLs --------------------------------------------------------------------


async def test_migrations_are_idempotent_and_concurrent(store_url: str) -> None:
    stores = [make_store(store_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [LATEST_VERSION] * 3
        job = await stores[0].submit("t", {"keep": True})
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    async with make_store(store_url) as again:
        assert await again.schema_version() == LATEST_VERSION
        assert (await again.get(job.id)).parameters == {"keep": True}
        await again.open()  # opening an open store is harmless
    await again.close()  # and so is closing twice


async def test_store_urls(tmp_path: Any) -> None:
    assert isinstance(make_store("postgres://u@h/db"), PostgresJobStore)
    assert isinstance(make_store("postgresql://u@h/db"), PostgresJobStore)
    absolute = make_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(absolute, SqliteJobStore) and absolute.path == str(tmp_path / "a.db")
    relative = make_store("sqlite:///rel/jobs.db")
    assert isinstance(relative, SqliteJobStore) and relative.path.endswith("/rel/jobs.db")
    quiet = make_store("postgresql://u@h/db?sslmode=disable&tether_listen=false")
    assert isinstance(quiet, PostgresJobStore) and quiet.listen is False
    assert quiet.conninfo == "postgresql://u@h/db?sslmode=disable"
    # The other options are kept as written: libpq reads "+" as a plus, not a space.
    spaced = make_store("postgresql://u@h/db?options=-c%20search_path%3Dx&tether_listen=0&a=b+c")
    assert isinstance(spaced, PostgresJobStore) and spaced.listen is False
    assert spaced.conninfo == "postgresql://u@h/db?options=-c%20search_path%3Dx&a=b+c"
    loud = make_store("postgresql://u@h/db")
    assert isinstance(loud, PostgresJobStore) and loud.listen is True
    for bad in ("mysql://x", "jobs.db", "sqlite:///", "postgresql://u@h/db?tether_listen=no"):
        with pytest.raises(ValueError):
            make_store(bad)
    async with make_store("memory://") as memory:
        job: Job = await memory.submit("t", {})
        claim = await claim_one(memory)
        assert claim.job.id == job.id
