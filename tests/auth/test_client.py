"""The client's credentials: password logins, renewal, the shared credentials file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tests.auth.conftest import ALICE_PASSWORD, PKI, SecureServer
from tests.fixtures.servers import ROOT
from tether.auth import AuthenticationFailed, PermissionDenied
from tether.client.credentials import CredentialsFile
from tether.settings import Settings

REFRESHER = """
import sys, tether
from tether.settings import Settings
settings = Settings(credentials_path=sys.argv[1], tls_ca_bundle=sys.argv[2],
                    token_refresh_margin=1e9)  # every call renews its token first
with tether.Client(settings=settings) as client:
    inventory = client.connect(sys.argv[3])
    for _ in range(int(sys.argv[4])):
        assert inventory.call("inventory.get", name="r1")["name"] == "r1"
"""


def settings_for(tmp_path: Path, pki: PKI, **more: object) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        credentials_path=tmp_path / "creds.json",
        tls_ca_bundle=pki.ca,
        **more,
    )


def test_a_password_login_keeps_tokens_in_the_file(
    tmp_path: Path, pki: PKI, secure: SecureServer
) -> None:
    settings = settings_for(tmp_path, pki)
    with tether.Client(settings=settings) as client:
        inventory = client.connect(secure.url, username="alice", password=ALICE_PASSWORD)
        assert inventory.call("inventory.get", name="r1")["name"] == "r1"
    path = settings.effective_credentials_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entry = CredentialsFile(path).get(secure.url)
    assert entry is not None and entry["username"] == "alice"
    assert entry["access_token"] and entry["refresh_token"].startswith("trt_")
    assert ALICE_PASSWORD not in path.read_text()
    with tether.Client(settings=settings) as client:  # a later client: the stored tokens
        assert client.connect(secure.url).call("inventory.get", name="r1")["name"] == "r1"


def test_a_401_renews_once(tmp_path: Path, pki: PKI, secure: SecureServer) -> None:
    settings = settings_for(tmp_path, pki)
    file = CredentialsFile(settings.effective_credentials_path)
    with tether.Client(settings=settings) as client:
        client.connect(secure.url, username="alice", password=ALICE_PASSWORD).call("inventory.list")
    # The server refuses the stored access token (as after a key change): refresh, retry.
    file.update(secure.url, lambda e: {**(e or {}), "access_token": "eyJ0.eyJ0.broken"})
    with tether.Client(settings=settings) as client:
        assert client.connect(secure.url).call("inventory.get", name="r2")["name"] == "r2"
    entry = file.get(secure.url)
    assert entry is not None and entry["access_token"] != "eyJ0.eyJ0.broken"
    # Both tokens refused and no password to log in again with: say so.
    file.update(
        secure.url,
        lambda e: {**(e or {}), "access_token": "eyJ0.eyJ0.broken", "refresh_token": "trt_unknown"},
    )
    with tether.Client(settings=settings) as client, pytest.raises(AuthenticationFailed) as exc:
        client.connect(secure.url).call("inventory.list")
    assert exc.value.refused == "password" and "no password" in exc.value.message


def test_no_credentials_and_wrong_scopes(tmp_path: Path, pki: PKI, secure: SecureServer) -> None:
    settings = settings_for(tmp_path, pki)
    with tether.Client(settings=settings) as client:
        with pytest.raises(AuthenticationFailed) as anonymous:
            client.connect(secure.url).call("inventory.list")
        assert anonymous.value.refused == "credentials"
        reader = client.connect(secure.url, api_key=secure.read_only_key)
        assert reader.call("inventory.list")
        with pytest.raises(PermissionDenied) as denied:
            reader.call("inventory.remove", name="r1")
        assert denied.value.details == {"missing": ["inventory.write"]}


def test_two_processes_refreshing_at_once(tmp_path: Path, pki: PKI, secure: SecureServer) -> None:
    """Each of two processes renews its token before each of 12 calls, at the same time.

    Rotation makes a refresh token single-use, so without the lock and the
    re-read both would spend the same one and the server would revoke the
    session; with them every call succeeds and the file stays whole.
    """
    settings = settings_for(tmp_path, pki)
    path = settings.effective_credentials_path
    with tether.Client(settings=settings) as client:
        client.connect(secure.url, username="alice", password=ALICE_PASSWORD).call("inventory.list")
    script = tmp_path / "refresher.py"
    script.write_text(REFRESHER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(pki.ca), secure.url, "12"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    data = json.loads(path.read_text())
    assert list(data["servers"]) == [f"{secure.url}"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with tether.Client(settings=settings) as client:  # the session survived
        assert client.connect(secure.url).call("inventory.get", name="r1")["name"] == "r1"


def test_conflicting_credentials_are_refused(tmp_path: Path, pki: PKI) -> None:
    with tether.Client(settings=settings_for(tmp_path, pki)) as client:
        with pytest.raises(ValueError, match="one of"):
            client.connect("https://127.0.0.1:1", token="t", api_key="k")
        with pytest.raises(ValueError, match="needs username"):
            client.connect("https://127.0.0.1:1", password="p")


def test_the_async_client_logs_in_renews_pins_and_presents_certificates(
    tmp_path: Path, pki: PKI, secure: SecureServer
) -> None:
    """The same credentials through AsyncClient (aiohttp): password, 401 renewal,
    a pinned server certificate, and a client certificate under mutual TLS."""
    import asyncio

    from tether.client.tls import fingerprint

    settings = settings_for(tmp_path, pki)
    file = CredentialsFile(settings.effective_credentials_path)
    pin = fingerprint(pki.server_cert)

    async def scenario() -> None:
        async with tether.AsyncClient(settings=settings) as client:
            logged = client.connect(secure.url, username="alice", password=ALICE_PASSWORD)
            assert (await logged.call("inventory.get", name="r1"))["name"] == "r1"
        file.update(secure.url, lambda e: {**(e or {}), "access_token": "eyJ0.eyJ0.broken"})
        async with tether.AsyncClient(settings=settings) as client:
            assert (await client.connect(secure.url).call("inventory.get", name="r2"))[
                "name"
            ] == "r2"
            pinned = client.connect(secure.url, api_key=secure.read_only_key, pin_sha256=pin)
            assert await pinned.call("inventory.list")
            with pytest.raises(tether.Unavailable, match="pinned"):
                await client.connect(
                    secure.url, api_key=secure.read_only_key, pin_sha256="ab" * 32
                ).call("inventory.list")
            robot = client.connect(secure.url, cert=pki.robot, ca=pki.ca)
            assert (await robot.call("inventory.get", name="sw1"))["name"] == "sw1"
            with pytest.raises(PermissionDenied):
                await robot.call("inventory.remove", name="sw1")

    asyncio.run(scenario())
    entry = file.get(secure.url)
    assert entry is not None and entry["access_token"] != "eyJ0.eyJ0.broken"


class SlowRenewal:
    """Credentials refused once; renewing them takes ``renewal`` seconds."""

    def __init__(self, good: str, renewal: float) -> None:
        self.token, self.good, self.renewal, self.renewals = "refused", good, renewal, 0

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def fresh(self) -> bool:
        return True

    def on_unauthorized(self) -> bool:
        import time

        time.sleep(self.renewal)
        self.renewals += 1
        self.token = self.good
        return True


@pytest.mark.parametrize("kind", ["direct", "integrated"])
def test_renewing_after_a_401_fits_in_the_calls_deadline(
    kind: str, tmp_path: Path, pki: PKI, secure: SecureServer
) -> None:
    """A renewal that uses up the deadline ends the call with the 401; one that
    leaves time resends with what is left."""
    from tests.auth.secured_app import make_app
    from tether.client.connection import Connection

    settings = settings_for(tmp_path, pki)
    with tether.Client(settings=settings) as client:
        if kind == "direct":
            base = client.connect(secure.url)
            good = secure.read_only_key
            method = "inventory.list"
        else:
            app = make_app()
            assert app.auth is not None
            base = client.integrated(app)
            good = app.auth.issue_token("bob", ["vault.read"])
            method = "vault.peek"
        slow = SlowRenewal(good, renewal=2.5)
        late = Connection(base.transport, base.target, timeout=2.0, auth=slow)
        with pytest.raises(AuthenticationFailed):
            late.call(method)
        assert slow.renewals == 1
        quick = SlowRenewal(good, renewal=0.05)
        in_time = Connection(base.transport, base.target, timeout=5, auth=quick)
        assert in_time.call(method)


BACKGROUND = """
import sys
from tether.auth import AuthenticationFailed
from tether.client.auth import resolve
from tether.settings import Settings
settings = Settings(credentials_path=sys.argv[1], tls_ca_bundle=sys.argv[2])
auth, _ = resolve(sys.argv[3], settings, interactive=sys.argv[4] == "yes")
auth.headers()  # the stored (broken) access token, as the first call sends it
try:
    auth.on_unauthorized()  # the server refused it: refresh, else log in again
