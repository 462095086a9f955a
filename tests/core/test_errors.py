"""Errors end to end: which class the caller gets, the HTTP status of every code, and
answers without an envelope.

The connection tests take ``conn`` (every connection kind and codec, see conftest.py).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import tether
from tests.apps.behaviour import Behave, Busy, Gone, ServerOnly
from tests.apps.behaviour import debug_app as behaviour_debug_app
from tests.fixtures.servers import ServerProcess
from tether.errors import error_from_envelope
from tether.jobs import JobValidationError


def test_an_undeclared_service_error_arrives_as_remote_error(conn: tether.Connection) -> None:
    # This process imports ServerOnly, yet the interface does not declare it.
    with pytest.raises(tether.RemoteError) as caught:
        conn.proxy(Behave).fail("server_only")
    assert not isinstance(caught.value, ServerOnly)
    assert caught.value.code is tether.StatusCode.FAILED_PRECONDITION
    assert caught.value.error_name == "tests.ServerOnlyError"
    assert caught.value.message == "a class the client does not have"


def test_errors_declared_by_another_method_are_undeclared_here(conn: tether.Connection) -> None:
    # ``fail`` declares Busy and Gone; ``fail_undeclared`` raises them without declaring.
    with pytest.raises(tether.RemoteError) as caught:
        conn.proxy(Behave).fail_undeclared("busy")
    assert type(caught.value) is tether.RemoteError
    assert caught.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.error_name == "Busy"
    with pytest.raises(Busy):
        conn.proxy(Behave).fail("busy")


def test_dynamic_calls_get_remote_errors_for_application_errors(conn: tether.Connection) -> None:
    with pytest.raises(tether.RemoteError) as caught:
        conn.call("behave.fail", kind="missing")  # no interface: nothing is declared
    assert type(caught.value) is tether.RemoteError
    assert caught.value.code is tether.StatusCode.NOT_FOUND
    assert (caught.value.error_name, caught.value.details) == ("Missing", {"kind": "missing"})


def test_an_error_class_with_its_own_constructor_is_rebuilt(conn: tether.Connection) -> None:
    # Gone.__init__ takes (name): the client must not call it with (message, details).
    with pytest.raises(Gone) as caught:
        conn.proxy(Behave).fail("gone")
    assert caught.value.message == "thing is gone"
    assert caught.value.details == {"name": "thing"}
    assert caught.value.code is tether.StatusCode.FAILED_PRECONDITION
    assert str(caught.value) == "failed_precondition: thing is gone"


@tether.service(name="behave")
class OlderBehave:
    """The behave service as an older client sees it: ``greet`` returned an int."""

    def greet(self, name: str) -> int: ...


def test_a_result_of_another_type_is_data_loss(conn: tether.Connection) -> None:
    with pytest.raises(tether.RemoteError) as caught:  # a RemoteError: `except` catches it
        conn.proxy(OlderBehave).greet("ann")
    assert caught.value.code is tether.StatusCode.DATA_LOSS
    assert "behave.greet" in caught.value.message


@pytest.fixture(scope="module")
def debug_server() -> Iterator[ServerProcess]:
    server = ServerProcess("tests.apps.behaviour:debug_app").start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["integrated", "direct"])
def test_debug_apps_send_the_traceback(kind: str, request: pytest.FixtureRequest) -> None:
    with tether.Client(timeout=10) as client:
        if kind == "integrated":
            conn = client.integrated(behaviour_debug_app)
        else:
            conn = client.connect(request.getfixturevalue("debug_server").url)
        with pytest.raises(tether.RemoteError) as caught:
            conn.proxy(Behave).fail("crash")
    assert caught.value.code is tether.StatusCode.INTERNAL
    assert "secret internal detail" in caught.value.message
    trace = "".join(caught.value.details["traceback"])
    assert "Traceback (most recent call last)" in trace
    assert 'raise RuntimeError("secret internal detail")' in trace


#: Connect's HTTP status for each code, written out here rather than read from tether.
CONNECT_STATUS = {
    "cancelled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


def test_the_table_covers_every_code() -> None:
    assert set(CONNECT_STATUS) == {c.value for c in tether.StatusCode}


@pytest.mark.parametrize(("code", "status"), list(CONNECT_STATUS.items()))
def test_every_code_has_its_http_status(
    behaviour_server: ServerProcess, code: str, status: int
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", behaviour_server.port, timeout=10)
    try:
        body = json.dumps({"code": code}).encode()
        conn.request("POST", "/rpc/behave/fail_with", body, {"content-type": "application/json"})
        response = conn.getresponse()
        envelope = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == status
    assert envelope["error"]["code"] == code
    assert envelope["error"]["message"] == f"failing with {code}"
    # And the Python client reads the code back from the envelope, not the status.
    with tether.Client(timeout=10) as client:
        with pytest.raises(tether.RemoteError) as caught:
            client.connect(behaviour_server.url).proxy(Behave).fail_with(code)
    assert caught.value.code == code


class _Gateway(BaseHTTPRequestHandler):
    """A proxy in front of a dead service: answers every POST with the status in its
    path's first segment and an HTML page, no error envelope."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status = int(self.path.split("/")[1])
        page = b"<html><body><h1>Bad Gateway</h1></body></html>"
        self.send_response(status)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (502, "unavailable"),
        (504, "unavailable"),
        (400, "internal"),
        (401, "unauthenticated"),
        (403, "permission_denied"),
        (404, "unimplemented"),
        (418, "unknown"),
    ],
)
def test_answers_without_an_envelope_use_grpc_s_table(gateway: str, status: int, code: str) -> None:
    with tether.Client(timeout=10) as client:
        conn = client.connect(f"{gateway}/{status}")  # the status travels in the path
        with pytest.raises(tether.RemoteError) as caught:
            conn.call("behave.greet", name="x")
    assert caught.value.code == code
    assert f"HTTP {status} without an error envelope" in caught.value.message
    assert caught.value.http_status == status


