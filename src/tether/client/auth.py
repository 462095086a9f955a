"""Client credentials: what a connection puts in ``authorization``, and renewal.

A connection holds an optional :class:`ClientAuth`; before each call it
asks for ``headers()``, and after a 401 calls ``on_unauthorized()`` once
and, when that returns True, sends the call again with the new headers.

- :class:`StaticAuth`: a given access token or API key; nothing to renew.
- :class:`SessionAuth`: a password login. Tokens are kept per server in the
  credentials file, renewed ``settings.token_refresh_margin`` seconds
  before they expire and once more on a 401: first with the refresh token,
  then by logging in again when a password is at hand (asked for with
  ``getpass`` when missing and a terminal is attached). Renewal runs under
  the credentials file's lock and re-reads the file first, so processes
  refreshing at once take turns and use one another's tokens instead of
  spending one refresh token twice (which would revoke the session).
"""

from __future__ import annotations

import getpass
import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from tether.auth.errors import AuthenticationFailed
from tether.client.credentials import CredentialsFile, Entry
from tether.client.tls import client_context
from tether.codec import Codec, decode_any
from tether.errors import TetherError, Unavailable, error_from_envelope
from tether.settings import Settings
from tether.transports.http_sync import SyncHTTPTransport

log = logging.getLogger("tether.client")


class ClientAuth(Protocol):
    """What a connection needs of its credentials."""

    def headers(self) -> Mapping[str, str]:
        """Headers to add to a call (may block to renew a token)."""
        ...

    def fresh(self) -> bool:
        """True when :meth:`headers` will answer without a network call."""
        ...

    def on_unauthorized(self) -> bool:
        """The server answered 401: renew; True when a retry may succeed."""
        ...


class StaticAuth:
    """A fixed ``authorization`` value: an access token or an API key.

    Args:
        token: sent as ``Bearer <token>``.
    """

    def __init__(self, token: str) -> None:
        self._headers = {"authorization": f"Bearer {token}"}

    def __repr__(self) -> str:  # never the secret
        return "<StaticAuth>"

    def headers(self) -> Mapping[str, str]:
        """The ``authorization`` header."""
        return self._headers

    def fresh(self) -> bool:
        """Always True: nothing to renew."""
        return True

    def on_unauthorized(self) -> bool:
        """Always False: a refused fixed credential stays refused."""
        return False


