"""The README's Security walk-throughs, run against `tether serve` over TLS.

The commands run as the README shows them, from the directory holding the
certificates (the trustme PKI), with only the port changed. Commands that ask
for a password run on a pseudo-terminal (pexpect), where they prompt for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

import tether
from tests.auth.conftest import PKI, SecureServer, TLSServer
from tether.auth import AuthenticationFailed, PermissionDenied
from tether.settings import Settings

CAROL_PASSWORD = "walk-the-line-42"
TETHER = shutil.which("tether", path=str(Path(sys.executable).parent)) or "tether"


def tether_tty(
    args: list[str], env: dict[str, str], cwd: Path, prompts: list[tuple[str, str]]
) -> tuple[int, str]:
    """Run the ``tether`` command on a pseudo-terminal, answering ``prompts``
    (a regular expression to wait for, the line to type) in order.

    Returns:
        The exit status and everything the command printed.
    """
    child = pexpect.spawn(TETHER, args, env=env, cwd=str(cwd), encoding="utf-8", timeout=60)
    try:
        for pattern, answer in prompts:
            child.expect(pattern)
            child.sendline(answer)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return int(child.exitstatus if child.exitstatus is not None else -1), str(child.before)


def tether_cli(
    args: list[str], env: dict[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(client_env: dict[str, str], secure: SecureServer) -> dict[str, str]:
    """A shell's environment: the server's auth store is the default store."""
    return {**client_env, "TETHER_AUTH_STORE_PATH": str(secure.store_path)}


@pytest.fixture
def client(tmp_path: Path, pki: PKI, monkeypatch: pytest.MonkeyPatch) -> tether.Client:
    monkeypatch.chdir(pki.dir)  # "ca.pem", "robot.pem" as the README writes them
    return tether.Client(settings=Settings(state_dir=tmp_path / "py-state"))


def test_1_a_user_with_a_password(
    env: dict[str, str], pki: PKI, secure: SecureServer, client: tether.Client
) -> None:
    url = secure.url
    status, shown = tether_tty(
        ["auth", "add-user", "carol", "--scope", "inventory.read", "--scope", "inventory.write"],
        env,
        pki.dir,
        [("password for carol", CAROL_PASSWORD), ("again", CAROL_PASSWORD)],
    )
    assert status == 0, shown
    status, shown = tether_tty(
        ["login", url, "--username", "carol", "--ca", "ca.pem"],
        env,
        pki.dir,
        [(f"password for carol at {url}", CAROL_PASSWORD)],
    )
    assert status == 0, shown
    assert "logged in" in shown and "carol" in shown
    assert CAROL_PASSWORD not in shown  # getpass does not echo it
    got = tether_cli(["call", url, "inventory.get", "name=r1"], env, pki.dir)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["name"] == "r1"
    me = tether_cli(["whoami", url], env, pki.dir)
    assert json.loads(me.stdout)["subject"] == "carol", me.stderr
    described = tether_cli(["describe", url, "inventory"], env, pki.dir)
    assert described.returncode == 0 and "inventory" in described.stdout
    out = tether_cli(["logout", url], env, pki.dir)
    assert out.returncode == 0 and "session revoked" in out.stdout
    after = tether_cli(["call", url, "inventory.get", "name=r1"], env, pki.dir)
    assert after.returncode == 1 and "unauthenticated" in after.stderr

    wrong = tether_cli(  # --password-stdin, as a script would log in
        ["login", url, "--username", "carol", "--ca", "ca.pem", "--password-stdin"],
        env,
        pki.dir,
        "not-it\n",
    )
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    assert "not-it" not in wrong.stderr

    # Python (no terminal here, so the password is given rather than asked for).
    from examples.inventory.service import Inventory

    with client:
        inventory = client.connect(
            url, username="carol", password=CAROL_PASSWORD, ca="ca.pem"
        ).proxy(Inventory)
        assert inventory.get("r1").name == "r1"
    with tether.Client(settings=client.settings) as again:
        with pytest.raises(AuthenticationFailed) as no_terminal:
            again.connect(url, username="someone-else", ca="ca.pem").call("inventory.list")
        assert no_terminal.value.refused == "password"


def test_2_an_api_key(
    env: dict[str, str], pki: PKI, secure: SecureServer, client: tether.Client
) -> None:
    url = secure.url
    made = tether_cli(["auth", "add-key", "ci-bot", "--scope", "inventory.read"], env, pki.dir)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tak_")
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            "ca.pem",
            "-H",
            f"authorization: Bearer {key}",
            "-H",
            "content-type: application/json",
            "-d",
            '{"name": "r1"}',
            f"{url}/rpc/inventory/get",
        ],
        cwd=pki.dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(curl.stdout)["name"] == "r1", curl.stderr
    pin = tether_cli(["auth", "fingerprint", "server.pem"], env, pki.dir).stdout.strip()
    assert len(pin) == 64
    stored = tether_cli(
        ["login", url, "--api-key-stdin", "--pin-sha256", pin], env, pki.dir, key + "\n"
    )
    assert stored.returncode == 0 and "ci-bot" in stored.stdout, stored.stderr
    listed = tether_cli(["call", url, "inventory.list"], env, pki.dir)
    assert listed.returncode == 0 and "r1" in listed.stdout, listed.stderr
    assert key not in stored.stdout + stored.stderr

    from examples.inventory.service import Inventory

    with client:
        inventory = client.connect(url, api_key=key, pin_sha256=pin).proxy(Inventory)
        assert inventory.get("r1").name == "r1"
        with pytest.raises(PermissionDenied):  # ci-bot may read only
            inventory.remove("r1")
        with pytest.raises(tether.Unavailable, match="pinned"):
            client.connect(url, api_key=key, pin_sha256="ab" * 32).call("inventory.list")
        with pytest.raises(tether.Unavailable, match="verify failed"):
            client.connect(url, api_key=key, ca="other-ca.pem").call("inventory.list")
        with pytest.raises(AuthenticationFailed) as bad:
            client.connect(url, api_key=key[:-3] + "abc", ca="ca.pem").call("inventory.list")
        assert bad.value.refused == "api_key"


def test_3_a_client_certificate(
    env: dict[str, str], pki: PKI, secure: SecureServer, client: tether.Client
) -> None:
    url = secure.url
    from examples.inventory.service import Device, Inventory

    with client:
        inventory = client.connect(url, cert=("robot.pem", "robot.key"), ca="ca.pem").proxy(
            Inventory
        )
        assert inventory.get("r1").name == "r1"
        device = inventory.get("r1").model_copy(update={"name": "r-new"})
        with pytest.raises(PermissionDenied):  # robot.example.org: inventory.read only
            inventory.add(Device.model_validate(device.model_dump()))
        with pytest.raises(AuthenticationFailed) as stranger:
            client.connect(url, cert=("stranger.pem", "stranger.key"), ca="ca.pem").call(
                "inventory.list"
            )
        assert stranger.value.refused == "certificate"
        assert "stranger.example.org" in stranger.value.message
    login = tether_cli(
        ["login", url, "--cert", "robot.pem", "--key", "robot.key", "--ca", "ca.pem"], env, pki.dir
    )
    assert login.returncode == 0 and "robot.example.org" in login.stdout, login.stderr
    listed = tether_cli(["call", url, "inventory.list"], env, pki.dir)
    assert listed.returncode == 0 and json.loads(listed.stdout), listed.stderr
    evil = tether_cli(
        ["login", url, "--cert", "evil.pem", "--key", "evil.key", "--ca", "ca.pem"], env, pki.dir
    )
    assert evil.returncode == 1 and "refused the client certificate" in evil.stderr


def test_the_server_log_holds_no_secret(
    pki: PKI, tmp_path: Path, client_env: dict[str, str]
) -> None:
    """A server of its own, driven through logins, refreshes and refusals, then read."""
    from tether.auth import CredentialStore, fast_hasher

    store = CredentialStore(tmp_path / "auth.db", hasher=fast_hasher())
    store.add_user("alice", "alice-secret-pw", ["inventory.read"])
    key = store.add_api_key("ci", ["inventory.read"])
    server = TLSServer(
        "examples.inventory.secure:app",
        pki,
        {"TETHER_AUTH_STORE_PATH": str(tmp_path / "auth.db"), "TETHER_STATE_DIR": str(tmp_path)},
    ).start()
    secrets = ["alice-secret-pw", "wrong-secret-pw", key]
    try:
        settings = Settings(
            state_dir=tmp_path / "client", tls_ca_bundle=pki.ca, token_refresh_margin=1e9
        )  # renew before every call
        with tether.Client(settings=settings) as client:
            inventory = client.connect(server.url, username="alice", password=secrets[0])
            for _ in range(3):
                inventory.call("inventory.list")
            with pytest.raises(AuthenticationFailed):
                client.connect(server.url, username="alice", password=secrets[1]).call(
                    "inventory.list"
                )
            client.connect(server.url, api_key=key).call("inventory.list")
            with pytest.raises(AuthenticationFailed):
                client.connect(server.url, api_key=key + "x").call("inventory.list")
        stored = json.loads(settings.effective_credentials_path.read_text())
        entry = next(iter(stored["servers"].values()))
        secrets += [entry["access_token"], entry["refresh_token"]]
    finally:
        server.stop()
    log = server.output()
    assert "POST /auth/refresh" in log and "POST /auth/login" in log  # it did log the calls
    for secret in secrets:
        assert secret not in log


PROMPTED = """
import sys, tether
from tether.settings import Settings
settings = Settings(credentials_path=sys.argv[1], tls_ca_bundle=sys.argv[2])
with tether.Client(settings=settings) as client:
    inventory = client.connect(sys.argv[3], username="alice")   # no password: ask
    print("got", inventory.call("inventory.get", name="r1")["name"])
"""


def run_in_terminal(
    argv: list[str], env: dict[str, str], answer: str, timeout: float = 60.0
) -> tuple[str, int]:
    """Run ``argv`` on a pseudo-terminal, type ``answer`` at the password prompt."""
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal is attached, as for a person at a shell
        os.execve(argv[0], argv, env)
    output, typed = b"", False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not typed and b"password for alice" in output:
            os.write(fd, answer.encode() + b"\n")
            typed = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return output.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_the_password_is_asked_for_on_a_terminal(
    pki: PKI, secure: SecureServer, tmp_path: Path, client_env: dict[str, str]
) -> None:
    from tests.auth.conftest import ALICE_PASSWORD

    script = tmp_path / "prompted.py"
    script.write_text(PROMPTED)
    output, code = run_in_terminal(
        [sys.executable, str(script), str(tmp_path / "creds.json"), str(pki.ca), secure.url],
        client_env,
        ALICE_PASSWORD,
    )
    assert code == 0, output
    assert f"password for alice at {secure.url}:" in output
    assert "got r1" in output
    assert ALICE_PASSWORD not in output  # getpass does not echo
