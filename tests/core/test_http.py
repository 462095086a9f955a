"""The HTTP face, byte by byte: bad input gets the right status and code, and
the server goes on serving."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from typing import Any

import ormsgpack
import pytest
from openapi_spec_validator import validate

from tests.fixtures.servers import ServerProcess


def request(
    server: ServerProcess,
    verb: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(verb, path, body, headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post_json(server: ServerProcess, path: str, payload: bytes, **headers: str) -> tuple[int, Any]:
    status, _, body = request(
        server, "POST", path, payload, {"content-type": "application/json", **headers}
    )
    return status, json.loads(body)


def assert_still_serving(server: ServerProcess) -> None:
    status, body = post_json(server, "/rpc/behave/greet", b'{"name": "still"}')
    assert (status, body) == (200, "hello still!")


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
    behaviour_server: ServerProcess, body: bytes, content_type: str
) -> None:
    status, headers, raw = request(
        behaviour_server, "POST", "/rpc/behave/greet", body, {"content-type": content_type}
    )
    assert status == 400
    decoded = ormsgpack.unpackb(raw) if "msgpack" in headers["content-type"] else json.loads(raw)
    assert decoded["error"]["code"] == "invalid_argument"
    assert "malformed" in decoded["error"]["message"]
    assert_still_serving(behaviour_server)


def test_body_that_is_not_an_object(behaviour_server: ServerProcess) -> None:
    status, body = post_json(behaviour_server, "/rpc/behave/greet", b'["ann"]')
    assert status == 400
    assert body["error"]["code"] == "invalid_argument"


def test_oversized_body_gets_413(behaviour_server: ServerProcess) -> None:
    payload = json.dumps({"data": "A" * (200 * 1024)}).encode()  # limit is 64 KiB
    status, body = post_json(behaviour_server, "/rpc/behave/size", payload)
    assert status == 413
    assert body["error"]["code"] == "resource_exhausted"
    assert "65536 bytes" in body["error"]["message"]
    assert_still_serving(behaviour_server)


def test_unsupported_media_types(behaviour_server: ServerProcess) -> None:
    status, _, raw = request(
        behaviour_server, "POST", "/rpc/behave/greet", b"name=x", {"content-type": "text/csv"}
    )
    assert status == 415
    assert json.loads(raw)["error"]["code"] == "invalid_argument"
    status, _ = post_json(
        behaviour_server, "/rpc/behave/greet", b'{"name": "x"}', accept="text/html"
    )
    assert status == 406


def test_accept_chooses_the_response_codec(behaviour_server: ServerProcess) -> None:
    status, headers, raw = request(
        behaviour_server,
        "POST",
        "/rpc/behave/greet",
        b'{"name": "m"}',
        {"content-type": "application/json", "accept": "application/msgpack"},
    )
    assert status == 200
    assert headers["content-type"] == "application/msgpack"
    assert ormsgpack.unpackb(raw) == "hello m!"


def test_wrong_verbs_and_routes(behaviour_server: ServerProcess) -> None:
    status, _, raw = request(behaviour_server, "GET", "/rpc/behave/greet")
    assert status == 405
    status, _, raw = request(behaviour_server, "DELETE", "/rpc")
    assert status == 405
    status, _, raw = request(behaviour_server, "GET", "/nothing/here")
    assert status == 404
    assert json.loads(raw)["error"]["code"] == "not_found"
    status, body = post_json(behaviour_server, "/rpc/nope/greet", b"{}")
    assert (status, body["error"]["code"]) == (404, "unimplemented")


def test_deadline_header(behaviour_server: ServerProcess) -> None:
    status, body = post_json(
        behaviour_server, "/rpc/behave/greet", b'{"name": "x"}', **{"tether-timeout-ms": "0"}
    )
    assert (status, body["error"]["code"]) == (504, "deadline_exceeded")
    status, body = post_json(
        behaviour_server,
        "/rpc/behave/async_sleep",
        b'{"seconds": 5}',
        **{"tether-timeout-ms": "200"},
    )
    assert (status, body["error"]["code"]) == (504, "deadline_exceeded")
    for bad in ("soon", "9" * 400, "-5", "1_000", "1e3", "+7"):
        status, body = post_json(
            behaviour_server, "/rpc/behave/greet", b'{"name": "x"}', **{"tether-timeout-ms": bad}
        )
        assert (status, body["error"]["code"]) == (400, "invalid_argument"), bad
        assert "whole number of milliseconds" in body["error"]["message"]
    assert_still_serving(behaviour_server)


def test_a_method_timeout_applies_without_a_header(behaviour_server: ServerProcess) -> None:
    status, left = post_json(behaviour_server, "/rpc/behave/capped_deadline_left", b"{}")
    assert status == 200 and 0 < left <= 1.5  # the method's own 1.5 s
    status, left = post_json(behaviour_server, "/rpc/behave/deadline_left", b"{}")
    assert (status, left) == (200, None)  # no header, no method timeout: no deadline


def test_refusals_before_dispatch_answer_in_the_negotiated_codec(
    behaviour_server: ServerProcess,
) -> None:
    payload = ormsgpack.packb({"data": b"A" * (200 * 1024)})  # the limit is 64 KiB
    status, headers, raw = request(
        behaviour_server,
        "POST",
        "/rpc/behave/size",
        payload,
        {"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert status == 413
    assert headers["content-type"] == "application/msgpack"
    assert ormsgpack.unpackb(raw)["error"]["code"] == "resource_exhausted"
    status, headers, raw = request(  # JSON in, msgpack asked for
        behaviour_server,
        "POST",
        "/rpc/behave/size",
        json.dumps({"data": "A" * (200 * 1024)}).encode(),
        {"content-type": "application/json", "accept": "application/msgpack"},
    )
    assert (status, headers["content-type"]) == (413, "application/msgpack")
    assert_still_serving(behaviour_server)


def test_error_status_mapping_follows_connect(behaviour_server: ServerProcess) -> None:
    for kind, status_code, code in [
        ("missing", 404, "not_found"),
        ("busy", 429, "resource_exhausted"),
        ("crash", 500, "internal"),
        ("server_only", 400, "failed_precondition"),
    ]:
        status, body = post_json(
            behaviour_server, "/rpc/behave/fail", json.dumps({"kind": kind}).encode()
        )
        assert (status, body["error"]["code"]) == (status_code, code), kind
    assert body["error"]["type"] == "tests.ServerOnlyError"


def test_request_id_is_echoed(behaviour_server: ServerProcess) -> None:
    _, headers, _ = request(
        behaviour_server,
        "POST",
        "/rpc/behave/greet",
        b'{"name": "x"}',
        {"content-type": "application/json", "tether-request-id": "abc123"},
    )
    assert headers["tether-request-id"] == "abc123"


def test_description_lists_services_with_schemas(behaviour_server: ServerProcess) -> None:
    status, _, raw = request(behaviour_server, "GET", "/rpc")
    assert status == 200
    description = json.loads(raw)
    services = {s["name"]: s for s in description["services"]}
    assert set(services) == {"types", "behave"}
    greet = next(m for m in services["behave"]["methods"] if m["name"] == "greet")
    assert greet["parameters"]["required"] == ["name"]
    assert greet["parameters"]["properties"]["punctuation"]["default"] == "!"
    assert greet["result"] == {"type": "string"}
    assert greet["doc"] == "Keyword-only parameters and defaults."
    assert services["behave"]["errors"][0]["type"] == "Missing"
    status, _, raw = request(behaviour_server, "GET", "/rpc/behave")
    assert status == 200 and json.loads(raw)["version"] == "2"


def test_openapi_document_is_valid_openapi_3_1(behaviour_server: ServerProcess) -> None:
    status, _, raw = request(behaviour_server, "GET", "/openapi.json")
    assert status == 200
    document = json.loads(raw)
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert "/rpc/behave/greet" in document["paths"]
    assert "/rpc/types/echo_model" in document["paths"]
    assert "Port" in document["components"]["schemas"]
    status, headers, page = request(behaviour_server, "GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/openapi.json" in page


def test_health_endpoints(behaviour_server: ServerProcess) -> None:
    status, _, raw = request(behaviour_server, "GET", "/healthz")
    assert status == 200 and json.loads(raw)["status"] == "live"
    status, _, raw = request(behaviour_server, "GET", "/readyz")
    assert status == 200 and json.loads(raw)["status"] == "ready"


@pytest.mark.skipif(shutil.which("curl") is None, reason="the curl program is not installed")
def test_curl_gets_a_device(inventory_server: ServerProcess) -> None:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-d",
            '{"name": "r1"}',
            "-H",
            "content-type: application/json",
            f"{inventory_server.url}/rpc/inventory/get",
        ],
        capture_output=True,
        check=True,
        timeout=20,
    ).stdout
    device = json.loads(out)
    assert device["name"] == "r1" and device["platform"] == "iosxe"
    # curl's default form content type is read as JSON too.
    out = subprocess.run(
        ["curl", "-s", "-d", '{"name": "nope"}', f"{inventory_server.url}/rpc/inventory/get"],
        capture_output=True,
        check=True,
        timeout=20,
    ).stdout
    assert json.loads(out)["error"]["type"] == "NotFound"
