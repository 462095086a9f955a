"""The auth building blocks on their own: keys, passwords, store, tokens, limits, files."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from tests.auth.conftest import PKI
from tether.auth import (
    AuthenticationFailed,
    CredentialStore,
    Limit,
    LoginLimiter,
    TokenIssuer,
    TooManyAttempts,
    apikeys,
    certificate_name,
    fast_hasher,
)
from tether.auth.passwords import hash_password, needs_rehash, verify_password
from tether.client.credentials import CredentialsFile, server_key
from tether.client.tls import client_context, fingerprint, normalise_pin


def test_api_keys_are_random_and_stored_as_digests(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "auth.db")
    key = store.add_api_key("ci", ["a", "b"], expires_in=60)
    assert key.startswith("tak_") and len(key) > 50
    assert store.check_api_key(key).subject == "ci"
    raw = (tmp_path / "auth.db").read_bytes() + (tmp_path / "auth.db-wal").read_bytes()
    assert key.encode() not in raw and apikeys.digest(key).encode() in raw
    assert stat.S_IMODE(os.stat(tmp_path / "auth.db").st_mode) == 0o600
    for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), "tak_123", "nonsense"):
        with pytest.raises(AuthenticationFailed) as refused:
            store.check_api_key(bad)
        assert refused.value.refused == "api_key"
    assert store.revoke_api_key(key)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        store.check_api_key(key)
    old = store.add_api_key("ci", [], expires_in=-1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        store.check_api_key(old)


def test_passwords_use_argon2id() -> None:
    hasher = fast_hasher()
    stored = hash_password("pw-1", hasher)
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "pw-1", hasher)
    assert not verify_password(stored, "pw-2", hasher)
    assert not verify_password("not a hash", "pw-1", hasher)
    assert needs_rehash(stored)  # the defaults are stronger than the test parameters
    assert stored != hash_password("pw-1", hasher)  # salted
    with pytest.raises(ValueError):
        hash_password("", hasher)


def test_users_and_the_signing_key_persist(tmp_path: Path) -> None:
    first = CredentialStore(tmp_path / "auth.db", hasher=fast_hasher())
    first.add_user("alice", "the-password-of-alice", ["x"])
    key = first.signing_key()
    second = CredentialStore(tmp_path / "auth.db")
    user = second.user("alice")
    assert user is not None and user.scopes == {"x"}
    assert "the-password-of-alice" not in user.password_hash
    assert second.signing_key() == key and len(key) == 32
    assert second.users() == ["alice"]
    assert second.user("bob") is None


def test_refresh_rotation_is_atomic_across_threads(tmp_path: Path) -> None:
    """Eight threads spend one refresh token at once: one wins, the family is revoked."""
    store = CredentialStore(tmp_path / "auth.db")
    _, token = store.start_session("alice", ["x"], "password", 3600)
    wins: list[str] = []
    losses: list[str] = []

    def spend() -> None:
        try:
            wins.append(store.rotate(token)[1])
        except AuthenticationFailed as exc:
            losses.append(exc.message)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    with pytest.raises(AuthenticationFailed):
        store.rotate(wins[0])  # the reuse revoked the whole family


def test_expired_sessions_are_refused(tmp_path: Path) -> None:
    store = CredentialStore(":memory:")
    session, token = store.start_session("alice", ["x"], "password", -1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        store.rotate(token)
    assert store.session_revoked(session.family)


def test_access_tokens_carry_the_claims() -> None:
    issuer = TokenIssuer(b"k" * 32, issuer="me", audience="api", ttl=60)
    token, expires = issuer.issue("alice", ["b", "a"], method="password", session="s1")
    identity = issuer.verify(token)
    assert identity.subject == "alice" and identity.scopes == {"a", "b"}
    assert identity.method == "password" and identity.session == "s1"
    assert identity.expires_at == expires and time.time() < expires <= time.time() + 61
    assert {"iss", "aud", "exp", "iat", "nbf", "jti"} <= set(identity.claims)
    other, _ = issuer.issue("alice", [])
    assert issuer.verify(other).claims["jti"] != identity.claims["jti"]
    lenient = TokenIssuer(b"k" * 32, issuer="me", audience="api", leeway=120)
    late, _ = issuer.issue("alice", [], now=time.time() - 100, ttl=30)
    assert lenient.verify(late).subject == "alice"
    with pytest.raises(AuthenticationFailed, match="expired"):
        issuer.verify(late)


def test_the_limiter_is_a_token_bucket() -> None:
    now = [0.0]
    limiter = LoginLimiter(Limit(2, 10.0), Limit(100, 10.0), clock=lambda: now[0])
    limiter.reserve("u", "a")
    limiter.refund("u", "a")  # a right password costs nothing
    limiter.reserve("u", "a")
    limiter.reserve("u", "a")
    with pytest.raises(TooManyAttempts) as limited:
        limiter.reserve("u", "a")
    assert limited.value.details == {"retry_after": 5}
    now[0] = 5.0  # 2 per 10 s: one back after 5 s
    limiter.reserve("u", "a")
    with pytest.raises(TooManyAttempts):
        limiter.reserve("u", None)
    limiter.refund("u", None)
    limiter.refund("u", None)
    limiter.refund("u", None)  # never above full
    limiter.reserve("u", None)
    limiter.reserve("u", None)
    with pytest.raises(TooManyAttempts):
        limiter.reserve("u", None)
    with pytest.raises(ValueError):
        Limit(0, 1.0)


def test_certificate_names(pki: PKI) -> None:
    name = certificate_name(pki.robot[0].read_text())
    assert name.subject == "robot.example.org"
    assert "robot.example.org" in name.alternative_names
    assert name.sha256 == fingerprint(pki.robot[0])
    with pytest.raises(AuthenticationFailed) as refused:
        certificate_name(b"not a certificate")
    assert refused.value.refused == "certificate"


def test_pins_and_contexts(pki: PKI) -> None:
    pin = fingerprint(pki.server_cert)
    assert normalise_pin(":".join(pin[i : i + 2].upper() for i in range(0, 64, 2))) == pin
    with pytest.raises(ValueError):
        normalise_pin("abc")
    pinned = client_context(pin_sha256=pin)
    assert pinned.verify_mode.name == "CERT_NONE" and not pinned.check_hostname
    both = client_context(ca=pki.ca, pin_sha256=pin, cert=pki.robot)
    assert both.verify_mode.name == "CERT_REQUIRED" and both.check_hostname


def test_credentials_file_is_private_and_atomic(tmp_path: Path) -> None:
    file = CredentialsFile(tmp_path / "sub" / "credentials.json")
    assert file.get("https://h:1") is None
    file.put("https://H:1/", {"access_token": "a"})
    assert file.get("https://h:1") == {"access_token": "a"}
    assert server_key("https://example.org/api/") == "https://example.org:443/api"
    assert stat.S_IMODE(os.stat(file.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(file.path.parent).st_mode) == 0o700
    file.update("https://h:1", lambda old: {**(old or {}), "refresh_token": "r"})
    assert json.loads(file.path.read_text())["servers"]["https://h:1"]["refresh_token"] == "r"
    assert file.remove("https://h:1") and not file.remove("https://h:1")
    assert [p.name for p in file.path.parent.iterdir() if p.suffix == ".tmp"] == []
    file.path.write_text("{ torn")
    assert file.read() == {}  # an unreadable file reads as empty, and is replaced on write
    file.put("http://x:2", {"api_key": "k"})
    assert file.get("http://x:2") == {"api_key": "k"}
