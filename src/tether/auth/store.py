"""The server's credential store: users, API keys, refresh-token sessions, signing key.

One SQLite file (default ``auth.db`` in ``settings.state_dir``), shared by
every worker process of a server, or ``":memory:"`` for tests. WAL mode and
a busy timeout let several processes use the file at once; refresh-token
rotation runs in one ``BEGIN IMMEDIATE`` transaction, so two workers cannot
both accept the same refresh token.

Secrets are never stored: passwords as Argon2id PHC strings, API keys and
refresh tokens as SHA-256 digests. The token-signing key is the exception
(it must be read to sign); keep the file private (it is created mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tether.auth import apikeys
from tether.auth.errors import AuthenticationFailed
from tether.auth.passwords import PasswordHasher, hash_password
from tether.sqlite_wal import enable_wal

REFRESH_PREFIX = "trt_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, scopes TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, digest TEXT NOT NULL, subject TEXT NOT NULL,
    scopes TEXT NOT NULL, created REAL NOT NULL, expires_at REAL, revoked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    family TEXT PRIMARY KEY, subject TEXT NOT NULL, scopes TEXT NOT NULL,
    method TEXT NOT NULL, created REAL NOT NULL, expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    digest TEXT PRIMARY KEY, family TEXT NOT NULL, expires_at REAL NOT NULL,
    used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS refresh_family ON refresh_tokens (family);
"""


@dataclass(frozen=True)
class User:
    """A user record: name, Argon2id hash (PHC string) and scopes."""

    name: str
    password_hash: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key's record (never the key): id, owner, scopes, expiry (Unix s)."""

    key_id: str
    subject: str
    scopes: frozenset[str]
    expires_at: float | None
    revoked: bool


@dataclass(frozen=True)
class Session:
    """A login session: one family of rotating refresh tokens.

    Attributes:
        family: the session id (also the access tokens' ``sid`` claim).
        subject: who logged in.
        scopes: the scopes granted at login.
        method: how the session began (``password``).
        expires_at: Unix seconds after which no refresh token of it works.
    """

    family: str
    subject: str
    scopes: frozenset[str]
    method: str
    expires_at: float


