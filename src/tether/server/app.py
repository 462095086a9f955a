"""The App: hosts implementations and is the ASGI application that serves them.

Routing is a handful of string comparisons, not a framework router, since it
sits on every call; the rare routes (descriptions, OpenAPI, health) share
the same small function.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_core import to_json

from tether.codec import Codec
from tether.errors import StatusCode, TetherError
from tether.interface import interfaces_of, service_spec
from tether.server.dispatcher import (
    DEFAULT_MAX_BODY_SIZE,
    Dispatcher,
    Response,
    body_too_large,
    error_codec,
    error_response,
)
from tether.server.health import HealthCheck, HealthStatus, run_checks, service_health
from tether.server.openapi import docs_page, openapi_document

if TYPE_CHECKING:
    from tether.auth.authenticator import Authenticator
    from tether.auth.config import AuthConfig
    from tether.jobs.manager import JobManager
    from tether.server.metrics import Metrics
    from tether.settings import Settings

log = logging.getLogger("tether.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["DEFAULT_MAX_BODY_SIZE", "App"]


class App:
    """Hosts service implementations; an ASGI 3 application.

    Serve it with ``tether serve module:app`` or any ASGI server, or mount it
    into FastAPI/Starlette (``fastapi_app.mount("/tether", app)``); a mounted
    App's start-up and shutdown hooks run only when the outer app's lifespan
    runs them: ``FastAPI(lifespan=app.lifespan)`` (see :meth:`lifespan`).

    Args:
        *implementations: objects whose classes implement service interfaces.
        title: the name shown in OpenAPI and ``/docs``.
        version: the App's version, shown in OpenAPI.
        debug: send tracebacks of unexpected errors to callers.
        max_body_size: largest request body in bytes; larger gets 413.
        max_workers: threads for sync methods.
        instance_id: this instance's id (default: random hex).
        job_store: the job store's URL (``sqlite:///...``, ``postgresql://...``);
            default: ``TETHER_JOB_STORE_URL`` or ``jobs.db`` in the state directory.
            Used once a job type is registered (see :meth:`job`).
        auth: authentication and authorization (:class:`tether.auth.AuthConfig`):
            every route but ``/healthz``, ``/readyz`` and ``/auth/{login,refresh,logout}``
            then needs an identity, the ``/auth`` endpoints are mounted, and
            scopes are checked before each method runs.
        metrics: keep Prometheus metrics and serve them at ``GET /metrics``;
            False counts nothing and ``/metrics`` is 404.
        settings: preferences for this App (:class:`tether.settings.Settings`):
            where the default job store and auth store live. Default: the
            process-wide :func:`tether.settings.get_settings`, read when first
            needed.

    Routes: ``POST /rpc/{service}/{method}``, ``GET /rpc``,
    ``GET /rpc/{service}``, ``GET /openapi.json``, ``GET /docs``,
    ``GET /metrics``, ``GET /healthz``, ``GET /readyz``; once a job type is
    registered, the jobs API under ``/jobs`` (see :mod:`tether.jobs.api`).

    Metrics:
        ``GET /metrics`` serves the App's Prometheus metrics in the text
        format (``text/plain; version=0.0.4``) from a registry of its own
        (:attr:`metrics` ``.registry``, not ``prometheus_client``'s global
        one, so Apps in one process do not mix; register more metrics
        there to serve them too):

        * ``tether_calls_total{service,method,code}``: calls answered, by
          status code (``ok``, ``invalid_argument``, ``internal``...);
        * ``tether_call_duration_seconds{service,method}``: histogram of the
          time to answer a call (100 us to 10 s buckets);
        * ``tether_calls_in_flight{service,method}``: calls running now;
        * with a job store, ``tether_jobs_submitted_total{type}`` and
          ``tether_jobs_completed_total{type,state}`` (``succeeded``,
          ``failed``, ``cancelled``).

        Every call the App serves counts, whatever carried it (HTTP, the
        relay, an integrated connection); calls of an unknown service or
        method count under ``"(unknown)"``. Counting costs about a
        microsecond a call. With ``auth``, ``/metrics`` needs an identity
        like every route but the open ones (``AuthConfig.route_scopes``
        may ask a scope of it: ``{"/metrics": ["metrics"]}``). Each worker
        process of a server keeps its own figures (a scrape sees the
        process that answers it).
    """

    def __init__(
        self,
        *implementations: object,
        title: str = "Tether",
        version: str = "0.1.0",
        debug: bool = False,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_workers: int = 32,
        instance_id: str | None = None,
        job_store: str | None = None,
        auth: AuthConfig | None = None,
        metrics: bool = True,
        settings: Settings | None = None,
    ) -> None:
        self.title = title
        #: This App's own settings, or None for the process-wide ones.
        self.settings = settings
        self.version = version
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.dispatcher = Dispatcher(
            debug=debug, max_workers=max_workers, max_body_size=max_body_size
        )
        #: The App's Prometheus metrics (:class:`tether.server.metrics.Metrics`), or None.
        self.metrics: Metrics | None = None
        if metrics:
            from tether.server.metrics import Metrics

            self.metrics = Metrics()
            self.dispatcher.metrics = self.metrics.calls
        self.health_checks: list[HealthCheck] = []
        self._openapi: bytes | None = None
        self._description: bytes | None = None
        self._mounts: list[tuple[str, ASGIApp]] = []
        self._on_startup: list[Callable[[], Awaitable[None]]] = []
        self._on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self._started = False
        self._job_store_url = job_store
        self._jobs: JobManager | None = None
        self.auth: Authenticator | None = None
        if auth is not None:
            from tether.auth.authenticator import Authenticator
            from tether.auth.endpoints import auth_app

            self.auth = self.dispatcher.auth = Authenticator(auth, settings=settings)
            self.mount("/auth", auth_app(self.auth))
            self.on_startup(self.auth.startup)
        for impl in implementations:
            self.add(impl)

    def __repr__(self) -> str:
        return f"<tether.App {self.title!r} instance={self.instance_id} services={self.services}>"

    @property
    def services(self) -> list[str]:
        """Names of the hosted services."""
        return sorted(self.dispatcher.services)

    @property
    def asgi(self) -> App:
        """The ASGI application (the App itself), for mounting."""
        return self

    @property
    def max_body_size(self) -> int:
        """The largest request body in bytes; a larger one gets ``resource_exhausted``
        (HTTP 413) over HTTP, the relay and integrated connections alike."""
        return self.dispatcher.max_body_size

    @max_body_size.setter
    def max_body_size(self, limit: int) -> None:
        self.dispatcher.max_body_size = limit

    def add(self, implementation: object, *, interface: type | None = None) -> None:
        """Host an implementation of one or more service interfaces.

        Args:
            implementation: an instance; its class derives from the interface(s).
            interface: the interface to serve, when the class does not derive
                from it (duck-typed implementations).

        Raises:
            TypeError: no interface found, or a method is missing.
            ValueError: a service of that name is hosted already.
        """
        found = [interface] if interface is not None else interfaces_of(implementation)
        if not found:
            raise TypeError(
                f"{type(implementation).__name__} implements no service interface; derive it "
                "from a class decorated with @tether.service, or pass interface="
            )
        for iface in found:
            self.dispatcher.add(service_spec(iface), implementation)
        self._openapi = self._description = None

    def mount(self, prefix: str, asgi_app: ASGIApp) -> None:
        """Serve another ASGI app under ``prefix`` (e.g. the jobs API at ``/jobs``).

        The sub-app sees ``root_path`` extended by ``prefix`` and the full
        ``path``, as Starlette's ``Mount`` passes them.

        Raises:
            ValueError: ``prefix`` does not start with ``/`` or clashes with
                Tether's own routes.
        """
        prefix = prefix.rstrip("/")
        taken = ("/rpc", "/healthz", "/readyz", "/docs") + (
            ("/metrics",) if self.metrics is not None else ()
        )
        if not prefix.startswith("/") or prefix in taken:
            raise ValueError(f"cannot mount at {prefix!r}")
        self._mounts.append((prefix, asgi_app))

    def routes(self) -> list[tuple[str, str]]:
        """Every route as ``(verb, path)``; a mounted app's routes when it lists
        them (Starlette's ``routes`` or ``router.routes``), else ``("*", prefix + "/...")``."""
        found = [("GET", p) for p in ("/healthz", "/readyz", "/rpc", "/openapi.json", "/docs")]
        if self.metrics is not None:
            found.append(("GET", "/metrics"))
        for name, spec in self.dispatcher.services.items():
            found.append(("GET", f"/rpc/{name}"))
            found += [("POST", f"/rpc/{name}/{m}") for m in spec.methods]
        for prefix, sub in self._mounts:
            listed = getattr(sub, "routes", None) or getattr(
                getattr(sub, "router", None), "routes", None
            )
            if not isinstance(listed, list) or not listed:
                found.append(("*", prefix + "/..."))
                continue
            for route in listed:
                path = getattr(route, "path", "")
                for verb in sorted(getattr(route, "methods", None) or {"*"}):
                    if verb != "HEAD":
                        found.append((verb, prefix + path))
        return found

    def on_startup(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register a coroutine function run at ASGI lifespan start-up (or :meth:`startup`)."""
        self._on_startup.append(fn)
        return fn

    def on_shutdown(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register a coroutine function run at shutdown, in reverse order of registration."""
        self._on_shutdown.append(fn)
        return fn

    @asynccontextmanager
    async def lifespan(self, parent: object = None) -> AsyncIterator[None]:
        """Run :meth:`startup` on entry and :meth:`shutdown` on exit: the lifespan to
        give a FastAPI or Starlette app this App is mounted into.

        A mounted App receives no ASGI lifespan events of its own (Starlette
        sends them to the outer app only), so without this its start-up hooks
        (the job store, auth's store, the relay and registry hooks) never run::

            outer = FastAPI(lifespan=app.lifespan)
            outer.mount("/tether", app)

        Args:
            parent: the outer app, which Starlette passes; unused.

        Raises:
            Exception: whatever a start-up hook raised (a registry or NATS that
                cannot be reached, say), on entry: the shutdown hooks have then
                run, as :meth:`startup` says, and the outer app's start-up
                fails with that error.
        """
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Run the start-up hooks, in order of registration (the ASGI lifespan calls
        this; so may a host). Once they all succeeded, a later call does nothing.

        When a hook raises, the App is not started: the shutdown hooks run
        (in reverse order, their own errors logged) so that what the earlier
        hooks opened (a NATS connection, a registry, their tasks) is closed
        again, and the hook's error propagates. A later call then runs the
        start-up hooks again. Shutdown hooks therefore cope with a start-up
        that did not happen, as the built-in ones do.

        Raises:
            Exception: the first error a start-up hook raised.
        """
        if self._started:
            return
        try:
            for fn in self._on_startup:
                await fn()
        except BaseException:
            await self._run_shutdown_hooks()
            raise
        self._started = True

    async def shutdown(self) -> None:
        """Run the shutdown hooks (reverse order), then stop the thread pool."""
        if self._started:
            self._started = False
            await self._run_shutdown_hooks()
        self.dispatcher.close()

    async def _run_shutdown_hooks(self) -> None:
        for fn in reversed(self._on_shutdown):
            try:
                await fn()
            except Exception:
                log.exception("shutdown hook %r failed", fn)

    def health_check(
        self,
        name: str | None = None,
        *,
        timeout: float = 5.0,
        cache: float = 0.0,
        services: Sequence[str] | None = None,
    ) -> Callable[[F], F]:
        """Register a readiness check (decorator) reported by ``GET /readyz``.

        The function takes no arguments, sync (run in a thread of its own,
        never the methods' thread pool, and not started again while a run is
        still going) or async; it fails by raising or returning ``False``.

        Args:
            name: the check's name (default: the function's name).
            timeout: seconds before the check counts as failed (and is cancelled).
            cache: seconds to reuse a result.
            services: the services that depend on the check (default: all);
                while it fails, only these are unhealthy in the registry.

        Raises:
            ValueError: ``services`` names a service the App does not host.
        """
        unknown = set(services or ()) - set(self.dispatcher.services)
        if unknown:
            raise ValueError(
                f"health check for unknown services {sorted(unknown)}; "
                f"this App hosts {sorted(self.dispatcher.services)}"
            )

        def decorate(fn: F) -> F:
            self.health_checks.append(
                HealthCheck(
                    name or fn.__name__,
                    fn,
                    timeout,
                    cache,
                    tuple(services) if services is not None else None,
                )
            )
            return fn

        return decorate

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Run the readiness checks: ``(ready, {name: result})``."""
        return await run_checks(self.health_checks)

    async def service_health(self) -> tuple[bool, dict[str, HealthStatus]]:
        """Run the readiness checks: ``(ready, {service: "passing"|"failing"})``."""
        ready, results = await self.readiness()
        return ready, service_health(self.health_checks, results, self.dispatcher.services)

    def describe(self) -> dict[str, Any]:
        """The description served at ``GET /rpc``: every service with schemas."""
        return {
            "protocol": "tether/1",
            "title": self.title,
            "instance_id": self.instance_id,
            "services": [s.describe() for s in self.dispatcher.services.values()],
            "job_types": self._jobs.types.describe() if self._jobs is not None else [],
        }

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document served at ``GET /openapi.json``."""
        document = openapi_document(
            self.dispatcher.services, title=self.title, version=self.version
        )
        if self._jobs is not None:
            from tether.jobs.openapi import add_jobs_openapi

            add_jobs_openapi(document, self._jobs.types)
        if self.auth is not None:
            self._add_security(document)
        return document

    def _add_security(self, document: dict[str, Any]) -> None:
        """Declare the bearer scheme, and each RPC operation's required scopes (as roles)."""
        assert self.auth is not None
        document.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An access token from POST /auth/login or an OpenID Connect "
                "provider, or an API key. Client certificates (mutual TLS) work too.",
            }
        }
        document["security"] = [{"bearer": []}]
        for spec in self.dispatcher.services.values():
            for method in spec.methods.values():
                operation = document["paths"][f"/rpc/{spec.name}/{method.name}"]["post"]
                operation["security"] = [{"bearer": sorted(self.auth.required_scopes(method))}]
                operation["responses"].setdefault(
                    "401", {"description": "No valid credentials (unauthenticated)."}
                )
                operation["responses"].setdefault(
                    "403", {"description": "A required scope is missing (permission_denied)."}
                )

    # -- jobs ---------------------------------------------------------------

    @property
    def jobs(self) -> JobManager:
        """The App's jobs: job types and store (:class:`tether.jobs.JobManager`).

        Made on first use, which also mounts the jobs HTTP API at ``/jobs``
        and opens the store at start-up (closing it at shutdown).
        """
        if self._jobs is None:
            from tether.jobs.api import JobsAPI
            from tether.jobs.manager import JobManager

            store_url = self._job_store_url
            if store_url is None and self.settings is not None:
                store_url = self.settings.effective_job_store_url
            manager = JobManager(
                store_url=store_url,
                observer=self.metrics.jobs if self.metrics is not None else None,
            )
            self.mount("/jobs", JobsAPI(manager, max_body_size=self.max_body_size))

            async def open_jobs() -> None:
                await manager.open()

            self.on_startup(open_jobs)
            self.on_shutdown(manager.close)
            self._jobs = manager
        return self._jobs

    def job(
        self,
        name: str | None = None,
        *,
        max_attempts: int = 3,
        backoff: float = 1.0,
        timeout: float | None = None,
        priority: int = 0,
        queue: str = "default",
        scopes: Sequence[str] = (),
    ) -> Callable[[F], F]:
        """Register a typed function as a job type and its handler (decorator).

        The function is ``fn(parameters: P) -> R`` or ``fn(parameters: P, ctx) -> R``
        (sync or async; ``ctx`` is a :class:`tether.jobs.JobContext`); the hints
        of ``P`` and ``R`` (pydantic models, TypedDicts, dataclasses...) give the
        parameters and result JSON Schemas.

        Args:
            name: the job type's name (default: the function's name).
            max_attempts: starts allowed before the job fails for good.
            backoff: seconds before the first retry, doubling for each next one.
            timeout: seconds one attempt may run, or None. Past it the attempt
                fails with ``deadline_exceeded``: an async handler is cancelled; a
                sync one is asked to stop (``ctx.cancelled``) and keeps its job's
                lease until it returns, but one worker lease at most, after which
                the attempt fails anyway and its thread is left running (see
                :class:`tether.jobs.JobOptions`).
            priority: default priority (higher runs first).
            queue: default queue.
            scopes: scope names (a list, not a string) a caller needs to submit
                jobs of this type (with auth on), besides ``jobs.submit``'s own;
                reading and cancelling them need ``jobs.read`` and ``jobs.cancel``.

        Raises:
            TypeError: missing hints, or types that are not JSON objects.
            ValueError: bad name or options (``scopes`` a plain string included),
                or the name is taken.
        """
        from tether.jobs.types import JobOptions, scope_names

        options = JobOptions(max_attempts, backoff, timeout, priority, queue, scope_names(scopes))

        def decorate(fn: F) -> F:
            self.jobs.types.register_function(fn, name=name, options=options)
            self._openapi = self._description = None
            return fn

        return decorate

    def register_job_type(
        self,
        name: str,
        *,
        parameters_schema: dict[str, Any],
        result_schema: dict[str, Any],
        handler: Callable[..., Any] | None = None,
        doc: str = "",
        max_attempts: int = 3,
        backoff: float = 1.0,
        timeout: float | None = None,
        priority: int = 0,
        queue: str = "default",
        scopes: Sequence[str] = (),
    ) -> None:
        """Register a job type from raw JSON Schema dicts (Draft 2020-12), as TopChef does.

        Args:
            name: the job type's name.
            parameters_schema, result_schema: JSON Schemas of JSON objects.
            handler: optional ``fn(parameters: dict[, ctx]) -> dict`` run by workers.
            doc: description.
            max_attempts, backoff, timeout, priority, queue, scopes: as for :meth:`job`.

        Raises:
            jsonschema.SchemaError: a schema is not valid JSON Schema.
            TypeError: a schema describes something other than an object.
            ValueError: bad name or options (``scopes`` a plain string included),
                or the name is taken.
        """
        from tether.jobs.types import JobOptions, scope_names

        self.jobs.types.register(
            name,
            parameters_schema=parameters_schema,
            result_schema=result_schema,
            handler=handler,
            doc=doc,
            options=JobOptions(
                max_attempts, backoff, timeout, priority, queue, scope_names(scopes)
            ),
        )
        self._openapi = self._description = None

    # -- ASGI ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted under a prefix
        verb: str = scope["method"]
        if self.auth is not None:
            refusal = self.auth.admit(scope, path, verb)
            if refusal is not None:
                codec = Codec.JSON
                if verb == "POST" and _is_call(path):
                    codec = error_codec(_headers(scope))  # a caller that speaks msgpack
                    if self.metrics is not None:
                        _, _, service, method = path.split("/")
                        self.metrics.calls.record(service, method, str(refusal.code), None)
                return await _send(send, error_response(refusal, codec), _challenge(refusal))
        if path.startswith("/rpc/") and path.count("/") == 3:
            if verb != "POST":
                if verb == "GET":
                    return await _send(send, await self._get(path, root))
                return await _send(send, _method_not_allowed(verb, "POST"))
            _, _, service, method = path.split("/")
            headers = _headers(scope)
            try:
                body = await _read_body(receive, headers, self.dispatcher.max_body_size)
            except TetherError as exc:
                if self.metrics is not None:
                    self.metrics.calls.record(service, method, str(exc.code), None)
                return await _send(send, error_response(exc, error_codec(headers)))
            # Each ASGI request runs in a task of its own: no task per call.
            response = await self.dispatcher.dispatch(
                service, method, body, headers, own_task=False
            )
            rid = headers.get("tether-request-id")
            return await _send(
                send, response, ((b"tether-request-id", rid.encode()),) if rid else ()
            )
        for prefix, sub in self._mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return await sub({**scope, "root_path": root + prefix}, receive, send)
        if verb not in ("GET", "HEAD"):
            return await _send(send, _method_not_allowed(verb, "GET"))
        await _send(send, await self._get(path, root))

    async def _get(self, path: str, root: str) -> Response:
        if path == "/healthz":
            return _json(200, {"status": "live", "instance_id": self.instance_id})
        if path == "/readyz":
            ready, checks = await self.readiness()
            status = "ready" if ready else "not ready"
            services = service_health(self.health_checks, checks, self.dispatcher.services)
            return _json(
                200 if ready else 503, {"status": status, "checks": checks, "services": services}
            )
        if path == "/rpc":
            if self._description is None:
                self._description = to_json(self.describe())
            return Response(200, "application/json", self._description)
        if path.startswith("/rpc/") and path.count("/") == 2:
            spec = self.dispatcher.services.get(path[5:])
            if spec is not None:
                return _json(200, spec.describe())
        if path.startswith("/rpc/") and path.count("/") == 3:
            return _method_not_allowed("GET", "POST")
        if path == "/openapi.json":
            if self._openapi is None:
                self._openapi = to_json(self.openapi())
            return Response(200, "application/json", self._openapi)
        if path == "/docs":
            page = docs_page(self.title, f"{root}/openapi.json")
            return Response(200, "text/html; charset=utf-8", page.encode())
        if path == "/metrics" and self.metrics is not None:
            from tether.server.metrics import CONTENT_TYPE

            return Response(200, CONTENT_TYPE, self.metrics.render())
        return error_response(
            TetherError(
                f"no route {path!r}; RPC calls are POST /rpc/{{service}}/{{method}}",
                code=StatusCode.NOT_FOUND,
            )
        )


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by (lower-case) name."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise TetherError("the client went away", code=StatusCode.CANCELLED)
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the usual case: the whole body in one message
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def _is_call(path: str) -> bool:
    """True for ``/rpc/{service}/{method}``."""
    return path.startswith("/rpc/") and path.count("/") == 3


def _challenge(exc: TetherError) -> tuple[tuple[bytes, bytes], ...]:
    if exc.code is StatusCode.UNAUTHENTICATED:
        return ((b"www-authenticate", b'Bearer realm="tether"'),)
    return ()


def _json(status: int, payload: Any) -> Response:
    return Response(status, "application/json", to_json(payload))


def _method_not_allowed(verb: str, allowed: str) -> Response:
    return error_response(
        TetherError(
            f"method {verb} not allowed here; use {allowed}",
            code=StatusCode.UNIMPLEMENTED,
            http_status=405,
        ),
        Codec.JSON,
    )


_CONTENT_TYPES: dict[str, bytes] = {
    "application/json": b"application/json",
    "application/msgpack": b"application/msgpack",
}


async def _send(
    send: Send, response: Response, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    content_type = _CONTENT_TYPES.get(response.content_type) or response.content_type.encode()
    body = response.body
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if extra:
        headers.extend(extra)
    if response.status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
