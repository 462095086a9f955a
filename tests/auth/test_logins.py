"""Logins, refresh rotation, logout, rate limits; no secret in logs or messages."""

from __future__ import annotations

import asyncio
import logging

import pytest

import tether
from tests.auth.asgi import Answer, request
from tests.auth.secured_app import PASSWORD, make_app
from tests.auth.test_routes import run


class FakeClock:
    """Monotonic seconds that only move when told (the limiter's refill)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(app: tether.App, user: str, password: str, address: str = "10.0.0.1") -> Answer:
    return run(
        request(
            app,
            "POST",
            "/auth/login",
            client=address,
            body={"username": user, "password": password},
        )
    )


def refresh(app: tether.App, token: str) -> Answer:
    return run(request(app, "POST", "/auth/refresh", body={"refresh_token": token}))


@pytest.fixture
def app() -> tether.App:
    return make_app()


def test_login_errors_say_what_was_refused(app: tether.App) -> None:
    unknown = attempt(app, "nobody", "whatever")
    assert unknown.status == 401 and unknown.error["details"]["refused"] == "user"
    wrong = attempt(app, "alice", "not-her-password")
    assert wrong.status == 401 and wrong.error["details"]["refused"] == "password"
    assert wrong.error["type"] == "tether.AuthenticationFailed"
    missing = run(request(app, "POST", "/auth/login", body={"username": "alice"}))
    assert missing.error["details"]["refused"] == "password"


def test_login_takes_a_form_too(app: tether.App) -> None:
    form = f"grant_type=password&username=alice&password={PASSWORD}".encode()
    answer = run(
        request(
            app,
            "POST",
            "/auth/login",
            body=form,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    )
    assert answer.status == 200 and answer.json()["token_type"] == "Bearer"


def test_refresh_rotates_and_reuse_revokes_the_family(app: tether.App) -> None:
    first = attempt(app, "alice", PASSWORD).json()
    second = refresh(app, first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    third = refresh(app, second["refresh_token"]).json()
    # The first refresh token comes back (stolen and replayed): refused, family revoked.
    replay = refresh(app, first["refresh_token"])
    assert replay.status == 401 and "already used" in replay.error["message"]
    after = refresh(app, third["refresh_token"])
    assert after.status == 401 and after.error["details"]["refused"] == "refresh_token"
    for token in (second["access_token"], third["access_token"]):
        peek = run(
            request(
                app,
                "POST",
                "/rpc/vault/peek",
                body={},
                headers={"authorization": f"Bearer {token}"},
            )
        )
        assert peek.status == 401


def test_refresh_follows_the_users_scopes(app: tether.App) -> None:
    assert app.auth is not None
    tokens = attempt(app, "bob", "bob-password-123").json()
    assert tokens["scope"] == "vault.read"
    app.auth.store.add_user("bob", "bob-password-123", ["vault.read", "vault.write"])
    assert refresh(app, tokens["refresh_token"]).json()["scope"] == "vault.read vault.write"
    again = attempt(app, "bob", "bob-password-123").json()
    app.auth.store.remove_user("bob")
    gone = refresh(app, again["refresh_token"])
    assert gone.status == 401 and gone.error["details"]["refused"] in ("user", "refresh_token")


def test_logout_with_the_access_token_alone(app: tether.App) -> None:
    tokens = attempt(app, "alice", PASSWORD).json()
    bearer = {"authorization": f"Bearer {tokens['access_token']}"}
    out = run(request(app, "POST", "/auth/logout", headers=bearer, body={}))
    assert out.json() == {"revoked": True}
    assert refresh(app, tokens["refresh_token"]).status == 401


def test_password_guessing_is_limited_per_user() -> None:
    clock = FakeClock()
    app = make_app(clock=clock)
    for i in range(5):  # from five addresses: the user's own bucket empties
        assert attempt(app, "alice", f"guess-{i}", f"10.0.0.{i}").status == 401
    limited = attempt(app, "alice", PASSWORD, "10.9.9.9")  # even the right password waits
    assert limited.status == 429 and limited.error["code"] == "resource_exhausted"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.error["details"]["retry_after"] == int(limited.headers["retry-after"])
    assert attempt(app, "bob", "bob-password-123", "10.0.0.1").status == 200  # others may
    clock.now += 12  # 60 s / 5 attempts: one attempt back
    assert attempt(app, "alice", PASSWORD, "10.9.9.9").status == 200


def test_concurrent_guesses_do_not_outrun_the_limit() -> None:
    """Thirty guesses at once: five passwords are checked, the rest wait."""
    app = make_app(clock=FakeClock())

    async def burst() -> list[Answer]:
        guesses = [
            request(
                app,
                "POST",
                "/auth/login",
                client=f"10.1.0.{i}",
                body={"username": "alice", "password": f"guess-{i}"},
            )
            for i in range(30)
        ]
        return await asyncio.gather(*guesses)

    statuses = sorted(answer.status for answer in run(burst()))
    assert statuses == [401] * 5 + [429] * 25


def test_password_guessing_is_limited_per_address() -> None:
    clock = FakeClock()
    app = make_app(clock=clock)
    for i in range(20):  # twenty different users from one address
        assert attempt(app, f"user{i}", "guess", "192.0.2.7").status == 401
    assert attempt(app, "alice", PASSWORD, "192.0.2.7").status == 429
    assert attempt(app, "alice", PASSWORD, "192.0.2.8").status == 200
    clock.now += 3  # 60 s / 20 attempts
    assert attempt(app, "alice", PASSWORD, "192.0.2.7").status == 200


def test_no_secret_in_logs_or_messages(app: tether.App, caplog: pytest.LogCaptureFixture) -> None:
    """Drive every path that handles a secret; none appears in a log record or answer."""
    assert app.auth is not None
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [PASSWORD, "wrong-" + PASSWORD, "bob-password-123"]
    answers: list[Answer] = []
    answers.append(attempt(app, "alice", secrets[1]))
    tokens = attempt(app, "alice", PASSWORD).json()
    secrets += [tokens["access_token"], tokens["refresh_token"]]
    new = refresh(app, tokens["refresh_token"]).json()
    secrets += [new["access_token"], new["refresh_token"]]
    answers.append(refresh(app, tokens["refresh_token"]))  # reuse
    expired, _ = app.auth.tokens.issue("alice", [], now=1.0, ttl=1)
    key = app.auth.store.add_api_key("ci", ["vault.read"])
    secrets += [expired, key, key[:-4] + "AAAA"]
    for token in (expired, key[:-4] + "AAAA", tokens["access_token"], "x" + new["access_token"]):
        answers.append(
            run(
                request(
                    app,
                    "POST",
                    "/rpc/vault/peek",
                    body={},
                    headers={"authorization": f"Bearer {token}"},
                )
            )
        )
    answers.append(run(request(app, "GET", "/rpc", headers={"authorization": f"Bearer {key}x"})))
    with tether.Client() as client:
        for token in (expired, key + "x"):
            with pytest.raises(tether.TetherError) as raised:
                client.integrated(app, token=token).call("vault.peek")
            text = f"{raised.value} {raised.value.details} {raised.value!r}"
            assert not [s for s in secrets if s in text]
    assert all(a.status in (401, 403) for a in answers)
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "login refused" in logged  # the failures are logged, without the secrets
    for secret in secrets:
        assert secret not in logged
        for answer in answers:
            assert secret.encode() not in answer.body


def test_reprs_hide_secrets() -> None:
    from tether.auth import TokenIssuer
    from tether.client.auth import StaticAuth

    assert "k3y" not in repr(TokenIssuer(b"k3y-k3y-k3y", issuer="i", audience="a"))
    assert "tok3n" not in repr(StaticAuth("tok3n"))
