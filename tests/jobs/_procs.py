"""Code the contract tests run in spawned child processes (so it must be importable)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tether.jobs.store import JobStore, open_store


async def _claim_loop(store: JobStore, worker_id: str) -> list[str]:
    taken: list[str] = []
    while True:
        claims = await store.claim(worker_id=worker_id, queues=["q"], limit=2, lease_seconds=60)
        if not claims:
            return taken
        for claim in claims:
            taken.append(claim.job.id)
            await store.complete(claim.job.id, claim.lease_token, {"by": worker_id})


async def claim_all(url: str, worker_id: str, tasks: int, barrier: Any | None) -> list[str]:
    """Claim and complete jobs of queue ``q`` with ``tasks`` concurrent tasks until none
    is left; wait on ``barrier`` (a multiprocessing barrier) before starting.

    Returns:
        The ids claimed, in claim order per task, concatenated.
    """
    store = await open_store(url)
    try:
        if barrier is not None:
            await asyncio.to_thread(barrier.wait, 60)
        found = await asyncio.gather(
            *(_claim_loop(store, f"{worker_id}/{i}") for i in range(tasks))
        )
    finally:
        await store.close()
    return [job_id for ids in found for job_id in ids]


def claim_all_process(url: str, worker_id: str, tasks: int, barrier: Any, results: Any) -> None:
    """Child process entry: ``claim_all`` then put ``(worker_id, ids)`` on ``results``."""
    results.put((worker_id, asyncio.run(claim_all(url, worker_id, tasks, barrier))))


def submit_process(url: str, queue: str, results: Any) -> None:
    """Child process entry: submit a job to ``queue``; put the wall time after it on ``results``."""

    async def main() -> None:
        store = await open_store(url)
        try:
            await store.submit("wake", {}, queue=queue)
            results.put(time.time())
        finally:
            await store.close()

    asyncio.run(main())
