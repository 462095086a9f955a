"""Run the inventory example end to end: serve it, call it four ways, run jobs, stop it.

    python examples/inventory/demo.py

Starts ``tether serve examples.inventory.app:app`` on a free loopback port,
then calls it from Python over HTTP (direct), from Python in-process
(integrated), from the ``tether`` CLI and with curl, printing each step.
The server registers itself in a SQLite registry (``--advertise``); a
second instance joins it, and calls by service name are spread over both.
Then starts ``tether worker examples.inventory.app:app`` (the processes share
a SQLite job store and registry in a temporary directory, through
``TETHER_JOB_STORE_URL`` and ``TETHER_REGISTRY_URL``) and submits
``checksum`` jobs from Python, with curl and from the CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tether  # noqa: E402
from examples.inventory.app import app  # noqa: E402
from examples.inventory.service import Device, Inventory, NotFound  # noqa: E402
from tether.jobs import JobValidationError  # noqa: E402


def step(title: str) -> None:
    print(f"\n== {title}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The job store and registry the processes share: SQLite files in a temporary directory.
STATE = Path(tempfile.mkdtemp(prefix="tether-demo-"))
REGISTRY = f"sqlite:///{STATE / 'registry.db'}"
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "TETHER_JOB_STORE_URL": f"sqlite:///{STATE / 'jobs.db'}",
    "TETHER_REGISTRY_URL": REGISTRY,
}


def start_server(port: int) -> subprocess.Popen[bytes]:
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "tether.cli",
        "serve",
        "examples.inventory.app:app",
        "--port",
        str(port),
        "--advertise",
        url,
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    print(f"$ tether serve examples.inventory.app:app --port {port} --advertise {url}")
    server = subprocess.Popen(command, cwd=ROOT, env=ENV)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start; see its output above")


def start_worker() -> subprocess.Popen[bytes]:
    print("$ tether worker examples.inventory.app:app --concurrency 2")
    log = (STATE / "worker.log").open("wb")
    command = [
        sys.executable,
        "-m",
        "tether.cli",
        "worker",
        "examples.inventory.app:app",
        "--concurrency",
        "2",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def run(command: list[str], shown: str, expect: int = 0) -> None:
    """Run a step's command and print its output; stop the demo (exit 1) unless it
    exits with ``expect`` (non-zero for a step that shows an error)."""
    print(f"$ {shown}")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    print((result.stdout or result.stderr).rstrip())
    if result.returncode != expect:
        if result.stdout and result.stderr:
            print(result.stderr.rstrip())
        raise SystemExit(
            f"demo failed: `{shown}` exited with {result.returncode}, expected {expect}"
        )


def show_checksums(result: dict[str, object]) -> None:
    files = result["files"]
    assert isinstance(files, list)
    for entry in files:
        print(f"  {entry['sha256'][:16]}...  {entry['size']:>7} bytes  {entry['path']}")
    print(f"  total: {result['total_bytes']} bytes")


def http_json(method: str, url: str, body: object | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def jobs_demo(url: str) -> None:
    step("Jobs: a worker runs the 'checksum' job type (sha256 and size of files)")
    worker = start_worker()
    try:
        step("Python: client.connect(url).jobs.submit(...), then job.wait() and job.result")
        with tether.Client(timeout=30) as client:
            jobs = client.connect(url).jobs
            job = jobs.submit(
                "checksum",
                {"paths": ["README.md", "pyproject.toml", "examples/inventory/devices.csv"]},
            )
            print("submitted", job.id, "->", job.status.value)
            job.wait(60)
            print("finished  ->", job.job.state.value, f"after {job.job.attempts} attempt(s)")
            show_checksums(job.result)
            try:
                jobs.submit("checksum", {"paths": []})
            except JobValidationError as exc:
                print("submit(paths=[]) raised", type(exc).__name__, "(422):", exc.message)
            else:
                raise SystemExit("demo failed: submit(paths=[]) was not refused")

        step("curl: POST /jobs, then a long poll on GET /jobs/{id}/wait")
        body = '{"type": "checksum", "parameters": {"paths": ["examples/inventory/service.py"]}}'
        shown = f"curl -d '{body}' -H 'content-type: application/json' {url}/jobs"
        if shutil.which("curl"):
            print(f"$ {shown}")
            made = subprocess.run(
                ["curl", "-sf", "-d", body, "-H", "content-type: application/json", f"{url}/jobs"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            submitted = json.loads(made.stdout)
            print(json.dumps({k: submitted[k] for k in ("id", "type", "state")}))
            print(f"$ curl '{url}/jobs/{submitted['id']}/wait?timeout=30'")
            waited = subprocess.run(
                ["curl", "-sf", f"{url}/jobs/{submitted['id']}/wait?timeout=30"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            finished = json.loads(waited.stdout)
        else:
            print(f"(curl is not installed; the same requests with urllib)\n$ {shown}")
            submitted = http_json("POST", f"{url}/jobs", json.loads(body))
            print(json.dumps({k: submitted[k] for k in ("id", "type", "state")}))
            finished = http_json("GET", f"{url}/jobs/{submitted['id']}/wait?timeout=30")
        print("state:", finished["state"], " result:", json.dumps(finished["result"]))
        if finished["state"] != "succeeded":
            raise SystemExit(f"demo failed: the job ended {finished['state']}")

        step("The tether CLI, waiting with a progress bar (on a terminal) for the result")
        cli = [sys.executable, "-m", "tether.cli"]
        parameters = '{"paths": ["examples/inventory/devices.csv"]}'
        print(f"$ export TETHER_URL={url}    # the server of tether jobs ... and client.jobs")
        ENV["TETHER_URL"] = url  # for the child commands below
        run(
            [*cli, "jobs", "submit", "checksum", "--json", parameters, "--wait"],
            f"tether jobs submit checksum --json '{parameters}' --wait",
        )
        run(  # the job fails (no such file): the command says so and exits 1
            [*cli, "jobs", "submit", "checksum", 'paths:=["no/such/file"]', "--wait"],
            "tether jobs submit checksum 'paths:=[\"no/such/file\"]' --wait",
            expect=1,
        )
    except BaseException:
        log = STATE / "worker.log"
        print("the worker's log:\n" + log.read_text(errors="replace")[-4000:])
        raise
    finally:
        step("Stop the worker (SIGTERM: running jobs finish or are handed back)")
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        print("stopped")


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    step("Serve the inventory example over HTTP")
    server = start_server(port)
    try:
        with tether.Client(timeout=10) as client:
            step("Python, direct over HTTP: client.connect(url).proxy(Inventory)")
            inventory = client.connect(url).proxy(Inventory)
            print("list  ->", [d.name for d in inventory.list_devices()])
            print("get   ->", inventory.get("r1"))
            print("filter(tags=['ams1']) ->", [d.name for d in inventory.filter(tags=["ams1"])])
            added = inventory.add(
                Device(
                    name="r3",
                    host="10.0.0.3",
                    platform="iosxr",
                    tags=["core"],
                    added_at=dt.datetime.now(dt.UTC),
                )
            )
            print("add   ->", added.name, added.added_at.isoformat())
            try:
                inventory.get("ghost")
            except NotFound as exc:
                print("get('ghost') raised", repr(exc))
            else:
                raise SystemExit("demo failed: get('ghost') did not raise NotFound")

            step("Python, in-process: client.integrated(app) runs the same call path")
            local = client.integrated(app).proxy(Inventory)
            print("get   ->", local.get("sw1"))

        step("The tether CLI")
        cli = [sys.executable, "-m", "tether.cli"]
        run(
            [*cli, "call", url, "inventory.get", "name=r3"],
            f"tether call {url} inventory.get name=r3",
        )
        run(
            [*cli, "call", url, "inventory.filter", "platform=nxos"],
            f"tether call {url} inventory.filter platform=nxos",
        )
        run(  # an error: printed as `error not_found: ...`, exit status 1
            [*cli, "call", url, "inventory.get", "name=ghost"],
            f"tether call {url} inventory.get name=ghost",
            expect=1,
        )

        step("curl")
        curl = [
            "curl",
            "-s",
            "-d",
            '{"name": "r1"}',
            "-H",
            "content-type: application/json",
            f"{url}/rpc/inventory/get",
        ]
        shown = (
            "curl -d '{\"name\": \"r1\"}' -H 'content-type: application/json' "
            f"{url}/rpc/inventory/get"
        )
        if shutil.which("curl"):
            run([curl[0], "-f", *curl[1:]], shown)  # -f: an HTTP error fails the step
        else:
            print(f"(curl is not installed; the same request with urllib)\n$ {shown}")
            request = urllib.request.Request(
                f"{url}/rpc/inventory/get",
                data=b'{"name": "r1"}',
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                print(response.read().decode())

        discovery_demo()
        jobs_demo(url)
    finally:
        step("Stop the server")
        server.terminate()
        server.wait(15)
        print("stopped")
        shutil.rmtree(STATE, ignore_errors=True)


def discovery_demo() -> None:
    """A second instance joins the registry; calls by service name spread over both."""
    step("Discovery: a second instance registers in the same SQLite registry")
    second = start_server(free_port())
    try:
        cli = [sys.executable, "-m", "tether.cli"]
        run([*cli, "services"], "tether services")
        with tether.Client(timeout=10) as client:
            step("Python, by name: client.service('inventory') picks a healthy instance per call")
            conn = client.service("inventory", registry=REGISTRY)
            inventory = conn.proxy(Inventory)
            answered = [inventory.get("r1").name for _ in range(6)]
            print("get('r1') x6 ->", answered)
            print("calls per instance:", dict(conn.transport.balancer.calls))  # type: ignore[attr-defined]
        run(
            [*cli, "call", "inventory", "inventory.get", "name=sw1"],
            "tether call inventory inventory.get name=sw1",
        )
    finally:
        step("Stop the second instance (SIGTERM: it drains, then deregisters)")
        second.terminate()
        second.wait(15)
        print("stopped")


if __name__ == "__main__":
    main()
