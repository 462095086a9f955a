"""``tether login``, ``logout``, ``whoami``; ``tether auth ...`` (server-side users and
keys); the TLS options of ``tether serve``."""

from __future__ import annotations

import getpass
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.errors import TetherError

TLS_PROTOCOL = "tether.auth.uvicorn_tls:TLSHttpToolsProtocol"

admin = typer.Typer(
    help="Manage the server's users and API keys (the auth store, default "
    "auth.db in the state directory).",
    no_args_is_help=True,
)


def uvicorn_tls_options(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> dict[str, Any]:
    """uvicorn options for ``tether serve``'s TLS flags.

    Without ``cert``: plain HTTP on httptools. With it: HTTPS; with
    ``client_ca`` also mutual TLS (client certificates asked for and
    verified when presented, so password and API-key callers still get in),
    on a protocol that hands the client certificate to the App (see
    :mod:`tether.auth.uvicorn_tls`).

    Raises:
        typer.BadParameter: ``key`` or ``client_ca`` without ``cert``.
    """
    if cert is None:
        if key is not None or client_ca is not None:
            raise typer.BadParameter("--tls-key and --tls-client-ca need --tls-cert")
        return {"http": "httptools"}
    options: dict[str, Any] = {
        "http": TLS_PROTOCOL,
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key) if key is not None else None,
    }
    if client_ca is not None:
        options.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return options


def _explain(exc: TetherError, cert_used: bool = False) -> TetherError:
    """Add which side refused a TLS handshake to an Unavailable error's message.

    A server that refuses a client certificate under TLS 1.3 may just close
    the connection (asyncio sends no alert), so with ``cert_used`` an answerless
    close is put down to the certificate.
    """
    from tether.client.tls import describe_tls_error

    reason = describe_tls_error(exc.message)
    if reason is None and cert_used and "without answering" in exc.message:
        reason = "the server refused the client certificate"
    if reason is not None and reason not in exc.message:
        exc.message = f"{reason} ({exc.message})"
    return exc


def _read_password(username: str, url: str, from_stdin: bool, confirm: bool = False) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {username} at {url}: ")
        if confirm and password and getpass.getpass("the same password again: ") != password:
            raise typer.BadParameter("the two passwords differ")
    else:
        raise typer.BadParameter("no terminal to ask for the password on; use --password-stdin")
    if not password:
        raise typer.BadParameter("the password is empty")
    return password


def login(
    url: Annotated[str, typer.Argument(help="The server, e.g. https://127.0.0.1:8443.")],
    username: Annotated[
        str | None, typer.Option(help="Log in as this user (asks for the password).")
    ] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Store this API key instead (visible to ps and shell history: "
            "prefer --api-key-stdin)."
        ),
    ] = None,
    api_key_stdin: Annotated[
        bool, typer.Option(help="Read the API key to store from stdin.")
    ] = False,
    cert: Annotated[
        Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="The client certificate's key (PEM).")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA bundle to verify the server with.")] = None,
    pin_sha256: Annotated[
        str | None,
        typer.Option(help="Accept only the server certificate with this SHA-256 fingerprint."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 30.0,
) -> None:
    """Log in to a server; later commands (call, describe, whoami) use the stored credentials.

    Tokens, API key and TLS choices are kept per server in the credentials file.

    Examples: tether login https://host:8443 --username alice;
    tether login https://host:8443 --cert me.pem --key me.key --ca ca.pem
    """
    from tether.cli.output import fail, out
    from tether.client.auth import SessionAuth, resolve
    from tether.client.credentials import CredentialsFile
    from tether.settings import get_settings

    settings = get_settings()
    if api_key_stdin:
        if api_key is not None:
            raise typer.BadParameter("give --api-key or --api-key-stdin, not both")
        api_key = sys.stdin.readline().strip()
        if not api_key:
            raise typer.BadParameter("no API key on stdin")
    certificate: tuple[Path, Path] | Path | None = (cert, key) if cert and key else cert
    try:
        if api_key is not None or (certificate is not None and username is None):
            auth, context = resolve(
                url,
                settings,
                api_key=api_key,
                cert=certificate,
                ca=ca,
                pin_sha256=pin_sha256,
                stored=False,
            )
            identity = _whoami(url, auth.headers() if auth else {}, context, timeout)
            entry: dict[str, Any] = {"username": identity.get("subject")}
            if api_key is not None:
                entry["api_key"] = api_key
            for name, value in (("ca", ca), ("cert", cert), ("key", key)):
                if value is not None:
                    entry[name] = str(value.resolve())
            if pin_sha256:
                entry["pin_sha256"] = pin_sha256
            CredentialsFile(settings.effective_credentials_path).put(url, entry)
        else:
            stored = CredentialsFile(settings.effective_credentials_path).get(url) or {}
            user = username or stored.get("username") or getpass.getuser()
            password = _read_password(user, url, password_stdin)
            auth, context = resolve(
                url,
                settings,
                username=user,
                password=password,
                cert=certificate,
                ca=ca,
                pin_sha256=pin_sha256,
            )
            assert isinstance(auth, SessionAuth)
            # A fresh login, not a refresh: keep only the TLS choices.
            auth.credentials.update(
                url,
                lambda old: (
                    {
                        k: v
                        for k, v in (old or {}).items()
                        if k in ("ca", "pin_sha256", "cert", "key")
                    }
                    or None
                ),
            )
            identity = _whoami(url, auth.headers(), context, timeout)
            auth.close()
    except TetherError as exc:
        raise fail(_explain(exc, cert is not None)) from None
    except (OSError, ValueError) as exc:
        raise fail(TetherError(f"cannot log in: {exc}")) from None
    scopes = ", ".join(identity.get("scopes", [])) or "none"
    out.print(
        f"logged in to {url} as [bold]{identity.get('subject')}[/] "
        f"({identity.get('method')}; scopes: {scopes})",
        highlight=False,
    )


def logout(
    url: Annotated[str, typer.Argument(help="The server to log out of.")],
) -> None:
    """Log out: revoke the session on the server and forget the stored credentials.

    The server's CA bundle or pin, if given at login, stay for later logins.
    """
    from tether.cli.output import out
    from tether.client.auth import SessionAuth, resolve
    from tether.client.credentials import CredentialsFile
    from tether.settings import get_settings

    settings = get_settings()
    file = CredentialsFile(settings.effective_credentials_path)
    if file.get(url) is None:
        out.print(f"not logged in to {url}", highlight=False)
        return
    auth, _ = resolve(url, settings)
    if isinstance(auth, SessionAuth):
        revoked = auth.logout()
        auth.close()
    else:
        revoked = False
    # Forget the credentials; keep how to trust the server (CA bundle, pin).
    file.update(
        url, lambda old: {k: v for k, v in (old or {}).items() if k in ("ca", "pin_sha256")} or None
    )
    out.print(f"logged out of {url}" + (" (session revoked)" if revoked else ""), highlight=False)


def whoami(
    url: Annotated[str, typer.Argument(help="The server to ask.")],
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 30.0,
) -> None:
    """Print who the stored credentials authenticate as at a server (GET /auth/whoami)."""
    from tether.cli.output import emit, fail
    from tether.client.auth import resolve
    from tether.settings import get_settings

    try:
        auth, context = resolve(url, get_settings())
        identity = _whoami(url, auth.headers() if auth else {}, context, timeout, auth)
    except TetherError as exc:
        raise fail(_explain(exc)) from None
    emit(identity)


def _whoami(
    url: str, headers: Any, context: ssl.SSLContext | None, timeout: float, auth: Any = None
) -> dict[str, Any]:
    from tether.codec import Codec, decode_any
    from tether.errors import error_from_envelope
    from tether.transports.http_sync import SyncHTTPTransport

    transport = SyncHTTPTransport(url, ssl_context=context)
    try:
        raw = transport.request(
            "GET", "/auth/whoami", None, {"accept": "application/json", **headers}, timeout
        )
        if raw.status == 401 and auth is not None and auth.on_unauthorized():
            raw = transport.request(
                "GET",
                "/auth/whoami",
                None,
                {"accept": "application/json", **auth.headers()},
                timeout,
            )
    finally:
        transport.close()
    try:
        body = decode_any(raw.body, Codec.JSON)
    except TetherError:
        body = None
    if raw.status >= 400 or not isinstance(body, dict):
        raise error_from_envelope(body, raw.status)
    return body


# -- tether auth: the server's store ----------------------------------------------

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="The auth store (default: auth.db in the state directory)."),
]