def _refresh_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CredentialStore:
    """Users, API keys and refresh sessions in SQLite.

    Args:
        path: the database file (created with mode 0600, parents made), or
            ``":memory:"`` for a private in-memory store.
        hasher: the Argon2id hasher for new passwords (default argon2-cffi's).

    Thread-safe (one connection behind a lock); safe across processes
    sharing the file.
    """

    def __init__(
        self, path: str | Path = ":memory:", *, hasher: PasswordHasher | None = None
    ) -> None:
        self.path = str(path)
        self.hasher = hasher
        if self.path != ":memory:":
            file = Path(self.path)
            file.parent.mkdir(parents=True, exist_ok=True)
            if not file.exists():
                file.touch(mode=0o600)
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                enable_wal(self._db, 10.0)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        # Reads (every API-key call) get a connection of their own, so that they
        # never wait behind a write waiting for another process (WAL readers
        # do not block); an in-memory database has only the one connection.
        if self.path == ":memory:":
            self._rdb, self._rlock = self._db, self._lock
        else:
            self._rdb = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._rlock = threading.Lock()

    def __repr__(self) -> str:
        return f"<CredentialStore {self.path}>"

    @classmethod
    def memory(cls, *, hasher: PasswordHasher | None = None) -> CredentialStore:
        """A private in-memory store (tests, examples)."""
        return cls(":memory:", hasher=hasher)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
        if self._rdb is not self._db:
            with self._rlock:
                self._rdb.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (the write lock taken up front)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- the signing key -----------------------------------------------------

    def signing_key(self) -> bytes:
        """The HMAC key access tokens are signed with: 32 random bytes made once."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('signing_key', ?)", (secrets.token_bytes(32),)
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'signing_key'").fetchone()
        return bytes(row[0])

    # -- users -----------------------------------------------------------------

    def add_user(self, name: str, password: str, scopes: Iterable[str] = ()) -> User:
        """Add a user, or replace the password and scopes of an existing one.

        Raises:
            ValueError: empty name or password.
        """
        if not name:
            raise ValueError("a user name must not be empty")
        user = User(name, hash_password(password, self.hasher), frozenset(scopes))
        with self._write() as db:
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "password_hash = excluded.password_hash, scopes = excluded.scopes",
                (name, user.password_hash, json.dumps(sorted(user.scopes)), time.time()),
            )
        return user

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace a user's stored hash (rehash on login after a parameter change)."""
        with self._write() as db:
            db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))

    def user(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        with self._rlock:
            row = self._rdb.execute(
                "SELECT name, password_hash, scopes FROM users WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else User(row[0], row[1], frozenset(json.loads(row[2])))

    def users(self) -> list[str]:
        """Every user name, sorted."""
        with self._rlock:
            return [r[0] for r in self._rdb.execute("SELECT name FROM users ORDER BY name")]

    def remove_user(self, name: str) -> bool:
        """Remove a user and revoke their sessions; True if there was one."""
        with self._write() as db:
            gone = db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0
            db.execute("UPDATE sessions SET revoked = 1 WHERE subject = ?", (name,))
        return gone

    # -- API keys --------------------------------------------------------------

    def add_api_key(
        self, subject: str, scopes: Iterable[str] = (), *, expires_in: float | None = None
    ) -> str:
        """Make an API key for ``subject`` with ``scopes``; returns the key (shown once).

        Args:
            expires_in: seconds the key is valid, or None for no expiry.
        """
        key_id, key = apikeys.new_api_key()
        expires = None if expires_in is None else time.time() + expires_in
        with self._write() as db:
            db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, 0)",
                (
                    key_id,
                    apikeys.digest(key),
                    subject,
                    json.dumps(sorted(set(scopes))),
                    time.time(),
                    expires,
                ),
            )
        return key

    def check_api_key(self, key: str) -> ApiKeyRecord:
        """The record of a valid key.

        Raises:
            AuthenticationFailed: ``refused="api_key"``: malformed, unknown,
                revoked or expired (the digest compared in constant time).
        """
        key_id = apikeys.key_id_of(key)
        row = None
        if key_id is not None:
            with self._rlock:
                row = self._rdb.execute(
                    "SELECT digest, subject, scopes, expires_at, revoked FROM api_keys "
                    "WHERE key_id = ?",
                    (key_id,),
                ).fetchone()
        if row is None or not apikeys.matches(key, row[0]):
            raise AuthenticationFailed("the API key is not valid", refused="api_key")
        record = ApiKeyRecord(
            key_id or "", row[1], frozenset(json.loads(row[2])), row[3], bool(row[4])
        )
        if record.revoked:
            raise AuthenticationFailed("the API key was revoked", refused="api_key")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthenticationFailed("the API key has expired", refused="api_key")
        return record

    def revoke_api_key(self, key_or_id: str) -> bool:
        """Revoke a key given whole or by id; True if one was revoked."""
        key_id = apikeys.key_id_of(key_or_id) or key_or_id
        with self._write() as db:
            return (
                db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,)).rowcount
                > 0
            )

    # -- refresh sessions ----------------------------------------------------------

    def start_session(
        self, subject: str, scopes: Iterable[str], method: str, ttl: float
    ) -> tuple[Session, str]:
        """Begin a session; returns it and its first refresh token.

        Args:
            ttl: seconds the session (and so any of its refresh tokens) lasts.
        """
        now = time.time()
        session = Session(secrets.token_hex(16), subject, frozenset(scopes), method, now + ttl)
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        with self._write() as db:
            db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, 0)",
                (
                    session.family,
                    subject,
                    json.dumps(sorted(session.scopes)),
                    method,
                    now,
                    session.expires_at,
                ),
            )
            db.execute(
                "INSERT INTO refresh_tokens VALUES (?, ?, ?, 0)",
                (_refresh_digest(token), session.family, session.expires_at),
            )
        return session, token

    def rotate(self, token: str, scopes: Iterable[str] | None = None) -> tuple[Session, str]:
        """Spend a refresh token: mark it used and issue the next one of its family.

        A token used a second time means it was copied: the whole family
        (session) is revoked (OAuth 2.0 Security BCP, RFC 9700 section 4.14.2,
        "refresh token rotation").

        Args:
            scopes: replace the session's scopes (the user's current ones), or None.

        Returns:
            ``(session, new refresh token)``.

        Raises:
            AuthenticationFailed: ``refused="refresh_token"``: unknown,
                expired, reused (family revoked now) or logged out.
        """
        now = time.time()
        refusal: str | None = None
        with self._write() as db:
            row = db.execute(
                "SELECT t.family, t.used, s.subject, s.scopes, s.method, s.expires_at, "
                "s.revoked FROM refresh_tokens t JOIN sessions s ON s.family = t.family "
                "WHERE t.digest = ?",
                (_refresh_digest(token),),
            ).fetchone()
            if row is None:
                refusal = "the refresh token is not known here (expired, or from another server)"
            else:
                family, used, subject, scope_text, method, expires_at, revoked = row
                if revoked:
                    refusal = "the session was logged out or revoked; log in again"
                elif used:
                    # Committed with the refusal: the family stays revoked.
                    db.execute("UPDATE sessions SET revoked = 1 WHERE family = ?", (family,))
                    refusal = (
                        "the refresh token was already used; the session is revoked (log in again)"
                    )
                elif expires_at <= now:
                    refusal = "the session has expired; log in again"
                else:
                    granted = (
                        frozenset(json.loads(scope_text)) if scopes is None else frozenset(scopes)
                    )
                    new = REFRESH_PREFIX + secrets.token_urlsafe(32)
                    db.execute(
                        "UPDATE refresh_tokens SET used = 1 WHERE digest = ?",
                        (_refresh_digest(token),),
                    )
                    db.execute(
                        "INSERT INTO refresh_tokens VALUES (?, ?, ?, 0)",
                        (_refresh_digest(new), family, expires_at),
                    )
                    db.execute(
                        "UPDATE sessions SET scopes = ? WHERE family = ?",
                        (json.dumps(sorted(granted)), family),
                    )
        if refusal is not None:
            raise AuthenticationFailed(refusal, refused="refresh_token")
        return Session(family, subject, granted, method, expires_at), new

    def session_of(self, token: str) -> str | None:
        """The family of a refresh token (used or not), or None."""
        with self._rlock:
            row = self._rdb.execute(
                "SELECT family FROM refresh_tokens WHERE digest = ?", (_refresh_digest(token),)
            ).fetchone()
        return None if row is None else str(row[0])

    def revoke_session(self, family: str) -> bool:
        """Revoke a session (logout): its refresh tokens stop working. True if found."""
        with self._write() as db:
            return (
                db.execute("UPDATE sessions SET revoked = 1 WHERE family = ?", (family,)).rowcount
                > 0
            )

    def session_revoked(self, family: str) -> bool:
        """True when the session is revoked, expired or unknown."""
        with self._rlock:
            row = self._rdb.execute(
                "SELECT revoked, expires_at FROM sessions WHERE family = ?", (family,)
            ).fetchone()
        return row is None or bool(row[0]) or row[1] <= time.time()


def default_store_path() -> Path:
    """``settings.effective_auth_store_path`` of the process-wide settings."""
    from tether.settings import get_settings

    return get_settings().effective_auth_store_path
