"""Helpers of the jobs tests: worker processes and plain-urllib HTTP calls."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.servers import ROOT, ServerProcess

APP = "tests.apps.jobs:app"


class WorkerProcess:
    """``tether worker APP`` (default tests.apps.jobs:app) in a child process, its log in
    ``log``; ``env`` replaces this process's environment as the base of the child's."""

    def __init__(
        self,
        store_url: str | None,
        queue: str,
        log: Path,
        *args: str,
        app: str = APP,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "tether.cli",
            "worker",
            app,
            "--queue",
            queue,
            "--log-level",
            "info",
            *args,
        ]
        self.env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
        if store_url is not None:
            self.env["TETHER_JOB_STORE_URL"] = store_url
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


def http(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 30.0,
    *,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """One JSON request with urllib: ``(status, decoded body or None)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
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


class HTTPSServerProcess(ServerProcess):
    """``tether serve TARGET --tls-cert ... --tls-key ...``, checked over HTTPS with ``ca``."""

    def __init__(
        self, target: str, ca: Path, cert: Path, key: Path, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(target, args=["--tls-cert", str(cert), "--tls-key", str(key)], env=env)
        self.url = f"https://127.0.0.1:{self.port}"
        self.context = ssl.create_default_context(cafile=str(ca))

    def start(self, timeout: float = 20.0) -> HTTPSServerProcess:
        """Start and wait until ``/healthz`` answers over HTTPS."""
        command = [sys.executable, "-m", "tether.cli", "serve", self.target]
        command += ["--port", str(self.port), "--log-level", "warning", *self.args]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        wait_for(lambda: self._healthy() or self.process.poll() is not None, timeout, str(self))
        if self.process.poll() is not None:
            out = self.process.stdout.read().decode() if self.process.stdout else ""
            raise RuntimeError(f"{self} exited with {self.process.returncode}:\n{out}")
        return self

    def _healthy(self) -> bool:
        try:
            status, _ = http("GET", self.url + "/healthz", timeout=1, context=self.context)
        except OSError:
            return False
        return status == 200


class Partition:
    """A TCP forwarder from a loopback port of its own to ``127.0.0.1:target``, to cut a
    client off its server for real: :meth:`hang` keeps every connection open but lets
    no byte through any more (a network split, or a hung server: requests get no
    answer), :meth:`refuse` closes the connections and the port (connections refused).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._hung = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        """From now on nothing passes, either way; new connections are accepted, not served."""
        self._hung.set()

    def refuse(self) -> None:
        """Close every connection and the listening port."""
        self._hung.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            sock.close()

    close = refuse

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._listener not in self._sockets:  # refused meanwhile
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if not self._keep(client) or self._hung.is_set():
                continue  # a hung server accepts and never answers
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            if not self._keep(upstream):
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                break
            if self._hung.is_set():
                continue  # swallowed
            try:
                sink.sendall(data)
            except OSError:
                return
        if not self._hung.is_set():
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the end of the stream on


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