def test_a_bare_502_is_unavailable_for_typed_calls_too(gateway: str) -> None:
    with tether.Client(timeout=10) as client:
        with pytest.raises(tether.Unavailable):
            client.connect(f"{gateway}/502").proxy(Behave).greet("x")


def test_the_declared_class_wins_over_another_of_the_same_name() -> None:
    # Two classes called Clash in two modules: only the declared one may be raised.
    first = type("Clash", (tether.ServiceError,), {"code": tether.StatusCode.ABORTED})
    second = type("Clash", (tether.ServiceError,), {"code": tether.StatusCode.ABORTED})
    first.__module__, second.__module__ = "app.one", "app.two"
    envelope = {"error": {"code": "aborted", "message": "m", "details": None, "type": "Clash"}}
    assert type(error_from_envelope(envelope, 409, (second,))) is second
    assert type(error_from_envelope(envelope, 409, (first,))) is first
    assert type(error_from_envelope(envelope, 409)) is tether.RemoteError


def test_tethers_own_errors_need_no_declaration() -> None:
    envelope = {
        "error": {
            "code": "invalid_argument",
            "message": "bad parameters",
            "details": [{"loc": ["x"], "msg": "m", "type": "t"}],
            "type": "JobValidationError",
        }
    }
    error = error_from_envelope(envelope, 422)
    assert isinstance(error, JobValidationError)
    assert (error.http_status, error.errors[0]["loc"]) == (422, ["x"])


def test_a_code_other_than_the_class_s_is_kept() -> None:
    envelope = {"error": {"code": "aborted", "message": "m", "details": None, "type": "Gone"}}
    error = error_from_envelope(envelope, 409, (Gone,))
    assert isinstance(error, Gone)
    assert error.code is tether.StatusCode.ABORTED
    assert Gone.code is tether.StatusCode.FAILED_PRECONDITION  # the class is untouched


def test_a_200_that_is_not_a_result_is_data_loss(gateway: str) -> None:
    with tether.Client(timeout=10) as client:
        conn = client.connect(f"{gateway}/200")  # answers 200 with an HTML page
        with pytest.raises(tether.RemoteError) as dynamic:
            conn.call("behave.greet", name="x")
        with pytest.raises(tether.RemoteError) as typed:
            conn.proxy(Behave).greet("x")
    assert dynamic.value.code is tether.StatusCode.DATA_LOSS  # not the caller's arguments
    assert "not valid json" in dynamic.value.message
    assert typed.value.code is tether.StatusCode.DATA_LOSS
