"""API keys: high-entropy random strings, stored only as SHA-256 digests.

A key reads ``tak_<id>_<secret>``: ``id`` (12 hex digits) finds the record,
``secret`` is 32 random bytes (256 bits, URL-safe base64). Since the key is
random and long, a fast hash suffices (no password stretching needed, as
for GitHub's and Stripe's tokens); the digest is compared in constant time
(:func:`hmac.compare_digest`). The key itself is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "tak_"


def new_api_key() -> tuple[str, str]:
    """A new key: ``(key_id, key)``; give ``key`` to its owner, store its digest."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id part of a key, or None when ``key`` does not look like an API key."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != 12 or not secret:
        return None
    return key_id


def digest(key: str) -> str:
    """The hex SHA-256 of a key (what the store keeps)."""
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_digest: str) -> bool:
    """Constant-time check of ``key`` against a stored digest."""
    return hmac.compare_digest(digest(key), stored_digest)


def looks_like_api_key(value: str) -> bool:
    """True when ``value`` has the API-key form (so a bearer value is not a JWT)."""
    return key_id_of(value) is not None
