"""Helpers of the jobs tests: worker processes and plain-urllib HTTP calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.servers import ROOT, ServerProcess

APP = "tests.apps.jobs:app"


class WorkerProcess:
    """``tether worker tests.apps.jobs:app`` in a child process, its log in ``log``."""

    def __init__(self, store_url: str, queue: str, log: Path, *args: str) -> None:
        self.command = [
            sys.executable,
            "-m",
            "tether.cli",
            "worker",
            APP,
            "--queue",
            queue,
            "--log-level",
            "info",
            *args,
        ]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "TETHER_JOB_STORE_URL": store_url}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def started(self, timeout: float = 20.0) -> WorkerProcess:
        """Wait until the worker has opened its store and begun claiming."""
        wait_for(lambda: " started: " in self.output() or self._dead(), timeout, "the worker")
        assert not self._dead(), self.output()
        return self

    def _dead(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One JSON request with urllib: ``(status, decoded body or None)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` every 50 ms until it returns a true value; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_state(server: ServerProcess, job_id: str) -> dict[str, Any]:
    """The job as ``GET /jobs/{id}`` shows it."""
    status, job = http("GET", f"{server.url}/jobs/{job_id}")
    assert status == 200, job
    assert isinstance(job, dict)
    return job


def submit(server: ServerProcess, type: str, parameters: dict[str, Any], **extra: Any) -> str:
    """Submit a job over HTTP; return its id."""
    status, job = http(
        "POST", f"{server.url}/jobs", {"type": type, "parameters": parameters, **extra}
    )
    assert status == 201, job
    return str(job["id"])


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
