"""A job submitted from the CLI, from Python (sync and async) and with curl runs on a
worker and its validated result comes back; on both stores."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

import tether
from tests.fixtures.servers import ROOT, ServerProcess
from tests.jobs.helpers import WorkerProcess, http
from tether.jobs import JobFailed, JobNotFinished, JobState, JobValidationError

TETHER = [sys.executable, "-m", "tether.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TETHER, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_submit_from_the_cli_python_and_curl(
    jobs_server: ServerProcess, queue: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    url = jobs_server.url
    start_worker("--concurrency", "2")
    # The CLI, waiting with --wait: prints the validated result.
    done = cli(
        "jobs",
        "submit",
        url,
        "work",
        "--json",
        '{"seconds": 0.3}',
        "seconds:=0.2",
        "--queue",
        queue,
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"slept": 0.2, "attempt": 1}
    # Python.
    with tether.Client(timeout=10) as client:
        jobs = client.connect(url).jobs
        handle = jobs.submit("work", {"seconds": 0.2}, queue=queue)
        assert handle.job.state is JobState.QUEUED
        assert handle.wait(30).state is JobState.SUCCEEDED
        assert handle.result == {"slept": 0.2, "attempt": 1}
        assert handle.status is JobState.SUCCEEDED and handle.progress == 1.0
        with pytest.raises(JobValidationError) as refused_py:
            jobs.submit("work", {"seconds": [1]}, queue=queue)
        assert refused_py.value.errors[0]["loc"] == ["seconds"]
        failing = jobs.submit("work", {"fail_times": 5}, queue=queue, max_attempts=1)
        failing.wait(30)
        with pytest.raises(JobFailed) as failed:
            _ = failing.result
        assert failed.value.code == "handler_error"
        assert "RuntimeError" in failed.value.message
        queued = jobs.submit("work", {}, queue=queue, delay=60)
        with pytest.raises(JobNotFinished):
            _ = queued.result
        queued.cancel()
        assert queued.status is JobState.CANCELLED
        page = jobs.list(state="succeeded", limit=10)
        assert handle.id in [j.id for j in page.jobs]
    # curl (urllib when curl is missing): submit, then a long poll for the result.
    body = json.dumps({"type": "work", "parameters": {"seconds": 0.1}, "queue": queue})
    if shutil.which("curl"):
        made = subprocess.run(
            ["curl", "-sf", "-d", body, "-H", "content-type: application/json", f"{url}/jobs"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        job_id = json.loads(made.stdout)["id"]
        waited = subprocess.run(
            ["curl", "-sf", f"{url}/jobs/{job_id}/wait?timeout=30"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        job = json.loads(waited.stdout)
    else:
        _, made_job = http("POST", f"{url}/jobs", json.loads(body))
        _, job = http("GET", f"{url}/jobs/{made_job['id']}/wait?timeout=30", timeout=60)
    assert job["state"] == "succeeded" and job["result"] == {"slept": 0.1, "attempt": 1}


@pytest.mark.parametrize("jobs_store_url", ["sqlite"], indirect=True)
def test_the_other_cli_commands(
    jobs_server: ServerProcess, queue: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    url = jobs_server.url
    refused = cli("jobs", "submit", url, "work", "seconds=soon", "--queue", queue)
    assert refused.returncode == 1 and "invalid_argument" in refused.stderr
    with tether.Client(timeout=10) as client:
        jobs = client.connect(url).jobs
        done = jobs.submit("raw.echo", {"reply": {"answer": 5}}, queue=queue)
        later = jobs.submit("raw.echo", {"reply": {"answer": 6}}, queue=queue, delay=60)
    start_worker()
    waited = cli("jobs", "wait", url, done.id, "--timeout", "30")
    assert waited.returncode == 0 and json.loads(waited.stdout) == {"answer": 5}
    got = cli("jobs", "get", url, done.id)
    assert got.returncode == 0 and json.loads(got.stdout)["state"] == "succeeded"
    listed = cli("jobs", "list", url, "--type", "raw.echo", "--state", "queued")
    assert listed.returncode == 0
    assert later.id in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    cancelled = cli("jobs", "cancel", url, later.id)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["state"] == "cancelled"


def test_the_async_client(
    jobs_server: ServerProcess, queue: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker()

    async def main() -> None:
        async with tether.AsyncClient(timeout=10) as client:
            jobs = client.connect(jobs_server.url).jobs
            handle = await jobs.submit("raw.echo", {"reply": {"answer": 3}}, queue=queue)
            job = await handle.wait(30)
            assert job.state is JobState.SUCCEEDED
            assert await handle.result() == {"answer": 3}
            assert await handle.status() is JobState.SUCCEEDED
            assert [j.id async for j in jobs.iter(queue=queue)] == [handle.id]
            assert await jobs.validate("raw.echo", {"reply": 1}) != []
            assert {t["name"] for t in await jobs.types()} == {"work", "nap", "raw.echo"}

    asyncio.run(main())
