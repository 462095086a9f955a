"""Logging in to NATS: user and password, token, NKey, .creds file and TLS, with clear errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nkeys
import pytest
import trustme

import tether
from tests.apps.relayed import app as relayed_app
from tests.fixtures.relay import RelayProcess, tether_cli
from tests.relay.conftest import ConfiguredNats, RunAsync
from tests.relay.nats_auth import keypair, operator_setup
from tether.server.relay import RelayServer
from tether.settings import Settings
from tether.transports.nats_connect import NatsCredentials

Start = Callable[..., ConfiguredNats]


def serve_and_call(
    run_async: RunAsync[Any],
    url: str,
    server_side: NatsCredentials,
    client_side: NatsCredentials,
    *,
    client_url: str | None = None,
) -> int:
    """Serve the relayed App with ``server_side`` credentials, call it with ``client_side``."""
    relay = RelayServer(relayed_app, url, credentials=server_side, settings=Settings())
    run_async(relay.start())
    try:
        with tether.Client(timeout=5, settings=Settings()) as client:
            result: int = client.relay(client_url or url, credentials=client_side).call(
                "whoami.echo", n=11
            )
            return result
    finally:
        run_async(relay.stop())


def assert_rejected(url: str, credentials: NatsCredentials) -> None:
    with tether.Client(timeout=5, settings=Settings()) as client:
        with pytest.raises(tether.TetherError) as caught:
            client.relay(url, credentials=credentials).call("whoami.echo", n=1)
    assert caught.value.code is tether.StatusCode.UNAUTHENTICATED
    assert "rejected the credentials" in caught.value.message


def test_user_and_password(configured_nats: Start, run_async: RunAsync[Any]) -> None:
    server = configured_nats("--user", "svc", "--pass", "s3cret")
    good = NatsCredentials(user="svc", password="s3cret")
    assert serve_and_call(run_async, server.url, good, good) == 11
    url_with_login = f"nats://svc:s3cret@{server.host}:{server.port}"
    assert (
        serve_and_call(run_async, server.url, good, NatsCredentials(), client_url=url_with_login)
        == 11
    )
    assert_rejected(server.url, NatsCredentials(user="svc", password="wrong"))
    assert_rejected(server.url, NatsCredentials())
    relay = RelayServer(
        relayed_app, server.url, settings=Settings(nats_user="svc", nats_password="nope")
    )
    with pytest.raises(tether.TetherError, match="rejected the credentials"):
        run_async(relay.start())


def test_token_from_settings(configured_nats: Start, run_async: RunAsync[Any]) -> None:
    server = configured_nats("--auth", "tok-123")
    relay = RelayServer(relayed_app, server.url, settings=Settings(nats_token="tok-123"))
    run_async(relay.start())
    try:
        with tether.Client(timeout=5, settings=Settings(nats_token="tok-123")) as client:
            assert client.relay(server.url).call("whoami.echo", n=2) == 2
        assert "tok-123" not in repr(NatsCredentials.from_settings(Settings(nats_token="tok-123")))
    finally:
        run_async(relay.stop())
    assert_rejected(server.url, NatsCredentials(token="tok-999"))


def test_nkey_seed_file(configured_nats: Start, run_async: RunAsync[Any], tmp_path: Path) -> None:
    seed, _, public = keypair(nkeys.PREFIX_BYTE_USER)
    server = configured_nats(config=f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed + "\n")
    creds = NatsCredentials(nkey_seed_file=seed_file)
    assert serve_and_call(run_async, server.url, creds, creds) == 11
    other = tmp_path / "other.nk"  # a valid seed the server does not know
    other.write_text(keypair(nkeys.PREFIX_BYTE_USER)[0])
    assert_rejected(server.url, NatsCredentials(nkey_seed_file=other))
    with tether.Client(timeout=5, settings=Settings()) as client:
        with pytest.raises(ValueError, match="does not exist"):
            client.relay(
                server.url, credentials=NatsCredentials(nkey_seed_file=tmp_path / "missing.nk")
            ).call("whoami.echo", n=1)


def test_creds_file(configured_nats: Start, run_async: RunAsync[Any], tmp_path: Path) -> None:
    config, creds_file = operator_setup(tmp_path)
    server = configured_nats(config=config)
    creds = NatsCredentials(creds_file=creds_file)
    assert serve_and_call(run_async, server.url, creds, creds) == 11
    assert_rejected(server.url, NatsCredentials())


def test_tls(configured_nats: Start, run_async: RunAsync[Any], tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = configured_nats(config=f'tls {{ cert_file: "{cert_file}", key_file: "{key_file}" }}')
    trusted = NatsCredentials(tls_ca_bundle=ca_file)
    assert serve_and_call(run_async, server.url, trusted, trusted) == 11
    # tls:// takes the generic tls_* settings when no nats_tls_* one is set.
    tls_url = f"tls://{server.host}:{server.port}"
    relay = RelayServer(relayed_app, server.url, credentials=trusted, settings=Settings())
    run_async(relay.start())
    try:
        with tether.Client(timeout=5, settings=Settings(tls_ca_bundle=ca_file)) as client:
            assert client.relay(tls_url).call("whoami.echo", n=3) == 3
        with tether.Client(timeout=5, settings=Settings()) as client:  # the system's CAs only
            with pytest.raises(tether.Unavailable, match="TLS failed") as caught:
                client.relay(tls_url).call("whoami.echo", n=3)
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    finally:
        run_async(relay.stop())


class TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        self.ca = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        self.server_cert, self.server_key = folder / "server.pem", folder / "server.key"
        server = ca.issue_cert("127.0.0.1")
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        self.client_cert, self.client_key = folder / "client.pem", folder / "client.key"
        client = ca.issue_cert("relay-client@example.com")
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def verifying_config(self) -> str:
        """nats-server TLS that requires and verifies a client certificate."""
        return (
            f'tls {{ cert_file: "{self.server_cert}", key_file: "{self.server_key}", '
            f'ca_file: "{self.ca}", verify: true }}\n'
        )


def test_mutual_tls(configured_nats: Start, run_async: RunAsync[Any], tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    server = configured_nats(config=files.verifying_config())
    mutual = NatsCredentials(
        tls_ca_bundle=files.ca, tls_cert=files.client_cert, tls_key=files.client_key
    )
    assert serve_and_call(run_async, server.url, mutual, mutual) == 11
    # No client certificate: the handshake fails, or NATS drops the connection after it.
    with tether.Client(timeout=5, settings=Settings()) as client:
        with pytest.raises(tether.Unavailable, match="cannot connect to NATS") as caught:
            client.relay(server.url, credentials=NatsCredentials(tls_ca_bundle=files.ca)).call(
                "whoami.echo", n=1
            )
    assert caught.value.details == {"sent": False}
    with pytest.raises(ValueError, match="cannot load the NATS TLS files"):
        NatsCredentials(tls_cert=tmp_path / "missing.pem").ssl_context()


def test_credentials_from_the_environment(configured_nats: Start, tmp_path: Path) -> None:
    """``tether serve --relay`` and ``tether call nats://`` read the TETHER_NATS_* settings:
    mutual TLS and an NKey on one server, a .creds file on another."""
    files = TlsFiles(tmp_path)
    seed, _, public = keypair(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed)
    tls_and_nkey = configured_nats(
        config=files.verifying_config()
        + f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n'
    )
    tls_env = {
        "TETHER_NATS_TLS_CA_BUNDLE": str(files.ca),
        "TETHER_NATS_TLS_CERT": str(files.client_cert),
        "TETHER_NATS_TLS_KEY": str(files.client_key),
    }
    nkey_env = {**tls_env, "TETHER_NATS_NKEY_SEED_FILE": str(seed_file)}
    operator_config, creds_file = operator_setup(tmp_path)
    with_creds = configured_nats(config=operator_config)
    creds_env = {"TETHER_NATS_CREDS_FILE": str(creds_file)}
    for server, env, partial in ((tls_and_nkey, nkey_env, tls_env), (with_creds, creds_env, {})):
        with RelayProcess("tests.apps.relayed:app", server.url, env=env) as relay:
            called = tether_cli(
                "call", f"{server.url}#{relay.instance_id}", "whoami.echo", "n:=4", env=env
            )
            assert called.returncode == 0, called.stderr
            assert called.stdout.strip() == "4"
            refused = tether_cli("call", server.url, "whoami.echo", "n:=4", env=partial)
            assert refused.returncode == 1 and "unauthenticated" in refused.stderr, refused.stderr
            assert "rejected the credentials" in refused.stderr


def test_a_refused_subscription_fails_start(
    configured_nats: Start, run_async: RunAsync[Any]
) -> None:
    """NATS lets the relay in but not subscribe to tether.rpc.>: start() says so
    instead of logging "serving" while callers get no responders."""
    server = configured_nats(
        config=(
            "authorization { users = [\n"
            '  { user: svc, password: s, permissions: { subscribe: { deny: ["tether.rpc.>"] } } }\n'
            "] }\n"
        )
    )
    login = NatsCredentials(user="svc", password="s")
    relay = RelayServer(relayed_app, server.url, credentials=login, settings=Settings())
    with pytest.raises(tether.TetherError) as caught:
        run_async(relay.start())
    assert caught.value.code is tether.StatusCode.PERMISSION_DENIED
    assert 'subscription to "tether.rpc.whoami.*"' in caught.value.message
    assert "tether.inst" not in caught.value.message.partition(". Allow")[0]  # that one was allowed
    assert "stopped" in repr(relay)
    # The same from the command line: exit 1, nothing logged as serving.
    env = {"TETHER_NATS_USER": "svc", "TETHER_NATS_PASSWORD": "s"}
    served = tether_cli(
        "serve", "tests.apps.relayed:app", "--relay", server.url, "--no-http", env=env
    )
    output = served.stdout + served.stderr
    assert served.returncode == 1, output
    assert "permission_denied" in output and "relay: serving" not in output


def test_the_permissions_the_readme_recommends(
    configured_nats: Start, run_async: RunAsync[Any]
) -> None:
    """Services may take and answer calls, callers send them and read their answers,
    and a caller cannot subscribe to the calls (and the tokens they carry)."""
    server = configured_nats(
        config=(
            "authorization { users = [\n"
            '  { user: svc, password: s, permissions: { subscribe: ["tether.rpc.>", '
            '"tether.inst.>"], allow_responses: true } }\n'
            '  { user: app, password: a, permissions: { publish: ["tether.rpc.>", '
            '"tether.inst.>"], subscribe: ["_INBOX.>"] } }\n'
            "] }\n"
        )
    )
    service, caller = (
        NatsCredentials(user="svc", password="s"),
        NatsCredentials(user="app", password="a"),
    )
    assert serve_and_call(run_async, server.url, service, caller) == 11
    eavesdropper = RelayServer(relayed_app, server.url, credentials=caller, settings=Settings())
    with pytest.raises(tether.TetherError) as caught:
        run_async(eavesdropper.start())
    assert caught.value.code is tether.StatusCode.PERMISSION_DENIED


def test_nats_credentials_are_exported_without_importing_nats_py_eagerly() -> None:
    assert tether.NatsCredentials is NatsCredentials and "NatsCredentials" in tether.__all__
    script = (
        "import sys, tether\n"
        "assert not any(m == 'nats' or m.startswith('nats.') for m in sys.modules), 'eager'\n"
        "from tether import NatsCredentials\n"
        "assert NatsCredentials.__module__ == 'tether.transports.nats_connect'\n"
        "assert 'nats' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
