"""An App with auth for in-process tests: a vault service and a mounted extra app."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tether
from tether.auth import (
    AuthConfig,
    CertificateAuth,
    CredentialStore,
    Limit,
    LoginLimiter,
    authorize_request,
    fast_hasher,
)

PASSWORD = "s3cret-passw0rd-for-alice"


@tether.service(name="vault", scopes=["vault.read"])
class Vault:
    """Secrets, read with vault.read and written with vault.write as well."""

    def peek(self) -> str:
        """The stored value."""
        ...

    @tether.method(scopes=["vault.write"])
    def put(self, value: str) -> None:
        """Replace the value."""
        ...

    def caller(self) -> dict[str, Any]:
        """Who is calling, as the method sees it."""
        ...


class VaultService(Vault):
    def __init__(self) -> None:
        self.value = "gold"

    def peek(self) -> str:
        return self.value

    def put(self, value: str) -> None:
        self.value = value

    def caller(self) -> dict[str, Any]:
        call = tether.current_call()
        assert call is not None and call.identity is not None
        return dict(call.identity.describe())


async def things(request: Request) -> JSONResponse:
    """Stands for a mounted API (the jobs API): checks a named action's scopes."""
    identity = authorize_request(request.scope, "extra.things")
    return JSONResponse({"subject": identity.subject if identity else None})


def make_app(*, clock: Any = None, job_store: str | None = None) -> tether.App:
    """A fresh App, its own in-memory store: users alice (read, write), bob (read).

    Failed logins: 5 per user and 20 per address a minute (``clock`` drives refills).
    With ``job_store`` (a URL) the App also has a job type, so the jobs API is mounted.
    """
    per_user, per_address = Limit(5, 60.0), Limit(20, 60.0)
    store = CredentialStore.memory(hasher=fast_hasher())
    store.add_user(
        "alice",
        PASSWORD,
        ["vault.read", "vault.write", "introspect", "extra", "jobs", "jobs.work", "metrics"],
    )
    store.add_user("bob", "bob-password-123", ["vault.read"])
    limiter = (
        LoginLimiter(per_user, per_address, clock=clock)
        if clock
        else LoginLimiter(per_user, per_address)
    )
    extra = Starlette(routes=[Route("/things", things, methods=["GET", "POST"])])
    app = tether.App(
        VaultService(),
        title="Vault",
        job_store=job_store,
        auth=AuthConfig(
            store=store,
            audience="vault",
            scopes={"extra.things": ["extra"]},
            route_scopes={
                "/rpc": ["introspect"],
                "/openapi.json": ["introspect"],
                "/docs": ["introspect"],
                "/extra": ["extra"],
                "/jobs": ["jobs"],
                "/metrics": ["metrics"],
            },
            certificates=CertificateAuth({"robot.example.org": ["vault.read"]}),
            login_limits=limiter,
        ),
    )
    app.mount("/extra", extra)
    if job_store is not None:
        app.register_job_type(
            "echo", parameters_schema={"type": "object"}, result_schema={"type": "object"}
        )
    return app
