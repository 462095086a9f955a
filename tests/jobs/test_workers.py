"""Worker processes (``tether worker``) against a served App, on both stores: a killed
worker's job runs again, two workers never share a job, cancellation reaches a
running job, SIGTERM loses nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.servers import ServerProcess
from tests.jobs.helpers import WorkerProcess, http, job_state, submit, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


def finished(server: ServerProcess, job_id: str, timeout: float) -> dict[str, Any]:
    """Wait for the job to reach a terminal state; return it."""
    job: dict[str, Any] = wait_for(
        lambda: (j := job_state(server, job_id))["state"] in TERMINAL and j,
        timeout,
        f"job {job_id} to finish",
    )
    return job


def test_a_job_of_a_killed_worker_runs_again_after_its_lease_and_succeeds_once(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    job_id = submit(jobs_server, "work", {"seconds": 2.0, "marker": str(marker)}, queue=queue)
    first = start_worker("--lease", "1.5")
    wait_for(lambda: (marker / f"{job_id}.1.start").exists(), 20, "the first run")
    first.signal(signal.SIGKILL)
    first.wait(5)
    running = job_state(jobs_server, job_id)
    assert running["state"] == "running" and running["attempts"] == 1
    start_worker("--lease", "1.5")
    job = finished(jobs_server, job_id, 30)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2 and job["result"] == {"slept": 2.0, "attempt": 2}
    assert sorted(p.name for p in marker.glob("*.start")) == [
        f"{job_id}.1.start",
        f"{job_id}.2.start",
    ]
    assert [p.name for p in marker.glob("*.end")] == [f"{job_id}.2.end"]  # succeeded once
    assert not list(marker.glob("*.OVERLAP"))


def test_two_workers_never_run_the_same_job_at_the_same_time(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # One worker on the store, one over the HTTP API.
    workers = [
        start_worker("--concurrency", "3", "--lease", "5"),
        start_worker("--concurrency", "3", "--lease", "5", "--url", jobs_server.url),
    ]
    for worker in workers:
        worker.started()
    ids = [
        submit(jobs_server, "work", {"seconds": 0.3, "marker": str(marker)}, queue=queue)
        for _ in range(18)
    ]
    jobs = [finished(jobs_server, job_id, 40) for job_id in ids]
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert {j["attempts"] for j in jobs} == {1}
    for job_id in ids:
        assert [p.name for p in marker.glob(f"{job_id}.*.start")] == [f"{job_id}.1.start"]
    assert not list(marker.glob("*.OVERLAP"))
    assert len({j["worker_id"] for j in jobs}) == 2  # both took a share


def test_cancellation_reaches_a_running_job(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    job_id = submit(jobs_server, "work", {"seconds": 60, "marker": str(marker)}, queue=queue)
    nap_id = submit(jobs_server, "nap", {"seconds": 0.3}, queue=queue)
    start_worker("--lease", "1.5", "--concurrency", "2")
    wait_for(lambda: (marker / f"{job_id}.1.start").exists(), 20, "the run")
    wait_for(lambda: job_state(jobs_server, job_id)["progress"], 5, "progress")
    started = time.monotonic()
    status, job = http("POST", f"{jobs_server.url}/jobs/{job_id}/cancel")
    assert status == 200 and job["state"] == "running" and job["cancel_requested"]
    job = finished(jobs_server, job_id, 10)
    assert job["state"] == "cancelled", job
    assert time.monotonic() - started < 3.0  # the next heartbeat (lease / 3) told it
    assert not (marker / f"{job_id}.1.end").exists()
    assert finished(jobs_server, nap_id, 10)["state"] == "succeeded"


def test_sigterm_finishes_or_hands_back_the_jobs_in_flight(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker("--concurrency", "3", "--lease", "5", "--grace", "1.0").started()
    short = submit(jobs_server, "work", {"seconds": 0.5, "marker": str(marker)}, queue=queue)
    long = [
        submit(jobs_server, "work", {"seconds": 4, "marker": str(marker)}, queue=queue)
        for _ in range(2)
    ]
    for job_id in [short, *long]:
        wait_for(lambda j=job_id: (marker / f"{j}.1.start").exists(), 20, "the runs")
    stopped = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()
    assert time.monotonic() - stopped < 6.0
    assert job_state(jobs_server, short)["state"] == "succeeded"  # finished within the grace
    for job_id in long:  # handed back: queued again, the attempt not counted
        job = job_state(jobs_server, job_id)
        assert job["state"] == "queued" and job["attempts"] == 0, job
        assert not (marker / f"{job_id}.1.end").exists()
    assert "handed back at shutdown" in worker.output()
    start_worker("--concurrency", "2")
    for job_id in long:
        job = finished(jobs_server, job_id, 30)
        assert job["state"] == "succeeded" and job["attempts"] == 1, job
    assert not list(marker.glob("*.OVERLAP"))


def test_a_result_that_breaks_the_schema_fails_the_job_with_processing_error(
    jobs_server: ServerProcess,
    queue: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    bad = submit(jobs_server, "work", {"bad_result": True}, queue=queue)
    raw = submit(jobs_server, "raw.echo", {"reply": {"answer": 1, "extra": True}}, queue=queue)
    start_worker("--url", jobs_server.url, "--concurrency", "2")
    for job_id, loc in ((bad, ["slept"]), (raw, [])):
        job = finished(jobs_server, job_id, 20)
        assert job["state"] == "failed" and job["result"] is None, job
        assert job["attempts"] == 1  # no retry for a broken result
        assert job["error"]["code"] == "processing_error"
        assert job["error"]["details"][0]["loc"] == loc
