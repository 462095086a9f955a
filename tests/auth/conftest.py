"""Certificates from trustme, a secured inventory served over TLS, and helpers."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.fixtures.servers import ROOT, ServerProcess
from tether.auth import CredentialStore, fast_hasher

ALICE_PASSWORD = "correct horse battery staple"


@dataclass
class PKI:
    """Files of a test PKI: a CA, the server's certificate, clients' certificates."""

    dir: Path
    ca: Path  # the CA (PEM) that signs the server and the clients
    server_cert: Path  # the server's certificate (PEM)
    server_key: Path  # its private key (PEM)
    robot: tuple[Path, Path]  # a client certificate the App accepts (cert, key)
    stranger: tuple[Path, Path]  # signed by the same CA, for a subject not allowed
    evil: tuple[Path, Path]  # signed by another CA
    other_ca: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))

    def client(issuer: trustme.CA, name: str, subject: str) -> tuple[Path, Path]:
        leaf = issuer.issue_cert(subject)
        leaf.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(d / f"{name}.key"))
        return d / f"{name}.pem", d / f"{name}.key"

    return PKI(
        d,
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        client(ca, "robot", "robot.example.org"),
        client(ca, "stranger", "stranger.example.org"),
        client(other, "evil", "robot.example.org"),
        d / "other-ca.pem",
    )


class TLSServer(ServerProcess):
    """``tether serve`` with ``--tls-cert``/``--tls-client-ca``, checked over HTTPS."""

    def __init__(self, target: str, pki: PKI, env: dict[str, str]) -> None:
        super().__init__(
            target,
            args=[
                "--tls-cert",
                str(pki.server_cert),
                "--tls-key",
                str(pki.server_key),
                "--tls-client-ca",
                str(pki.ca),
            ],
            env=env,
        )
        self.url = f"https://127.0.0.1:{self.port}"
        self._context = ssl.create_default_context(cafile=str(pki.ca))

    def start(self, timeout: float = 20.0) -> TLSServer:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tether.cli",
                "serve",
                self.target,
                "--port",
                str(self.port),
                "--log-level",
                "debug",
                *self.args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("wb"),  # a file: a pipe nobody reads would fill up
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.log_text()
                raise RuntimeError(f"{self} exited with {self.process.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(
                    self.url + "/healthz", timeout=1, context=self._context
                ) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self} did not answer /healthz within {timeout} s")

    def output(self) -> str:
        """Everything the server wrote so far."""
        return self.log_text()


@dataclass
class SecureServer:
    """The secured inventory example served over TLS, with its store and secrets."""

    server: TLSServer
    store_path: Path
    state_dir: Path
    api_key: str
    read_only_key: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def secure(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    """examples.inventory.secure:app over TLS, users and keys in a fresh auth store.

    alice (read, write) and reader (read) log in with passwords; ``api_key``
    may read and write, ``read_only_key`` only read. Hashes use the fast
    test parameters (verification reads them from the hash).
    """
    state = tmp_path_factory.mktemp("server-state")
    store_path = state / "auth.db"
    store = CredentialStore(store_path, hasher=fast_hasher())
    store.add_user("alice", ALICE_PASSWORD, ["inventory.read", "inventory.write"])
    store.add_user("reader", "reader-password-1", ["inventory.read"])
    key = store.add_api_key("ci", ["inventory.read", "inventory.write"])
    read_only = store.add_api_key("dashboard", ["inventory.read"])
    store.close()
    env = {"TETHER_STATE_DIR": str(state), "TETHER_AUTH_STORE_PATH": str(store_path)}
    server = TLSServer("examples.inventory.secure:app", pki, env).start()
    yield SecureServer(server, store_path, state, key, read_only)
    server.stop()


@pytest.fixture
def client_env(tmp_path: Path, pki: PKI) -> dict[str, str]:
    """Environment for client subprocesses: a private state dir and credentials file."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TETHER_STATE_DIR": str(tmp_path / "state"),
        "TETHER_CREDENTIALS_PATH": str(tmp_path / "credentials.json"),
        "TETHER_CONFIG": str(tmp_path / "none.toml"),
    }
