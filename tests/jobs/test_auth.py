"""The jobs API under an App with auth: a scope per action and per job type, and HTTP
workers that send credentials and verify the server with a private CA (HTTPS)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

import tether
from tests.apps.jobs_secured import ACTION_SCOPES, make_app
from tests.fixtures.servers import ROOT, ServerProcess
from tests.jobs.helpers import HTTPSServerProcess, WorkerProcess, http, wait_for
from tether.auth import CredentialStore, fast_hasher
from tether.jobs.api import ACTIONS
from tether.settings import Settings

SECURED = "tests.apps.jobs_secured:app"


@dataclass
class Secured:
    server: HTTPSServerProcess
    ca: Path
    keys: dict[str, str]  # API keys by role
    dir: Path

    def call(self, method: str, path: str, role: str | None, body: Any = None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {self.keys[role]}"} if role else {}
        return http(
            method, self.server.url + path, body, headers=headers, context=self.server.context
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """tests.apps.jobs_secured:app over HTTPS (a trustme CA), API keys per role."""
    d = tmp_path_factory.mktemp("secured-jobs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    leaf.private_key_pem.write_to_path(str(d / "server.key"))
    store = CredentialStore(d / "auth.db", hasher=fast_hasher())
    roles = {
        "submitter": ["jobs.submit", "jobs.read", "jobs.cancel"],
        "worker": ["jobs.work"],
        "secret": ["jobs.submit", "jobs.read", "secret.submit"],
    }
    for action in ACTION_SCOPES:  # one scope held alone, or every scope but one
        roles[f"only {action}"] = [action]
        roles[f"all but {action}"] = [a for a in ACTION_SCOPES if a != action] + ["secret.submit"]
    keys = {role: store.add_api_key(role, scopes) for role, scopes in roles.items()}
    store.close()
    env = {
        "TETHER_AUTH_STORE_PATH": str(d / "auth.db"),
        "TETHER_JOB_STORE_URL": f"sqlite:///{d / 'jobs.db'}",
        "TETHER_STATE_DIR": str(d / "state"),
    }
    server = HTTPSServerProcess(
        SECURED, d / "ca.pem", d / "server.pem", d / "server.key", env
    ).start()
    yield Secured(server, d / "ca.pem", keys, d)
    server.stop()


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def _submit(secured: Secured, role: str, queue: str, type: str = "echo") -> tuple[int, Any]:
    return secured.call(
        "POST", "/jobs", role, {"type": type, "parameters": {"n": 1}, "queue": queue}
    )


#: Every endpoint of the jobs API: its name in ``api.ACTIONS``, verb, path template,
#: the path and body to send (``{job}``: a queued job's id, ``{queue}``: the test's
#: queue), and the action it must be: written out here, not read from ``ACTIONS``, so
#: that a wrong entry there is caught.
ROUTES: list[tuple[str, str, str, str, Any, str]] = [
    ("submit", "POST", "/jobs/", "/jobs", "submit", "jobs.submit"),
    ("list_jobs", "GET", "/jobs/", "/jobs?queue={queue}", None, "jobs.read"),
    ("get", "GET", "/jobs/{job_id}", "/jobs/{job}", None, "jobs.read"),
    ("wait", "GET", "/jobs/{job_id}/wait", "/jobs/{job}/wait?timeout=0", None, "jobs.read"),
    ("list_types", "GET", "/jobs/types", "/jobs/types", None, "jobs.read"),
    ("get_type", "GET", "/jobs/types/{name}", "/jobs/types/echo", None, "jobs.read"),
    (
        "validate",
        "POST",
        "/jobs/types/{name}/validate",
        "/jobs/types/echo/validate",
        {"parameters": {}},
        "jobs.read",
    ),
    ("cancel", "POST", "/jobs/{job_id}/cancel", "/jobs/{job}/cancel", {}, "jobs.cancel"),
    ("claim", "POST", "/jobs/claim", "/jobs/claim", "claim", "jobs.work"),
    (
        "heartbeat",
        "POST",
        "/jobs/{job_id}/heartbeat",
        "/jobs/{job}/heartbeat",
        {"lease_token": "x"},
        "jobs.work",
    ),
    (
        "complete",
        "POST",
        "/jobs/{job_id}/complete",
        "/jobs/{job}/complete",
        {"lease_token": "x", "result": {}},
        "jobs.work",
    ),
    (
        "fail",
        "POST",
        "/jobs/{job_id}/fail",
        "/jobs/{job}/fail",
        {"lease_token": "x", "error": {"code": "x", "message": "m"}},
        "jobs.work",
    ),
    (
        "release",
        "POST",
        "/jobs/{job_id}/release",
        "/jobs/{job}/release",
        {"lease_token": "x"},
        "jobs.work",
    ),
    (
        "mark_cancelled",
        "POST",
        "/jobs/{job_id}/mark-cancelled",
        "/jobs/{job}/mark-cancelled",
        {"lease_token": "x"},
        "jobs.work",
    ),
]


def test_the_route_table_covers_every_endpoint() -> None:
    assert {name for name, *_ in ROUTES} == set(ACTIONS)
    paths = {path for _, path in make_app().routes() if path.startswith("/jobs")}
    assert {template for _, _, template, *_ in ROUTES} == paths


@pytest.mark.parametrize(
    ("name", "verb", "path", "body", "action"),
    [(name, verb, path, body, action) for name, verb, _, path, body, action in ROUTES],
    ids=[r[0] for r in ROUTES],
)
def test_each_route_needs_the_scope_of_its_action_and_only_that(
    secured: Secured, queue: str, name: str, verb: str, path: str, body: Any, action: str
) -> None:
    status, job = _submit(secured, "submitter", queue)
    assert status == 201, job
    path = path.format(job=job["id"], queue=queue)
    if body == "submit":
        body = {"type": "echo", "parameters": {"n": 1}, "queue": queue}
    elif body == "claim":
        body = {"worker_id": "w", "queues": [f"{queue}-none"], "wait": 0}
    # Every other scope is not enough: refused before the route looks at anything.
    status, answer = secured.call(verb, path, f"all but {action}", body)
    assert status == 403, (name, answer)
    assert answer["error"]["code"] == "permission_denied"
    assert answer["error"]["details"] == {"missing": [action]}
    # Its own scope alone is: past authorization (the route's own answer, e.g. 404 or
    # 409 for a made-up lease token).
    status, answer = secured.call(verb, path, f"only {action}", body)
    assert status not in (401, 403), (name, answer)


def test_each_action_needs_its_scope(secured: Secured, queue: str) -> None:
    status, body = _submit(secured, "submitter", queue)
    assert status == 201, body
    job_id = body["id"]
    assert secured.call("GET", f"/jobs/{job_id}", "submitter")[0] == 200
    claim = {"worker_id": "w", "queues": [queue], "wait": 0}
    status, body = secured.call("POST", "/jobs/claim", "submitter", claim)
    assert status == 403 and body["error"]["details"] == {"missing": ["jobs.work"]}, body
    # A worker is no submitter, nor a reader; it claims and completes.
    status, body = _submit(secured, "worker", queue)
    assert status == 403 and body["error"]["details"] == {"missing": ["jobs.submit"]}
    assert secured.call("GET", f"/jobs/{job_id}", "worker")[0] == 403
    status, body = secured.call("POST", "/jobs/claim", "worker", claim)
    assert status == 200, body
    [entry] = body["jobs"]
    assert entry["id"] == job_id
    status, body = secured.call(
        "POST",
        f"/jobs/{job_id}/complete",
        "worker",
        {"lease_token": entry["lease_token"], "result": {"n": 1}},
    )
    assert status == 200 and body["state"] == "succeeded", body
    # Without credentials: 401.
    status, body = secured.call("GET", f"/jobs/{job_id}", None)
    assert status == 401 and body["error"]["code"] == "unauthenticated"


@pytest.fixture(scope="module", params=["defaults", "work_open"])
def unscoped(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess, dict[str, str]]]:
    """An App with auth whose ``AuthConfig.scopes`` names no jobs action (``defaults``),
    or names ``jobs.work`` with no scope (``work_open``); API keys ``anyone`` (no scope)
    and ``worker`` (``jobs.work``)."""
    d = tmp_path_factory.mktemp(f"unscoped-{request.param}")
    store = CredentialStore(d / "auth.db", hasher=fast_hasher())
    keys = {
        "anyone": store.add_api_key("anyone", []),
        "worker": store.add_api_key("worker", ["jobs.work"]),
    }
    store.close()
    env = {
        "TETHER_AUTH_STORE_PATH": str(d / "auth.db"),
        "TETHER_JOB_STORE_URL": f"sqlite:///{d / 'jobs.db'}",
        "TETHER_STATE_DIR": str(d / "state"),
    }
    server = ServerProcess(f"tests.apps.jobs_secured:{request.param}", env=env).start()
    yield request.param, server, keys
    server.stop()


def test_by_default_only_jobs_work_needs_a_scope_of_its_name(
    unscoped: tuple[str, ServerProcess, dict[str, str]], queue: str
) -> None:
    """Any identity may submit, read and cancel; taking and finishing jobs needs the
    scope ``jobs.work`` unless ``AuthConfig.scopes`` says otherwise."""
    kind, server, keys = unscoped

    def call(method: str, path: str, key: str | None, body: Any = None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {keys[key]}"} if key else {}
        return http(method, server.url + path, body, headers=headers)

    submitted = {"type": "echo", "parameters": {}, "queue": queue}
    status, job = call("POST", "/jobs", "anyone", submitted)
    assert status == 201, job
    assert call("GET", f"/jobs/{job['id']}", "anyone")[0] == 200
    assert call("GET", f"/jobs?queue={queue}", "anyone")[0] == 200
    assert call("GET", f"/jobs/{job['id']}", None)[0] == 401  # an identity it needs
    claim = {"worker_id": "w", "queues": [queue], "wait": 0}
    status, answer = call("POST", "/jobs/claim", "anyone", claim)
    if kind == "defaults":
        assert status == 403, answer
        assert answer["error"]["details"] == {"missing": ["jobs.work"]}
        status, answer = call("POST", f"/jobs/{job['id']}/fail", "anyone", {"lease_token": "x"})
        assert status == 403 and answer["error"]["details"] == {"missing": ["jobs.work"]}
        status, answer = call("POST", "/jobs/claim", "worker", claim)
    assert status == 200 and [j["id"] for j in answer["jobs"]] == [job["id"]], answer
    status, answer = call("POST", f"/jobs/{job['id']}/cancel", "anyone", {})
    assert status == 200 and answer["cancel_requested"], answer


def test_a_job_type_may_require_scopes_of_its_own(secured: Secured, queue: str) -> None:
    status, body = _submit(secured, "submitter", queue, "secret")
    assert status == 403, body
    assert body["error"]["code"] == "permission_denied"
    assert body["error"]["details"] == {"missing": ["secret.submit"]}
    status, page = secured.call("GET", f"/jobs?queue={queue}", "submitter")
    assert status == 200 and page["jobs"] == []  # nothing was stored
    status, body = _submit(secured, "secret", queue, "secret")
    assert status == 201 and body["type"] == "secret", body
    # Other job types need only the action's scopes.
    assert _submit(secured, "secret", queue)[0] == 201
    status, described = secured.call("GET", "/jobs/types/secret", "submitter")
    assert status == 200 and described["scopes"] == ["secret.submit"]


def test_an_in_process_http_worker_sends_its_api_key_and_trusts_the_given_ca(
    secured: Secured, queue: str, tmp_path: Path
) -> None:
    status, body = _submit(secured, "submitter", queue)
    assert status == 201, body
    worker = tether.Worker(
        make_app(),
        url=secured.server.url,
        api_key=secured.keys["worker"],
        ca=secured.ca,
        queues=[queue],
        settings=Settings(credentials_path=tmp_path / "credentials.json"),
    )
    thread = threading.Thread(target=worker.serve, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        job = wait_for(
            lambda: (
                (j := secured.call("GET", f"/jobs/{body['id']}", "submitter")[1])["state"]
                == "succeeded"
                and j
            ),
            30,
            "the job",
        )
        assert job["result"] == {"n": 1}
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_tether_worker_url_uses_the_credentials_stored_by_tether_login(
    secured: Secured, queue: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TETHER_STATE_DIR": str(tmp_path / "state"),
        "TETHER_CREDENTIALS_PATH": str(tmp_path / "credentials.json"),
        "TETHER_CONFIG": str(tmp_path / "none.toml"),
    }
    url = secured.server.url
    # Without credentials the worker is refused (and says so), claiming nothing.
    refused = WorkerProcess(
        None,
        queue,
        tmp_path / "refused.log",
        "--url",
        url,
        app=SECURED,
        env={**env, "TETHER_TLS_CA_BUNDLE": str(secured.ca)},
    ).start()
    try:
        wait_for(lambda: "unauthenticated" in refused.output(), 30, "the refusal")
    finally:
        refused.stop()
    login = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "login",
            url,
            "--api-key-stdin",
            "--ca",
            str(secured.ca),
        ],
        input=secured.keys["worker"] + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    status, body = _submit(secured, "submitter", queue)
    assert status == 201, body
    worker = WorkerProcess(None, queue, tmp_path / "worker.log", "--url", url, app=SECURED, env=env)
    worker.start()
    try:
        job = wait_for(
            lambda: (
                (j := secured.call("GET", f"/jobs/{body['id']}", "submitter")[1])["state"]
                == "succeeded"
                and j
            ),
            30,
            "the job",
        )
        assert job["result"] == {"n": 1}
    finally:
        worker.stop()