except AuthenticationFailed as exc:
    print("refused:", exc.refused, exc.message)
"""


@pytest.mark.parametrize("interactive", ["yes", "no"])
def test_background_sessions_never_ask_for_a_password(
    interactive: str, tmp_path: Path, pki: PKI, secure: SecureServer
) -> None:
    """On a terminal, an ended session asks for the password again, unless the
    session is a worker's (``interactive=False``): that one fails at once."""
    import pexpect

    settings = settings_for(tmp_path, pki)
    file = CredentialsFile(settings.effective_credentials_path)
    with tether.Client(settings=settings) as client:
        client.connect(secure.url, username="alice", password=ALICE_PASSWORD).call("inventory.list")
    file.update(
        secure.url,
        lambda e: {**(e or {}), "access_token": "eyJ0.eyJ0.broken", "refresh_token": "trt_gone"},
    )
    script = tmp_path / "background.py"
    script.write_text(BACKGROUND)
    path, ca = str(settings.effective_credentials_path), str(pki.ca)
    child = pexpect.spawn(
        sys.executable,
        [str(script), path, ca, secure.url, interactive],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        encoding="utf-8",
        timeout=60,
    )
    try:
        if interactive == "yes":
            child.expect("password for alice")
            child.sendline(ALICE_PASSWORD)
            child.expect(pexpect.EOF)
            assert "refused" not in str(child.before)
        else:
            child.expect(pexpect.EOF)
            shown = str(child.before)
            assert "password for" not in shown
            assert "refused: password" in shown and "asking is off" in shown
    finally:
        child.close()
