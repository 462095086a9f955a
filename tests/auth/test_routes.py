"""Every route that needs auth, enumerated from the App, refuses bad credentials."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tether
from tests.auth.asgi import Answer, request
from tests.auth.conftest import PKI
from tests.auth.secured_app import PASSWORD, make_app
from tether.auth import AuthenticationFailed, PermissionDenied, TokenIssuer

T = TypeVar("T")
OPEN = {"/healthz", "/readyz", "/auth/login", "/auth/refresh", "/auth/logout"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tether.App]:
    """The vault App with the jobs API mounted (a job store in ``tmp_path``)."""
    app = make_app(job_store=f"sqlite:///{tmp_path / 'jobs.db'}")
    run(app.startup())
    yield app
    run(app.shutdown())


def protected(app: tether.App) -> list[tuple[str, str]]:
    """Every route of the App but the open ones; path parameters filled in."""
    routes = [(v if v != "*" else "GET", p.replace("/...", "/")) for v, p in app.routes()]
    filled = [
        (v, p.replace("{name}", "echo").replace("{job_id}", "no-such-job")) for v, p in routes
    ]
    return [r for r in filled if r[1] not in OPEN]


def call(app: tether.App, verb: str, path: str, token: str | None = None) -> Answer:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body: dict[str, Any] = {"value": "x"} if path.endswith("/put") else {}
    return run(request(app, verb, path, headers=headers, body=body if verb == "POST" else b""))


def login(app: tether.App, user: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
    answer = run(request(app, "POST", "/auth/login", body={"username": user, "password": password}))
    assert answer.status == 200, answer.body
    return dict(answer.json())


def test_the_app_lists_its_routes(app: tether.App) -> None:
    routes = set(protected(app))
    assert {
        ("GET", "/rpc"),
        ("GET", "/rpc/vault"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/metrics"),
        ("POST", "/rpc/vault/peek"),
        ("POST", "/rpc/vault/put"),
        ("GET", "/auth/whoami"),
        ("GET", "/extra/things"),
        ("POST", "/extra/things"),
        ("POST", "/jobs/"),
        ("POST", "/jobs/claim"),
        ("POST", "/jobs/no-such-job/complete"),
    } <= routes
    assert not {r for r in routes if r[1] in OPEN}


def test_open_routes_need_no_identity(app: tether.App) -> None:
    assert call(app, "GET", "/healthz").status == 200
    assert call(app, "GET", "/readyz").status == 200
    answer = run(
        request(app, "POST", "/auth/login", body={"username": "alice", "password": PASSWORD})
    )
    assert answer.status == 200 and answer.headers["cache-control"] == "no-store"


def test_a_good_token_opens_every_route(app: tether.App) -> None:
    token = login(app)["access_token"]
    for verb, path in protected(app):
        answer = call(app, verb, path, token)
        # Past authentication: 200, or the route's own answer to an empty body
        # or an unknown job (400, 404, 422...), never 401 or 403.
        assert answer.status not in (401, 403), (verb, path, answer.body)
        if not path.startswith("/jobs/"):
            assert answer.status == 200, (verb, path, answer.body)


def test_anonymous_calls_are_refused_everywhere(app: tether.App) -> None:
    routes = protected(app)
    assert ("GET", "/metrics") in routes
    for verb, path in routes:
        answer = call(app, verb, path)
        assert answer.status == 401, (verb, path)
        assert answer.error["code"] == "unauthenticated"
        assert answer.error["details"]["refused"] == "credentials"
        assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "case", ["expired", "audience", "issuer", "signature", "garbage", "scheme"]
)
def test_bad_tokens_are_refused_everywhere(app: tether.App, case: str) -> None:
    assert app.auth is not None
    tokens = app.auth.tokens
    if case == "expired":
        token, _ = tokens.issue("alice", ["vault.read"], now=time.time() - 3600, ttl=60)
        expect = "expired"
    elif case == "audience":
        token, _ = tokens.issue("alice", ["vault.read"], audience="another-app")
        expect = "another audience"
    elif case == "issuer":
        other = TokenIssuer(app.auth.store.signing_key(), issuer="elsewhere", audience="vault")
        token, _ = other.issue("alice", ["vault.read"])
        expect = "another issuer"
    elif case == "signature":
        forged = TokenIssuer(b"not-the-key" * 3, issuer="tether", audience="vault")
        token, _ = forged.issue("alice", ["vault.read", "vault.write"])
        expect = "signature"
    elif case == "garbage":
        token, expect = "not.a.token", "malformed"
    else:
        token, expect = "", "not supported"
    for verb, path in protected(app):
        if case == "scheme":
            answer = run(request(app, verb, path, headers={"authorization": "Basic YTpi"}))
        else:
            answer = call(app, verb, path, token)
        assert answer.status == 401, (case, verb, path)
        assert expect in answer.error["message"]
        assert token not in answer.error["message"] or not token


def test_a_revoked_session_is_refused_everywhere(app: tether.App) -> None:
    tokens = login(app)
    logout = run(
        request(app, "POST", "/auth/logout", body={"refresh_token": tokens["refresh_token"]})
    )
    assert logout.json() == {"revoked": True}
    for verb, path in protected(app):
        answer = call(app, verb, path, tokens["access_token"])
        assert answer.status == 401, (verb, path)
        assert "logged out" in answer.error["message"]
    again = run(
        request(app, "POST", "/auth/refresh", body={"refresh_token": tokens["refresh_token"]})
    )
    assert again.status == 401 and again.error["details"]["refused"] == "refresh_token"


def test_wrong_scopes_are_refused_everywhere(app: tether.App) -> None:
    assert app.auth is not None
    token = app.auth.issue_token("mallory", ["unrelated"])
    checked = 0
    for verb, path in protected(app):
        answer = call(app, verb, path, token)
        if path == "/auth/whoami":  # any identity may ask who it is
            assert answer.status == 200
            continue
        assert answer.status == 403, (verb, path)
        assert answer.error["code"] == "permission_denied"
        assert answer.error["details"]["missing"]
        checked += 1
    assert checked >= 7


def test_metrics_count_the_calls_refused_at_the_door(app: tether.App) -> None:
    """``/metrics`` answers a holder of its route scope, and counts the RPC calls
    that authentication refused before they reached the dispatcher."""
    from prometheus_client.parser import text_string_to_metric_families

    assert call(app, "POST", "/rpc/vault/peek").status == 401
    assert call(app, "POST", "/rpc/vault/peek", "not.a.token").status == 401
    token = login(app)["access_token"]
    assert call(app, "POST", "/rpc/vault/peek", token).status == 200
    answer = call(app, "GET", "/metrics", token)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    counts = {
        (s.labels["method"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(answer.body.decode())
        for s in family.samples
        if s.name == "tether_calls_total"
    }
    assert counts[("peek", "unauthenticated")] == 2 and counts[("peek", "ok")] == 1
    bob = login(app, "bob", "bob-password-123")["access_token"]  # no "metrics" scope
    assert call(app, "GET", "/metrics", bob).status == 403


def test_method_scopes_add_to_service_scopes(app: tether.App) -> None:
    bob = login(app, "bob", "bob-password-123")["access_token"]
    assert call(app, "POST", "/rpc/vault/peek", bob).json() == "gold"
    denied = call(app, "POST", "/rpc/vault/put", bob)
    assert denied.status == 403 and denied.error["details"]["missing"] == ["vault.write"]
    assert denied.error["type"] == "tether.PermissionDenied"


def test_the_method_sees_its_caller(app: tether.App) -> None:
    token = login(app)["access_token"]
    me = call(app, "POST", "/rpc/vault/caller", token).json()
    assert me["subject"] == "alice" and me["method"] == "password"
    assert "vault.write" in me["scopes"]
    assert call(app, "GET", "/auth/whoami", token).json()["subject"] == "alice"


def test_in_process_calls_are_checked_the_same_way(app: tether.App) -> None:
    assert app.auth is not None
    with tether.Client() as client:
        with pytest.raises(AuthenticationFailed) as anonymous:
            client.integrated(app).call("vault.peek")
        assert anonymous.value.refused == "credentials"
        reader = client.integrated(app, token=app.auth.issue_token("bob", ["vault.read"]))
        assert reader.call("vault.peek") == "gold"
        assert reader.call("vault.caller")["subject"] == "bob"
        with pytest.raises(PermissionDenied):
            reader.call("vault.put", value="lead")
        expired = app.auth.tokens.issue("bob", ["vault.read"], now=time.time() - 999, ttl=1)[0]
        with pytest.raises(AuthenticationFailed, match="expired"):
            client.integrated(app, token=expired).call("vault.peek")


def test_an_identity_does_not_leak_into_nested_calls(app: tether.App) -> None:
    """The identity the App sets for an HTTP call is consumed by that call."""
    from tether.auth.authenticator import _http_identity

    token = login(app)["access_token"]
    assert call(app, "POST", "/rpc/vault/peek", token).status == 200
    assert _http_identity.get() is None


def test_client_certificates_map_to_identities(app: tether.App, pki: PKI) -> None:
    robot = pki.robot[0].read_text()
    answer = run(request(app, "POST", "/rpc/vault/caller", body={}, client_cert_pem=robot))
    assert answer.status == 200
    assert answer.json()["subject"] == "robot.example.org"
    assert answer.json()["method"] == "certificate"
    stranger = pki.stranger[0].read_text()
    refused = run(request(app, "POST", "/rpc/vault/peek", body={}, client_cert_pem=stranger))
    assert refused.status == 401 and refused.error["details"]["refused"] == "certificate"
    assert "stranger.example.org" in refused.error["message"]