def _store(path: Path | None) -> Any:
    from tether.auth.store import CredentialStore
    from tether.settings import get_settings

    return CredentialStore(path or get_settings().effective_auth_store_path)


@admin.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="The user name.")],
    scope: Annotated[list[str] | None, typer.Option(help="A scope to grant (repeat).")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    store: StoreOption = None,
) -> None:
    """Add a user (or set an existing user's password and scopes).

    Asks for the password twice on a terminal; --password-stdin reads it once.
    """
    from tether.cli.output import out

    password = _read_password(name, "this server", password_stdin, confirm=True)
    _store(store).add_user(name, password, scope or [])
    out.print(f"user {name} saved (scopes: {', '.join(scope or []) or 'none'})", highlight=False)


@admin.command("remove-user")
def remove_user(
    name: Annotated[str, typer.Argument(help="The user name.")], store: StoreOption = None
) -> None:
    """Remove a user and revoke their sessions."""
    from tether.cli.output import out

    found = _store(store).remove_user(name)
    out.print(f"user {name} removed" if found else f"no user {name}", highlight=False)


@admin.command("users")
def users(store: StoreOption = None) -> None:
    """List the users."""
    from tether.cli.output import emit

    emit(_store(store).users())


@admin.command("add-key")
def add_key(
    subject: Annotated[str, typer.Argument(help="Who the key is for.")],
    scope: Annotated[list[str] | None, typer.Option(help="A scope to grant (repeat).")] = None,
    expires_in: Annotated[float | None, typer.Option(help="Seconds the key is valid.")] = None,
    store: StoreOption = None,
) -> None:
    """Make an API key and print it (it is shown only this once; the store keeps a hash)."""
    key = _store(store).add_api_key(subject, scope or [], expires_in=expires_in)
    sys.stdout.write(key + "\n")


@admin.command("revoke-key")
def revoke_key(
    key: Annotated[str, typer.Argument(help="The key, or its id.")], store: StoreOption = None
) -> None:
    """Revoke an API key."""
    from tether.cli.output import out

    found = _store(store).revoke_api_key(key)
    out.print("key revoked" if found else "no such key", highlight=False)


@admin.command("fingerprint")
def fingerprint(cert: Annotated[Path, typer.Argument(help="A certificate (PEM).")]) -> None:
    """Print a certificate's SHA-256 fingerprint, to pin it (--pin-sha256)."""
    from tether.client.tls import fingerprint as sha256

    sys.stdout.write(sha256(cert) + "\n")


def register(app: typer.Typer) -> None:
    """Add ``login``, ``logout``, ``whoami`` and the ``auth`` group to the ``tether`` app."""
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.add_typer(admin, name="auth")
