"""OpenID Connect tokens checked against a JWKS served by a local HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac as hmac_mod
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import tether
from tests.auth.secured_app import VaultService
from tether.auth import AuthConfig, AuthenticationFailed, OIDCProvider, PermissionDenied


class Provider:
    """A tiny identity provider: discovery document, JWKS, and token minting."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self.delay = 0.0  # seconds the JWKS endpoint waits before answering
        self.broken = False  # the JWKS endpoint answers 503
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body: dict[str, Any]
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    provider.fetches += 1
                    time.sleep(provider.delay)
                    if provider.broken:
                        self.send_error(503)
                        return
                    body = {"keys": [provider.public_jwk(k) for k in provider.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.add_key("rsa-1")

    def add_key(self, kid: str, kind: str = "rsa") -> None:
        self.keys[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )

    def public_jwk(self, kid: str) -> dict[str, Any]:
        key = self.keys[kid]
        algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        jwk = json.loads(algo.to_jwk(key.public_key()))
        return {**jwk, "kid": kid, "use": "sig"}

    def token(self, kid: str = "rsa-1", **claims: Any) -> str:
        key = self.keys[kid]
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": "vault-api",
            "sub": "user-42",
            "iat": now,
            "exp": now + 300,
            "scope": "vault.read",
            **claims,
        }
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[Provider]:
    provider = Provider()
    yield provider
    provider.close()


def test_tokens_verify_through_discovery(idp: Provider) -> None:
    oidc = OIDCProvider(idp.issuer, "vault-api")
    identity = oidc.verify(idp.token(scope="vault.read vault.write"))
    assert identity.subject == "user-42" and identity.method == "oidc"
    assert identity.scopes == {"vault.read", "vault.write"}
    assert oidc.jwks_url == idp.issuer + "/jwks"
    roles = OIDCProvider(
        idp.issuer,
        "vault-api",
        jwks_url=idp.issuer + "/jwks",
        scopes_claim="roles",
        subject_claim="email",
    )
    who = roles.verify(idp.token(roles=["admin"], email="a@example.org"))
    assert who.subject == "a@example.org" and who.scopes == {"admin"}


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"aud": "someone-else"}, "another audience"),
        ({"iss": "https://evil.example"}, "another issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
    ],
)
def test_bad_oidc_tokens_are_refused(idp: Provider, claims: dict[str, Any], message: str) -> None:
    oidc = OIDCProvider(idp.issuer, "vault-api", leeway=0)
    with pytest.raises(AuthenticationFailed, match=message) as refused:
        oidc.verify(idp.token(**claims))
    assert refused.value.refused == "token"


def test_a_forged_signature_and_algorithm_confusion_are_refused(idp: Provider) -> None:
    oidc = OIDCProvider(idp.issuer, "vault-api")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"iss": idp.issuer, "aud": "vault-api", "sub": "x", "exp": int(time.time()) + 60},
        stranger,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    with pytest.raises(AuthenticationFailed, match="signature"):
        oidc.verify(forged)
    public_pem = (
        idp.keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    payload = {"iss": idp.issuer, "aud": "vault-api", "sub": "x", "exp": int(time.time()) + 60}
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(payload).encode())
    mac = hmac_mod.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    confused = (header + b"." + body + b"." + jwt.utils.base64url_encode(mac)).decode()
    with pytest.raises(AuthenticationFailed):
        oidc.verify(confused)
    with pytest.raises(ValueError):
        OIDCProvider(idp.issuer, "vault-api", algorithms=["HS256"])


def test_key_rotation_refetches_but_not_for_every_unknown_kid(idp: Provider) -> None:
    oidc = OIDCProvider(idp.issuer, "vault-api", min_refetch=0.0)
    oidc.verify(idp.token())
    idp.add_key("ec-2", kind="ec")
    assert oidc.verify(idp.token("ec-2")).subject == "user-42"  # refetched for the new kid
    throttled = OIDCProvider(idp.issuer, "vault-api", min_refetch=3600)
    throttled.refresh_keys()
    before = idp.fetches
    bogus = jwt.encode(
        {"iss": idp.issuer}, idp.keys["rsa-1"], algorithm="RS256", headers={"kid": "no-such-kid"}
    )
    for _ in range(5):
        with pytest.raises(AuthenticationFailed, match="signing key"):
            throttled.verify(bogus)
    assert idp.fetches == before


def test_a_slow_or_broken_provider_neither_stalls_calls_nor_is_hammered() -> None:
    idp = Provider()
    try:
        oidc = OIDCProvider(idp.issuer, "vault-api", cache_seconds=0.0, min_refetch=3600)
        oidc.refresh_keys()
        token = idp.token()
        idp.delay = 5.0
        idp.broken = True
        oidc._attempted_at -= 7200  # as if the last fetch were long ago: one may start
        start = time.monotonic()
        for _ in range(10):  # the cache is stale every time, the cached key still serves
            assert oidc.verify(token).subject == "user-42"
        assert time.monotonic() - start < 2.5, "a stale key lookup waited for the provider"
        unknown = jwt.encode(
            jwt.decode(token, options={"verify_signature": False}),
            idp.keys["rsa-1"],
            algorithm="RS256",
            headers={"kid": "rotated"},
        )
        for _ in range(5):  # the background fetch was just tried: no new one
            with pytest.raises(AuthenticationFailed, match="signing key"):
                oidc.verify(unknown)
        deadline = time.monotonic() + 10
        while idp.fetches < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the one background refetch reaches the provider
        time.sleep(0.2)
        assert idp.fetches == 2  # the first fetch, then one background try: no retry storm
    finally:
        idp.close()


def test_an_unknown_key_on_an_event_loop_is_fetched_in_the_background() -> None:
    """The App checks HTTP calls on its event loop: a token with a new ``kid``
    is refused at once (the provider is slow) and accepted once its keys came."""
    idp = Provider()
    try:
        oidc = OIDCProvider(idp.issuer, "vault-api", min_refetch=3600)
        oidc.refresh_keys()
        idp.add_key("rotated-2")
        idp.delay = 1.0
        oidc._attempted_at -= 7200
        token = idp.token("rotated-2")

        async def on_the_loop() -> str:
            start = time.monotonic()
            with pytest.raises(AuthenticationFailed, match="fetched again"):
                oidc.verify(token)
            assert time.monotonic() - start < 0.5, "the event loop waited for the provider"
            deadline = time.monotonic() + 20
            while True:
                try:
                    return oidc.verify(token).subject
                except AuthenticationFailed:
                    assert time.monotonic() < deadline, "the new key never arrived"
                    await asyncio.sleep(0.1)

        assert asyncio.run(on_the_loop()) == "user-42"
    finally:
        idp.close()


def test_an_app_accepts_oidc_tokens(idp: Provider) -> None:
    app = tether.App(
        VaultService(),
        auth=AuthConfig(store=":memory:", oidc=[OIDCProvider(idp.issuer, "vault-api")]),
    )
    asyncio.run(app.startup())  # fetches the JWKS off the event loop
    with tether.Client() as client:
        reader = client.integrated(app, token=idp.token())
        assert reader.call("vault.peek") == "gold"
        assert reader.call("vault.caller")["method"] == "oidc"
        with pytest.raises(PermissionDenied):
            reader.call("vault.put", value="x")
        with pytest.raises(AuthenticationFailed, match="audience"):
            client.integrated(app, token=idp.token(aud="other")).call("vault.peek")
