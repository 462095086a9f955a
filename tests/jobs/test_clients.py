"""A job submitted from the CLI, from Python (sync and async) and with curl runs on a
worker and its validated result comes back; on both stores."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import tether
from tests.apps.jobs import JOB_TYPES
from tests.fixtures.servers import ROOT, ServerProcess
from tests.jobs.helpers import WorkerProcess, http, wait_for
from tether.jobs import JobCancelled, JobFailed, JobNotFinished, JobState, JobValidationError
from tether.settings import Settings

TETHER = [sys.executable, "-m", "tether.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS``; ``env``: more environment variables (none: TETHER_URL unset)."""
    base = {k: v for k, v in os.environ.items() if k != "TETHER_URL"}
    return subprocess.run(
        [*TETHER, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**base, **(env or {})},
    )


def test_submit_from_the_cli_python_and_curl(
    jobs_server: ServerProcess, queue: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    url = jobs_server.url
    start_worker("--concurrency", "2")
    # The CLI, waiting with --wait: prints the validated result. The server comes from
    # TETHER_URL (or --url, or a URL before the type, the older form).
    done = cli(
        "jobs",
        "submit",
        "work",
        "--json",
        '{"seconds": 0.3}',
        "seconds:=0.2",
        "--queue",
        queue,
        "--wait",
        env={"TETHER_URL": url},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"slept": 0.2, "attempt": 1}
    for form in (["-u", url, "work"], ["--url", url, "work"], [url, "work"]):
        made = cli("jobs", "submit", *form, "seconds:=0.1", "--queue", queue, "--wait")
        assert made.returncode == 0, (form, made.stderr)
        assert json.loads(made.stdout) == {"slept": 0.1, "attempt": 1}
    missing = cli("jobs", "submit", "work", "--queue", queue)
    assert missing.returncode == 2 and "TETHER_URL" in missing.stderr
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
    env = {"TETHER_URL": url}
    refused = cli("jobs", "submit", "work", "seconds=soon", "--queue", queue, env=env)
    assert refused.returncode == 1 and "invalid_argument" in refused.stderr
    with tether.Client(timeout=10) as client:
        jobs = client.connect(url).jobs
        done = jobs.submit("raw.echo", {"reply": {"answer": 5}}, queue=queue)
        later = jobs.submit("raw.echo", {"reply": {"answer": 6}}, queue=queue, delay=60)
    start_worker()
    waited = cli("jobs", "wait", done.id, "--timeout", "30", env=env)
    assert waited.returncode == 0 and json.loads(waited.stdout) == {"answer": 5}
    for form in ([done.id], [url, done.id], ["-u", url, done.id]):
        got = cli("jobs", "get", *form, env=env if len(form) == 1 else None)
        assert got.returncode == 0, (form, got.stderr)
        assert json.loads(got.stdout)["state"] == "succeeded"
    listed = cli("jobs", "list", "--type", "raw.echo", "--state", "queued", env=env)
    assert listed.returncode == 0
    assert later.id in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    assert json.loads(cli("jobs", "list", url, "--type", "raw.echo").stdout)["jobs"]
    assert {t["name"] for t in json.loads(cli("jobs", "types", "-u", url).stdout)} == JOB_TYPES
    cancelled = cli("jobs", "cancel", later.id, env=env)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["state"] == "cancelled"
    again = cli("jobs", "cancel", "-u", url, later.id)
    assert again.returncode == 1 and "failed_precondition" in again.stderr
    other = cli("jobs", "get", "-u", "http://127.0.0.1:1", url, done.id)
    assert other.returncode == 2 and "two servers" in other.stderr


@pytest.mark.parametrize("jobs_store_url", ["sqlite"], indirect=True)
def test_jobs_wait_shows_a_progress_bar_on_a_terminal(
    jobs_server: ServerProcess,
    queue: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    url = jobs_server.url
    start_worker()
    go = tmp_path / "go"  # the job runs (reporting progress) until this file exists
    with tether.Client(timeout=10) as client:
        jobs = client.connect(url).jobs
        handle = jobs.submit("work", {"seconds": 0.5, "until": str(go)}, queue=queue)
        wait_for(lambda: handle.progress, 30, "progress")
    # stderr on a pseudo-terminal (where the bar goes), stdout on a pipe (the result).
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "TETHER_URL": url}
    process = subprocess.Popen(
        [*TETHER, "jobs", "wait", handle.id, "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=ROOT,
        env=env,
    )
    os.close(follower)
    try:
        # The bar shows the job running, for as long as it takes the command to start.
        shown = read_terminal(
            leader, lambda text: "running" in text and "%" in text, 60, "the bar of a running job"
        )
        go.touch()
        shown += read_terminal(leader, lambda _: False, 60, "the end of the output")
        assert process.wait(60) == 0
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.stdout is not None
    assert json.loads(process.stdout.read()) == {"slept": 0.5, "attempt": 1}
    text = shown.decode(errors="replace")
    assert f"work {handle.id[-6:]}" in text and "running" in text, text
    assert "%" in text  # the bar's percentage


def read_terminal(fd: int, enough: Callable[[str], bool], timeout: float, what: str) -> bytearray:
    """Read a pseudo-terminal until ``enough(text so far)`` or until it closes (the
    process ended); AssertionError after ``timeout`` seconds."""
    shown = bytearray()
    deadline = time.monotonic() + timeout
    while not enough(shown.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {shown!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    return shown


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
            assert await handle.progress_message() is None  # raw.echo reports none
            later = await jobs.submit("raw.echo", {"reply": {}}, queue=queue, delay=60)
            job = await later.cancel()
            assert job.state is JobState.CANCELLED and await later.status() is JobState.CANCELLED
            with pytest.raises(JobCancelled):
                await later.result()
            assert [j.id async for j in jobs.iter(queue=queue)] == [later.id, handle.id]
            assert await jobs.validate("raw.echo", {"reply": 1}) != []
            assert {t["name"] for t in await jobs.types()} == JOB_TYPES

    asyncio.run(main())


def test_client_jobs_is_the_default_servers(
    jobs_server: ServerProcess, queue: str, tmp_path: Path
) -> None:
    """What ``client.jobs`` returns: the jobs API of ``settings.url`` (TETHER_URL)."""
    settings = Settings(url=jobs_server.url, credentials_path=tmp_path / "credentials.json")
    with tether.Client(timeout=10, settings=settings) as client:
        jobs = client.jobs
        assert client.jobs is jobs  # one per client
        handle = jobs.submit("raw.echo", {"reply": {"answer": 2}}, queue=queue)
        assert jobs.fetch(handle.id).state is JobState.QUEUED
        with pytest.raises(tether.DeadlineExceeded, match=r"still queued after 0\.2 s"):
            handle.wait(0.2)
    with tether.Client(settings=Settings(url=None)) as client:
        with pytest.raises(ValueError, match="TETHER_URL"):
            client.jobs.submit("raw.echo", {})

    async def main() -> None:
        async with tether.AsyncClient(timeout=10, settings=settings) as client:
            jobs = client.jobs
            assert client.jobs is jobs
            assert (await jobs.fetch(handle.id)).id == handle.id
        async with tether.AsyncClient(settings=Settings(url=None)) as client:
            with pytest.raises(ValueError, match="TETHER_URL"):
                await client.jobs.submit("raw.echo", {})

    asyncio.run(main())
