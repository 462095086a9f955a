"""Worker processes (``tether worker``) against a served App, on both stores: a killed
worker's job runs again, two workers never share a job, cancellation reaches a
running job, SIGTERM loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.apps.jobs import make_app
from tests.fixtures.servers import ROOT, ServerProcess
from tests.jobs.helpers import APP, Partition, WorkerProcess, http, job_state, submit, wait_for

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
    worker = start_worker("--lease", "1.5", "--concurrency", "2")
    wait_for(lambda: (marker / f"{job_id}.1.start").exists(), 20, "the run")
    wait_for(lambda: job_state(jobs_server, job_id)["progress"], 20, "progress")
    status, job = http("POST", f"{jobs_server.url}/jobs/{job_id}/cancel")
    assert status == 200 and job["state"] == "running" and job["cancel_requested"]
    job = finished(jobs_server, job_id, 30)
    assert job["state"] == "cancelled", job
    # The worker stopped the handler and said so (not the server, after a lost lease).
    wait_for(lambda: f"job {job_id} cancelled" in worker.output(), 10, "the worker's word")
    assert "lease lost" not in worker.output()
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
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert job_state(jobs_server, short)["state"] == "succeeded"  # finished within the grace
    for job_id in long:  # handed back: queued again, the attempt not counted (not cancelled)
        job = job_state(jobs_server, job_id)
        assert job["state"] == "queued" and job["attempts"] == 0, job
        assert not job["cancel_requested"]
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


def test_a_sync_handler_past_its_timeout_keeps_its_lease_until_it_returns(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Python cannot stop a thread: the attempt is failed only once the handler returns,
    so the retry never runs beside it (here a second slot is free for it)."""
    job_id = submit(
        jobs_server,
        "work_timed",  # timeout 0.5 s, 2 attempts, no backoff
        {"seconds": 1.5, "ignore_cancel": True, "marker": str(marker)},
        queue=queue,
    )
    start_worker("--concurrency", "2", "--lease", "3")
    job = finished(jobs_server, job_id, 60)
    assert job["state"] == "failed" and job["attempts"] == 2, job
    assert job["error"]["code"] == "deadline_exceeded"
    assert job["error"]["details"] == {"timeout": 0.5, "attempt": 2}
    assert not list(marker.glob("*.OVERLAP"))
    first_end = (marker / f"{job_id}.1.end").stat().st_mtime_ns
    assert first_end <= (marker / f"{job_id}.2.start").stat().st_mtime_ns


def test_sigterm_waits_for_a_sync_handler_that_ignores_it_and_a_third_signal_gives_up(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # A handler that finishes after the grace: the worker kept its lease, so it completes.
    slow = {"seconds": 2, "ignore_cancel": True, "marker": str(marker)}
    finishing = submit(jobs_server, "work", slow, queue=queue)
    worker = start_worker("--lease", "3", "--grace", "0.2").started()
    wait_for(lambda: (marker / f"{finishing}.1.start").exists(), 20, "the run")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    job = job_state(jobs_server, finishing)
    assert job["state"] == "succeeded" and job["attempts"] == 1, job
    assert "asked to stop" in worker.output()
    # One that runs on: a third signal exits without handing it back (its thread runs
    # until the process ends); its lease expires and it runs again, once.
    stubborn = submit(jobs_server, "work", {**slow, "seconds": 4}, queue=queue)
    worker = start_worker("--lease", "1.5", "--grace", "0.2").started()
    wait_for(lambda: (marker / f"{stubborn}.1.start").exists(), 20, "the run")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "asked to stop" in worker.output(), 20, "the grace to end")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert "left to its lease" in worker.output()
    assert not (marker / f"{stubborn}.1.end").exists()
    start_worker("--lease", "1.5")
    job = finished(jobs_server, stubborn, 60)
    assert job["state"] == "succeeded" and job["attempts"] == 2, job
    assert not list(marker.glob("*.OVERLAP"))


