"""The ``/auth`` endpoints (Starlette; off the RPC hot path).

- ``POST /auth/login``: ``{"username", "password"}`` (JSON, or an OAuth 2
  password-grant form) -> a token response (access and refresh tokens).
- ``POST /auth/refresh``: ``{"refresh_token"}`` -> a new token response;
  the old refresh token is spent (using it again revokes the session).
- ``POST /auth/logout``: ``{"refresh_token"}`` and/or an access token in
  ``authorization`` -> ``{"revoked": bool}``.
- ``GET /auth/whoami``: the caller's identity (needs one, like every route
  but login, refresh and logout).

Errors use Tether's envelope ``{"error": {"code", "message", "details", "type"}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.auth.authenticator import Authenticator, request_identity
from tether.auth.errors import AuthenticationFailed, TooManyAttempts
from tether.errors import StatusCode, TetherError


def _error(exc: TetherError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, TooManyAttempts) and isinstance(exc.details, dict):
        headers["retry-after"] = str(exc.details.get("retry_after", 1))
    if exc.code is StatusCode.UNAUTHENTICATED:
        headers["www-authenticate"] = 'Bearer realm="tether"'
    return JSONResponse(exc.to_envelope(), exc.http_status, headers=headers)


async def _fields(request: Request, *names: str) -> dict[str, str]:
    kind = request.headers.get("content-type", "")
    data: Any
    try:
        if kind.startswith("application/x-www-form-urlencoded"):  # OAuth 2 password grant
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
            data = {k: v[0] for k, v in form.items()}
        else:
            body = await request.body()
            data = await request.json() if body else {}
    except ValueError:
        raise TetherError(
            "the body must be a JSON object", code=StatusCode.INVALID_ARGUMENT
        ) from None
    if not isinstance(data, dict):
        raise TetherError("the body must be a JSON object", code=StatusCode.INVALID_ARGUMENT)
    values = {n: data.get(n) for n in names}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise TetherError(f"{name} must be a string", code=StatusCode.INVALID_ARGUMENT)
    return {k: v for k, v in values.items() if v}


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(fn: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await fn(request)
        except TetherError as exc:
            return _error(exc)

    return run


def auth_app(auth: Authenticator) -> Starlette:
    """The ASGI app the App mounts at ``/auth``."""

    async def login(request: Request) -> Response:
        fields = await _fields(request, "username", "password")
        if "username" not in fields:
            raise AuthenticationFailed("a user name is required", refused="user")
        if "password" not in fields:
            raise AuthenticationFailed("a password is required", refused="password")
        address = request.client.host if request.client else None
        body = await run_in_threadpool(auth.login, fields["username"], fields["password"], address)
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def refresh(request: Request) -> Response:
        fields = await _fields(request, "refresh_token")
        if "refresh_token" not in fields:
            raise AuthenticationFailed("a refresh_token is required", refused="refresh_token")
        body = await run_in_threadpool(auth.refresh, fields["refresh_token"])
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def logout(request: Request) -> Response:
        fields = await _fields(request, "refresh_token")
        identity = None
        if request.headers.get("authorization"):
            try:
                identity = auth.authenticate(request.headers)
            except AuthenticationFailed:
                identity = None
        revoked = await run_in_threadpool(auth.logout, fields.get("refresh_token"), identity)
        return JSONResponse({"revoked": revoked})

    async def whoami(request: Request) -> Response:
        identity = request_identity(request.scope)
        if identity is None:
            raise AuthenticationFailed("authentication required", refused="credentials")
        return JSONResponse(identity.describe())

    return Starlette(
        routes=[
            Route("/login", _guarded(login), methods=["POST"]),
            Route("/refresh", _guarded(refresh), methods=["POST"]),
            Route("/logout", _guarded(logout), methods=["POST"]),
            Route("/whoami", _guarded(whoami), methods=["GET"]),
        ]
    )
