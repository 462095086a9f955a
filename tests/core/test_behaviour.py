"""One behaviour suite for every connection kind and codec.

Each test runs against an integrated connection, a direct one to a real
uvicorn on loopback and one through a real NATS relay, in JSON and in
msgpack: the call path must behave the same whichever carries it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import tether
from tests.apps.behaviour import SAMPLES, Behave, Busy, Missing, Types
from tests.apps.behaviour import app as behaviour_app
from tests.fixtures.servers import ServerProcess
from tether.codec import Codec, decode_any
from tether.server.dispatcher import TIMEOUT_HEADER


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_supported_type_round_trips_exactly(conn: tether.Connection, name: str) -> None:
    _, value = SAMPLES[name]
    result = getattr(conn.proxy(Types), f"echo_{name}")(value)
    assert result == value
    assert type(result) is type(value)
    if hasattr(value, "utcoffset"):
        assert result.utcoffset() == value.utcoffset()
    if name == "decimal":
        assert str(result) == "12.3400"  # the exponent survives too


def test_keyword_arguments_and_defaults_bind(conn: tether.Connection) -> None:
    behave = conn.proxy(Behave)
    assert behave.greet("ann") == "hello ann!"
    assert behave.greet("ann", "?") == "hello ann?"
    assert behave.greet(name="bo", times=2) == "hello bo! hello bo!"
    assert behave.greet("cy", punctuation=".", times=1) == "hello cy."


def test_none_result(conn: tether.Connection) -> None:
    assert conn.proxy(Behave).nothing() is None


def test_async_methods(conn: tether.Connection) -> None:
    assert conn.proxy(Behave).async_greet("dee") == "hello dee"


def test_sync_methods_run_off_the_event_loop(conn: tether.Connection, kind: str) -> None:
    name = conn.proxy(Behave).thread_name()
    if kind in ("direct", "relay"):
        assert name.startswith("tether"), name  # the App's thread pool
    else:
        assert name != "tether-client-loop"  # inline in the caller, never on a loop


def test_dynamic_call(conn: tether.Connection) -> None:
    assert conn.call("behave.greet", name="eve", times=2) == "hello eve! hello eve!"
    assert conn.call("behave.greet", {"name": "fay"}) == "hello fay!"


def test_declared_error_keeps_its_class_code_and_details(conn: tether.Connection) -> None:
    with pytest.raises(Missing) as caught:
        conn.proxy(Behave).fail("missing")
    assert caught.value.code is tether.StatusCode.NOT_FOUND
    assert caught.value.message == "no such thing"
    assert caught.value.details == {"kind": "missing"}
    with pytest.raises(Busy) as busy:
        conn.proxy(Behave).fail("busy")
    assert busy.value.code is tether.StatusCode.RESOURCE_EXHAUSTED


def test_unexpected_exception_is_internal_without_traceback(conn: tether.Connection) -> None:
    with pytest.raises(tether.RemoteError) as caught:
        conn.proxy(Behave).fail("crash")
    assert caught.value.code is tether.StatusCode.INTERNAL
    assert "secret internal detail" not in str(caught.value)
    assert caught.value.details is None


def test_result_of_the_wrong_type_is_internal(conn: tether.Connection) -> None:
    with pytest.raises(tether.RemoteError) as caught:
        conn.proxy(Behave).bad_result()
    assert caught.value.code is tether.StatusCode.INTERNAL
    assert "declared result type" in caught.value.message


@pytest.mark.parametrize(
    ("arguments", "loc"),
    [
        ({"name": 5}, ["name"]),  # wrong type
        ({}, ["name"]),  # missing
        ({"name": "x", "colour": "red"}, ["colour"]),  # unknown
        ({"name": "x", "times": "many"}, ["times"]),  # wrong type with a default
    ],
)
def test_bad_arguments_are_invalid_argument_with_details(
    conn: tether.Connection, arguments: dict[str, Any], loc: list[str]
) -> None:
    with pytest.raises(tether.RemoteError) as caught:
        conn.call("behave.greet", arguments)
    assert caught.value.code is tether.StatusCode.INVALID_ARGUMENT
    assert [d["loc"] for d in caught.value.details] == [loc]
    assert conn.call("behave.greet", name="ok") == "hello ok!"  # still serving


def test_unknown_service_and_method_are_unimplemented(conn: tether.Connection, kind: str) -> None:
    with pytest.raises(tether.RemoteError) as svc:
        conn.call("nope.greet")
    if kind == "relay":  # no instance subscribes to tether.rpc.nope: no responders
        assert svc.value.code is tether.StatusCode.UNAVAILABLE
        assert "no instance serves nope.greet" in svc.value.message
    else:
        assert svc.value.code is tether.StatusCode.UNIMPLEMENTED
        assert "behave" in svc.value.message  # names what exists
    with pytest.raises(tether.RemoteError) as meth:
        conn.call("behave.nope")
    assert meth.value.code is tether.StatusCode.UNIMPLEMENTED
    assert "greet" in meth.value.message


def test_too_many_positional_arguments_fail_locally(conn: tether.Connection) -> None:
    with pytest.raises(TypeError):
        conn.proxy(Behave).greet("a", "b", "c")  # type: ignore[misc]


def test_expired_deadline(conn: tether.Connection) -> None:
    started = time.monotonic()
    with pytest.raises(tether.DeadlineExceeded):
        conn.proxy(Behave, timeout=0.3).async_sleep(5)
    assert time.monotonic() - started < 3
    assert conn.proxy(Behave).greet("after") == "hello after!"


def test_deadline_on_a_blocking_sync_method(conn: tether.Connection, kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(tether.DeadlineExceeded):
        conn.proxy(Behave, timeout=0.3).sleep(1.0)
    if kind in ("direct", "relay"):  # in-process sync methods run inline: not cut short
        assert time.monotonic() - started < 0.9


def test_deadline_reaches_the_method(conn: tether.Connection) -> None:
    left = conn.proxy(Behave, timeout=2.0).deadline_left()
    assert left is not None and 0 < left <= 2.0


def test_binary_body_size(conn: tether.Connection) -> None:
    assert conn.proxy(Behave).size(b"\x00" * 1000) == 1000


def test_nested_calls_inherit_the_deadline(
    conn: tether.Connection, behaviour_server: ServerProcess
) -> None:
    left = conn.proxy(Behave, timeout=2.0).nested_deadline(behaviour_server.url)
    assert left is not None and 0 < left < 2.0
    started = time.monotonic()
    with pytest.raises(tether.DeadlineExceeded):
        conn.proxy(Behave, timeout=0.5).nested_deadline(behaviour_server.url, sleep=5)
    assert time.monotonic() - started < 2.5


def test_a_method_timeout_caps_the_callers_deadline(conn: tether.Connection) -> None:
    behave = conn.proxy(Behave, timeout=20.0)  # the method's own timeout is 1.5 s
    left = behave.capped_deadline_left()
    assert left is not None and 0 < left <= 1.5
    left = conn.call("behave.capped_deadline_left", timeout=20.0)  # dynamic: the server caps
    assert left is not None and 0 < left <= 1.5
    left = conn.proxy(Behave, timeout=1.0).capped_deadline_left()  # a shorter caller wins
    assert left is not None and 0 < left <= 1.0


def test_the_wire_name_is_the_declared_name(conn: tether.Connection) -> None:
    assert conn.proxy(Behave).python_name() == "called by its wire name"
    assert conn.call("behave.renamed-on-the-wire") == "called by its wire name"
    with pytest.raises(tether.RemoteError) as caught:
        conn.call("behave.python_name")
    assert caught.value.code is tether.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("kind", ["integrated", "direct"])
def test_the_default_timeout_is_30_seconds(kind: str, request: pytest.FixtureRequest) -> None:
    with tether.Client() as client:
        assert client.timeout == 30
        if kind == "integrated":
            conn = client.integrated(behaviour_app)
        else:
            conn = client.connect(request.getfixturevalue("behaviour_server").url)
        left = conn.proxy(Behave).deadline_left()  # the server's view of the deadline
    assert left is not None and 20 < left <= 30


def test_an_oversized_body_is_resource_exhausted(conn: tether.Connection, codec: str) -> None:
    data = b"\x00" * (100 * 1024)  # the behaviour App's limit is 64 KiB
    with pytest.raises(tether.RemoteError) as caught:
        conn.call("behave.size", data=data)
    assert caught.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.http_status == 413
    assert "65536 bytes" in caught.value.message
    if codec == "python":  # no body at all: Python objects, so no limit to apply
        assert conn.proxy(Behave).size(data) == len(data)
    else:
        with pytest.raises(tether.RemoteError) as typed:
            conn.proxy(Behave).size(data)
        assert typed.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    assert conn.proxy(Behave).size(b"\x00" * 1000) == 1000  # still serving


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"name": ', "application/json"),
        (b"\xff\xfe not json", "application/json"),
        (b"\xc1", "application/msgpack"),  # 0xc1 is never valid msgpack
        (b"\x92\x01", "application/msgpack"),  # truncated array
    ],
)
def test_malformed_bodies_are_invalid_argument(
    conn: tether.Connection, body: bytes, content_type: str
) -> None:
    # Straight to the transport: a connection never encodes a malformed body itself.
    headers = {"content-type": content_type, "accept": content_type, TIMEOUT_HEADER: "10000"}
    raw = conn.transport.send("behave", "greet", body, headers, 10.0)
    assert raw.status == 400
    assert raw.content_type.startswith(content_type)  # the error in the caller's codec
    codec = Codec.MSGPACK if "msgpack" in content_type else Codec.JSON
    error = decode_any(raw.body, codec)["error"]
    assert error["code"] == "invalid_argument"
    assert "malformed" in error["message"]
    assert conn.call("behave.greet", name="ok") == "hello ok!"  # still serving