def test_sigterm_of_an_http_worker_loses_no_job_submitted_as_it_stops(
    jobs_server: ServerProcess,
    queue: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Jobs arriving while an HTTP worker's claim long poll is in flight at SIGTERM are
    either done or handed back, never left leased to a worker that is gone."""
    worker = start_worker("--url", jobs_server.url, "--concurrency", "4", "--lease", "60")
    worker.started()
    ids: list[str] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        while not stop.is_set():
            job_id = submit(
                jobs_server, "raw.echo", {"reply": {"answer": 1}}, queue=queue, max_attempts=1
            )
            ids.append(job_id)
            stop.wait(0.01)

    submitter = threading.Thread(target=keep_submitting)
    submitter.start()
    try:
        wait_for(lambda: len(ids) >= 5, 20, "some submissions")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    finally:
        stop.set()
        submitter.join(30)
    for job_id in ids:
        job = job_state(jobs_server, job_id)
        assert (job["state"], job["attempts"]) in (("succeeded", 1), ("queued", 0)), job
    start_worker("--url", jobs_server.url, "--concurrency", "4")
    for job_id in ids:
        assert finished(jobs_server, job_id, 60)["state"] == "succeeded"


def test_an_http_worker_records_a_result_once_its_server_is_back(
    jobs_store_url: str,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The server goes down while a job runs: the worker retries the completion (within
    the lease) until a server answers again. The lease (60 s) leaves room for a stop and
    a restart on a loaded machine: retrying ends when the lease would."""
    env = {"TETHER_JOB_STORE_URL": jobs_store_url}
    first = ServerProcess(APP, env=env).start()
    try:
        job_id = submit(first, "work", {"seconds": 1.0, "marker": str(marker)}, queue=queue)
        worker = start_worker("--url", first.url, "--lease", "60")
        wait_for(lambda: (marker / f"{job_id}.1.start").exists(), 20, "the run")
        first.stop()
        wait_for(lambda: (marker / f"{job_id}.1.end").exists(), 20, "the handler's end")
        wait_for(lambda: "recording its outcome failed" in worker.output(), 20, "a failed try")
    finally:
        first.stop()
    second = ServerProcess(APP, port=first.port, env=env).start()
    try:
        job = finished(second, job_id, 60)
        assert job["state"] == "succeeded" and job["attempts"] == 1, job
        assert job["result"] == {"slept": 1.0, "attempt": 1}
        assert len(list(marker.glob(f"{job_id}.*.start"))) == 1
    finally:
        second.stop()


def test_options_a_worker_would_ignore_are_refused(tmp_path: Path) -> None:
    """HTTP-only options without a URL, and a key without its certificate, are refused
    rather than dropped; TETHER_TOKEN / TETHER_API_KEY in the environment (meant for
    other commands) do not stop a worker that goes straight to the store."""
    app = make_app(f"sqlite:///{tmp_path / 'jobs.db'}")
    for option in ({"pin_sha256": "ab" * 32}, {"token": "t"}, {"ca": tmp_path / "ca.pem"}):
        with pytest.raises(ValueError, match="need url="):
            tether.Worker(app, **option)  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["PYTHONPATH"] = str(ROOT)
    refused = [
        (["--pin-sha256", "ab" * 32], "need --url"),
        (["--token", "t"], "need --url"),
        (["--url", "http://127.0.0.1:1", "--key", str(tmp_path / "k.pem")], "--key needs --cert"),
        (["--key", str(tmp_path / "k.pem")], "--key needs --cert"),
    ]
    for args, message in refused:
        done = subprocess.run(
            [sys.executable, "-m", "tether.cli", "worker", APP, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    worker = WorkerProcess(
        f"sqlite:///{tmp_path / 'jobs.db'}",
        "q",
        tmp_path / "worker.log",
        env={**env, "TETHER_TOKEN": "for-tether-call", "TETHER_API_KEY": "for-tether-call"},
    ).start()
    try:
        worker.started()
    finally:
        worker.stop()


@pytest.mark.parametrize("fault", ["refused", "hung"])
def test_a_worker_cut_off_from_its_server_stops_its_handler_when_its_lease_ends(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
    fault: str,
) -> None:
    """Two workers never run a job at once, even when one loses touch: an HTTP worker whose
    server refuses connections, or stops answering (a network split; a heartbeat that
    hangs), cannot renew its lease, so it stops the handler when the lease ends, before
    the server gives the job to another worker."""
    partition = Partition(jobs_server.port)
    try:
        parameters = {"seconds": 300, "later_seconds": 0.5, "marker": str(marker)}
        job_id = submit(jobs_server, "work", parameters, queue=queue)
        cut_off = start_worker("--url", partition.url, "--lease", "6")
        wait_for(lambda: (marker / f"{job_id}.1.start").exists(), 30, "the first run")
        if fault == "refused":
            partition.refuse()
        else:
            partition.hang()
        start_worker("--lease", "6")  # on the store: it gets the job once the lease expired
        job = finished(jobs_server, job_id, 120)
    finally:
        partition.close()
    assert job["state"] == "succeeded" and job["attempts"] == 2, job
    assert not (marker / f"{job_id}.1.end").exists()  # the first run was stopped
    first_exit = (marker / f"{job_id}.1.exit").stat().st_mtime_ns
    assert first_exit <= (marker / f"{job_id}.2.start").stat().st_mtime_ns
    assert not list(marker.glob("*.OVERLAP"))
    output = cut_off.output()
    assert "no heartbeat got through before its lease ended" in output, output


def test_a_sync_handler_that_never_returns_is_given_up_a_lease_past_its_timeout(
    jobs_server: ServerProcess,
    queue: str,
    marker: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A sync handler that ignores its timeout keeps its job for one lease more at most:
    then the attempt fails with deadline_exceeded (an error in the log) while its thread,
    which Python cannot stop, runs on. A retry claimed by the same worker waits for that
    thread within its own timeout, and fails without starting."""
    stuck = {"seconds": 300, "ignore_cancel": True, "marker": str(marker)}
    # work_timed: timeout 0.5 s, 2 attempts, no backoff.
    once = submit(jobs_server, "work_timed", stuck, queue=queue, max_attempts=1)
    twice = submit(jobs_server, "work_timed", stuck, queue=queue)
    worker = start_worker("--concurrency", "3", "--lease", "2")
    job = finished(jobs_server, once, 60)
    assert job["state"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["code"] == "deadline_exceeded"
    assert job["error"]["details"] == {"timeout": 0.5, "attempt": 1, "abandoned_after": 2.0}
    job = finished(jobs_server, twice, 60)
    assert job["state"] == "failed" and job["attempts"] == 2, job
    assert job["error"]["code"] == "deadline_exceeded"
    assert job["error"]["details"] == {"timeout": 0.5, "attempt": 2}
    for job_id in (once, twice):
        assert (marker / f"{job_id}.1.start").exists()
        assert not (marker / f"{job_id}.1.exit").exists()  # the first run's thread goes on
    assert not (marker / f"{twice}.2.start").exists()  # the retry never started beside it
    output = worker.output()
    assert "failing the attempt and leaving the thread" in output, output
    assert "failing this attempt without starting it" in output, output
