"""NKeys, JWTs and ``.creds`` files for NATS servers with authentication, made with ``nkeys``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys


def keypair(prefix: int) -> tuple[str, nkeys.KeyPair, str]:
    """A fresh NKey: ``(seed, key pair, public key)``; ``prefix`` is an nkeys.PREFIX_BYTE_*."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return seed.decode(), pair, pair.public_key.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**claims, "version": 2},
    }
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode()
    signing = _b64(b'{"typ":"JWT","alg":"ed25519-nkey"}') + "." + _b64(json.dumps(body).encode())
    return signing + "." + _b64(issuer.sign(signing.encode()))


def operator_setup(folder: Path) -> tuple[str, Path]:
    """A decentralised-auth NATS setup: ``(server configuration, path of a user .creds file)``.

    One operator, one account (preloaded in a memory resolver), one user.
    """
    _, operator, operator_public = keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, account, account_public = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_public = keypair(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(operator, operator_public, "operator", {"type": "operator"})
    unlimited = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
    }
    account_jwt = _jwt(
        operator,
        account_public,
        "tether",
        {
            "type": "account",
            "limits": unlimited,
            "default_permissions": {"pub": {}, "sub": {}},
        },
    )
    user_jwt = _jwt(
        account,
        user_public,
        "svc",
        {
            "type": "user",
            "pub": {},
            "sub": {},
            "subs": -1,
            "data": -1,
            "payload": -1,
        },
    )
    creds = folder / "user.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n"
    )
    config = (
        f"operator: {operator_jwt}\nresolver: MEMORY\n"
        f"resolver_preload: {{\n  {account_public}: {account_jwt}\n}}\n"
    )
    return config, creds
