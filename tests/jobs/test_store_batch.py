"""``JobStore.complete_many`` on both stores: one batch, per-item outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.jobs import JobNotFound, JobState, LeaseLost
from tether.jobs.store import open_store

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    db: str = request.getfixturevalue("postgres_db_url")
    return db


async def test_complete_many_completes_each_held_job_and_reports_the_others(url: str) -> None:
    store = await open_store(url)
    try:
        for n in range(4):
            await store.submit("t", {"n": n}, queue="b")
        claims = await store.claim(worker_id="w", queues=["b"], limit=4, lease_seconds=30)
        assert len(claims) == 4
        lost = claims[3]
        await store.release(lost.job.id, lost.lease_token)
        items = [(c.job.id, c.lease_token, {"n": c.job.parameters["n"]}) for c in claims]
        items.append(("01ARZ3NDEKTSV4RRFFQ69G5FAV", "x", {}))
        out = await store.complete_many(items)
        assert [type(x).__name__ for x in out] == ["Job", "Job", "Job", "LeaseLost", "JobNotFound"]
        assert isinstance(out[3], LeaseLost) and isinstance(out[4], JobNotFound)
        for claim in claims[:3]:
            job = await store.get(claim.job.id)
            assert job.state is JobState.SUCCEEDED and job.progress == 1.0
            assert job.result == {"n": claim.job.parameters["n"]} and job.lease_token is None
        assert (await store.get(lost.job.id)).state is JobState.QUEUED
        assert await store.complete_many([]) == []
        with pytest.raises(ValueError):
            await store.complete_many([(claims[0].job.id, "t", {"bad": float("nan")})])
    finally:
        await store.close()
