"""What only the PostgreSQL store does: waiting for work without LISTEN (polling)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tether.jobs.store import PostgresJobStore, open_store

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingStore(PostgresJobStore):
    """The real store, counting its checks for due work (to see it poll)."""

    checks = 0

    async def _seconds_until_due(
        self, queues: Sequence[str], types: Sequence[str] | None
    ) -> float | None:
        self.checks += 1
        return await super()._seconds_until_due(queues, types)


async def test_without_listen_a_waiter_polls_and_still_sees_other_stores_work(
    postgres_db_url: str,
) -> None:
    waiter = CountingStore(postgres_db_url, listen=False, poll_interval=0.1)
    await waiter.open()
    # Another store (its own pool, as another process would have): its submissions
    # reach the waiter only through the database.
    submitter = await open_store(postgres_db_url)
    try:
        waiting = asyncio.ensure_future(waiter.wait_for_work(["q"], 120))

        async def polled_again() -> None:  # it found nothing, paused, and looked again
            while waiter.checks < 2:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(polled_again(), 30)
        assert not waiting.done()
        await submitter.submit("t", {}, queue="q")
        await asyncio.wait_for(waiting, 60)  # long before its own 120 s
        assert waiter._listener is None and not waiter._listening  # never LISTENed
        [claim] = await waiter.claim(worker_id="w", queues=["q"], lease_seconds=5)
        assert claim.job.type == "t"
    finally:
        await submitter.close()
        await waiter.close()


async def test_tether_listen_leaves_the_other_libpq_options_as_written(
    postgres_db_url: str,
) -> None:
    """``options=-c%20application_name%3D...`` reaches the server as written, a space and
    all, once ``tether_listen`` is taken out of the URL."""
    joiner = "&" if "?" in postgres_db_url else "?"
    url = (
        f"{postgres_db_url}{joiner}options=-c%20application_name%3Dtether_probe&tether_listen=false"
    )
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresJobStore) and store.listen is False
        async with store._pool.connection() as conn:
            row = await (await conn.execute("SHOW application_name")).fetchone()
        assert row == ("tether_probe",)
    finally:
        await store.close()