def post_json(
    transport: SyncHTTPTransport,
    path: str,
    body: Mapping[str, Any],
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """POST a JSON body to the server and decode the JSON answer.

    Raises:
        TetherError: the error the server answered (``AuthenticationFailed``
            for refused credentials), or Unavailable / DeadlineExceeded.
    """
    raw = transport.request(
        "POST",
        path,
        json.dumps(body).encode(),
        {"content-type": "application/json", "accept": "application/json", **(headers or {})},
        timeout,
    )
    try:
        data = decode_any(raw.body, Codec.JSON)
    except TetherError:
        data = None
    if raw.status >= 400:
        raise error_from_envelope(data, raw.status)
    return data


class SessionAuth:
    """Tokens from a password login, kept in the credentials file.

    Args:
        url: the server's base URL.
        credentials: the credentials file (tokens are stored per server).
        username: whom to log in as (default: the stored entry's user).
        password: the password: the first call logs in with it (a stored
            session is not reused). None reuses the stored session, and asks
            with ``getpass`` when a login is needed and a terminal is attached.
        ssl_context: TLS for the login and refresh requests.
        margin: seconds before expiry that a token is renewed.
        timeout: seconds per login or refresh request.
        extra: more fields to keep in the entry (``ca``, ``pin_sha256``...).
        interactive: may ask for the password with ``getpass`` (when a
            terminal is attached); False for background work (a worker), which
            then fails with :class:`AuthenticationFailed` instead of waiting
            on a prompt nobody sees.
    """

    def __init__(
        self,
        url: str,
        credentials: CredentialsFile,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        margin: float = 60.0,
        timeout: float = 30.0,
        extra: Mapping[str, Any] | None = None,
        interactive: bool = True,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.interactive = interactive
        self.username = username
        self._password = password
        self._must_login = password is not None  # a password given means: log in with it
        self._ssl = ssl_context
        self.margin = margin
        self.timeout = timeout
        self._extra = dict(extra or {})
        self._entry: Entry | None = None
        self._lock = threading.Lock()
        self._transport: SyncHTTPTransport | None = None

    def __repr__(self) -> str:
        return f"<SessionAuth {self.url} user={self.username!r}>"

    # -- ClientAuth ----------------------------------------------------------

    def headers(self) -> Mapping[str, str]:
        """``authorization: Bearer <access token>``, renewed first if it is about to expire.

        Raises:
            AuthenticationFailed: not logged in and no way to log in, or the
                server refused the refresh token and the password.
        """
        entry = self._entry
        if entry is None or not self._usable(entry):
            with self._lock:
                entry = self._entry
                if entry is None or not self._usable(entry):
                    entry = self._renew(refused=None)
        return {"authorization": f"Bearer {entry['access_token']}"}

    def fresh(self) -> bool:
        """True while the access token in memory is not about to expire."""
        entry = self._entry
        return entry is not None and self._usable(entry)

    def on_unauthorized(self) -> bool:
        """Renew after a 401: refresh, else log in again; True when a new token came.

        Raises:
            AuthenticationFailed: no way to renew.
        """
        with self._lock:
            refused = self._entry.get("access_token") if self._entry else None
            self._renew(refused=refused)
            return True

    # -- renewal -------------------------------------------------------------

    def _usable(self, entry: Entry) -> bool:
        token = entry.get("access_token")
        expires = entry.get("expires_at")
        if not token:
            return False
        return expires is None or float(expires) - self.margin > time.time()

    def _http(self) -> SyncHTTPTransport:
        if self._transport is None:
            self._transport = SyncHTTPTransport(self.url, ssl_context=self._ssl)
        return self._transport

    def _renew(self, refused: str | None) -> Entry:
        """Under the file lock: adopt another process's newer token, else refresh,
        else log in. ``refused`` is a token the server refused (never adopted)."""
        with self.credentials.locked():
            stored = self.credentials.get(self.url)
            if (
                stored is not None
                and self.username
                and stored.get("username") not in (None, self.username)
            ):
                stored = None  # another user's session: log in as this one
            if self._must_login:  # a fresh login, whatever is stored
                stored = {
                    k: v
                    for k, v in (stored or {}).items()
                    if k in ("ca", "pin_sha256", "cert", "key")
                }
            if (
                stored is not None
                and stored.get("access_token") != refused
                and self._usable(stored)
            ):
                self._entry = stored
                return stored
            answer: dict[str, Any] | None = None
            if stored is not None and stored.get("refresh_token"):
                try:
                    answer = post_json(
                        self._http(),
                        "/auth/refresh",
                        {"refresh_token": stored["refresh_token"]},
                        self.timeout,
                    )
                except AuthenticationFailed as exc:
                    log.info("refresh refused by %s (%s); logging in again", self.url, exc.message)
            if answer is None:
                answer = self._login()
            entry: Entry = {
                **(stored or {}),
                **self._extra,
                "username": answer.get("subject") or self.username,
                "access_token": answer["access_token"],
                "expires_at": answer.get("expires_at"),
                "refresh_token": answer.get("refresh_token"),
                "refresh_expires_at": answer.get("refresh_expires_at"),
                "scope": answer.get("scope", ""),
            }
            self.credentials.put(self.url, entry)
            self._entry = entry
            return entry

    def _login(self) -> dict[str, Any]:
        if not self.username:
            raise AuthenticationFailed(
                f"not logged in to {self.url}: run 'tether login {self.url}', or pass "
                "username= (and password=) or token= or api_key=",
                refused="credentials",
            )
        password = self._password
        if password is None:
            if not self.interactive or not sys.stdin.isatty():
                where = "asking is off here" if not self.interactive else "no terminal to ask on"
                raise AuthenticationFailed(
                    f"the session for {self.username!r} at {self.url} has ended and no password "
                    f"was given ({where}): run 'tether login {self.url}' again",
                    refused="password",
                )
            password = getpass.getpass(f"password for {self.username} at {self.url}: ")
        answer = post_json(
            self._http(),
            "/auth/login",
            {"username": self.username, "password": password},
            self.timeout,
        )
        if not isinstance(answer, dict) or "access_token" not in answer:
            raise Unavailable(f"{self.url}/auth/login did not answer a token")
        self._password = password  # kept in memory only, to log in again later
        self._must_login = False
        return answer

    def logout(self) -> bool:
        """Revoke the session on the server (best effort) and forget the credentials
        (the CA bundle and pin stay).

        Returns:
            True when the server revoked a session.
        """
        with self._lock, self.credentials.locked():
            stored = self.credentials.get(self.url) or {}
            revoked = False
            if stored.get("refresh_token") or stored.get("access_token"):
                headers = (
                    {"authorization": f"Bearer {stored['access_token']}"}
                    if stored.get("access_token")
                    else {}
                )
                try:
                    answer = post_json(
                        self._http(),
                        "/auth/logout",
                        {"refresh_token": stored.get("refresh_token")},
                        self.timeout,
                        headers,
                    )
                    revoked = bool(answer.get("revoked")) if isinstance(answer, dict) else False
                except TetherError as exc:
                    log.info("logout at %s failed: %s", self.url, exc.message)
            keep = {k: v for k, v in stored.items() if k in ("ca", "pin_sha256")}
            self.credentials.update(self.url, lambda _: keep or None)
            self._entry = None
            return revoked

    def close(self) -> None:
        """Close the login/refresh connection pool."""
        if self._transport is not None:
            self._transport.close()


def tls_for(
    url: str,
    settings: Settings,
    entry: Entry | None,
    *,
    ca: str | Path | None = None,
    pin_sha256: str | None = None,
    cert: tuple[str | Path, str | Path] | str | Path | None = None,
) -> ssl.SSLContext | None:
    """The SSL context for ``url``: arguments first, then the stored entry, then settings.

    None for ``http://`` URLs.
    """
    if not url.startswith("https://"):
        return None
    stored = entry or {}
    ca = ca or stored.get("ca") or settings.tls_ca_bundle
    pin = pin_sha256 or stored.get("pin_sha256") or settings.tls_pin_sha256
    if cert is None and stored.get("cert"):
        cert = (stored["cert"], stored["key"]) if stored.get("key") else stored["cert"]
    if cert is None and settings.tls_cert is not None:
        cert = (settings.tls_cert, settings.tls_key) if settings.tls_key else settings.tls_cert
    return client_context(ca=ca, pin_sha256=pin, cert=cert)


def resolve(
    url: str,
    settings: Settings,
    *,
    token: str | None = None,
    api_key: str | None = None,
    username: str | None = None,
    password: str | None = None,
    cert: tuple[str | Path, str | Path] | str | Path | None = None,
    ca: str | Path | None = None,
    pin_sha256: str | None = None,
    stored: bool = True,
    interactive: bool = True,
) -> tuple[ClientAuth | None, ssl.SSLContext | None]:
    """Work out a connection's credentials and TLS context (no network call).

    Precedence: ``token``, ``api_key``, ``username``/``password``, an
    explicit ``cert`` (the certificate alone: stored tokens for ``url`` are
    not sent with it, so the identity is the certificate's), then the
    credentials file's entry for ``url`` (when ``stored``), else none (an
    open server). The stored entry's TLS choices (CA bundle, pin,
    certificate) apply unless given here.

    ``interactive=False`` (background work) never asks for a password; see
    :class:`SessionAuth`.

    Raises:
        ValueError: more than one of token, api_key and username; a bad pin.
    """
    given = [
        n
        for n, v in (("token", token), ("api_key", api_key), ("username", username))
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give one of token=, api_key= and username=, not {' and '.join(given)}")
    if password is not None and username is None:
        raise ValueError("password= needs username=")
    file = CredentialsFile(settings.effective_credentials_path)
    entry = file.get(url) if stored else None
    context = tls_for(url, settings, entry, ca=ca, pin_sha256=pin_sha256, cert=cert)
    if token is not None:
        return StaticAuth(token), context
    if api_key is not None:
        return StaticAuth(api_key), context
    extra: dict[str, str] = {}
    if ca is not None:
        extra["ca"] = str(Path(ca).resolve())
    if pin_sha256 is not None:
        extra["pin_sha256"] = pin_sha256
    if isinstance(cert, tuple):
        extra.update(cert=str(Path(cert[0]).resolve()), key=str(Path(cert[1]).resolve()))
    elif cert is not None:
        extra["cert"] = str(Path(cert).resolve())
    if username is not None:
        return SessionAuth(
            url,
            file,
            username=username,
            password=password,
            ssl_context=context,
            margin=settings.token_refresh_margin,
            extra=extra,
            interactive=interactive,
        ), context
    if entry is not None and cert is None:
        if entry.get("api_key"):
            return StaticAuth(str(entry["api_key"])), context
        if entry.get("access_token") or entry.get("refresh_token"):
            return SessionAuth(
                url,
                file,
                username=entry.get("username"),
                ssl_context=context,
                margin=settings.token_refresh_margin,
                interactive=interactive,
            ), context
    return None, context
