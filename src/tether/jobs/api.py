"""The jobs HTTP API, an ASGI app the App mounts at ``/jobs`` (Starlette, off the RPC hot path).

For submitters and for workers written in any language; every body is JSON,
every error the envelope ``{"error": {"code", "message", "details", "type"}}``.

=======  ===============================  ==================================================
verb     path                             what
=======  ===============================  ==================================================
POST     /jobs                            submit ``{type, parameters, queue?, priority?,
                                          max_attempts?, run_at?, delay?, idempotency_key?}``
                                          -> 201 job; 422 invalid parameters (nothing stored)
GET      /jobs                            list ``?type=&state=&queue=&limit=&cursor=``
                                          -> ``{jobs, next_cursor}``
GET      /jobs/{id}                       the job
POST     /jobs/{id}/cancel                cancel -> the job
GET      /jobs/{id}/wait                  long poll ``?timeout=S[&since_version=V]``
GET      /jobs/types[/{name}]             job types with their schemas
POST     /jobs/types/{name}/validate      ``{parameters?, result?}`` -> ``{valid, errors}``
POST     /jobs/claim                      ``{worker_id, queues?, types?, limit?,
                                          lease_seconds?, wait?}`` -> ``{jobs}``; 204 if none
POST     /jobs/{id}/heartbeat             ``{lease_token, lease_seconds?, progress?, message?}``
                                          -> ``{cancel_requested}``
POST     /jobs/{id}/complete              ``{lease_token, result}`` -> job; 422 invalid result
                                          (the job fails with ``processing_error``)
POST     /jobs/{id}/fail                  ``{lease_token, error, retry?: bool, retry_delay?}``
                                          -> job
POST     /jobs/{id}/release               ``{lease_token}``: hand back unfinished -> job
POST     /jobs/{id}/mark-cancelled        ``{lease_token}``: acknowledge a cancellation
=======  ===============================  ==================================================

A lost lease answers 409 (``aborted``).

Under an App with auth, each route is an action whose scopes come from
``AuthConfig.scopes``: ``jobs.submit`` (``POST /jobs``, plus the job type's own
``scopes``), ``jobs.read`` (list, get, wait, types, validate), ``jobs.cancel``
and ``jobs.work`` (claim, heartbeat, complete, fail, release, mark-cancelled).
An action ``AuthConfig.scopes`` leaves out needs the scopes of
``DEFAULT_ACTION_SCOPES``: ``jobs.work`` the scope ``jobs.work`` (so that not
every identity may take and finish jobs), the others only an identity. A
missing scope answers 403 ``permission_denied``. A job type's own scopes guard
submitting it only: reading and cancelling its jobs take ``jobs.read`` and
``jobs.cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from tether.auth.identity import AUTHENTICATOR_KEY
from tether.errors import StatusCode, TetherError
from tether.jobs.errors import JobStoreError
from tether.jobs.exceptions import InvalidResult, JobValidationError
from tether.jobs.manager import JobManager
from tether.jobs.model import Job
from tether.jobs.store.base import (
    MAX_CLAIM_LIMIT,
    MAX_DELAY_SECONDS,
    MAX_LEASE_SECONDS,
    MAX_LIST_LIMIT,
)
from tether.jobs.wire import job_to_wire

#: Longest long poll (``wait`` of a claim, ``timeout`` of a wait), in seconds.
MAX_WAIT = 300.0
#: Default lease of a claim over HTTP, in seconds.
DEFAULT_LEASE = 30.0

Endpoint = Callable[[Request], Awaitable[Response]]

#: The action (a name in ``AuthConfig.scopes``) each endpoint performs.
ACTIONS: dict[str, str] = {
    "submit": "jobs.submit",
    "list_jobs": "jobs.read",
    "get": "jobs.read",
    "wait": "jobs.read",
    "list_types": "jobs.read",
    "get_type": "jobs.read",
    "validate": "jobs.read",
    "cancel": "jobs.cancel",
    "claim": "jobs.work",
    "heartbeat": "jobs.work",
    "complete": "jobs.work",
    "fail": "jobs.work",
    "release": "jobs.work",
    "mark_cancelled": "jobs.work",
}
#: Scopes an action needs when ``AuthConfig.scopes`` does not name it.
DEFAULT_ACTION_SCOPES: dict[str, tuple[str, ...]] = {"jobs.work": ("jobs.work",)}


def authorize(request: Request, action: str, extra: Iterable[str] = ()) -> None:
    """Check that the caller may perform ``action`` (plus the scopes ``extra``):
    the scopes ``AuthConfig.scopes`` names for it, else ``DEFAULT_ACTION_SCOPES``'s;
    nothing to check when the App runs without auth.

    Raises:
        tether.AuthenticationFailed: auth is on but the request carries no identity.
        tether.PermissionDenied: a required scope is missing (403).
    """
    if AUTHENTICATOR_KEY not in (request.scope.get("state") or {}):
        return  # no auth: nothing to check (and the auth modules stay unloaded)
    from tether.auth.authenticator import authorize_request

    authorize_request(request.scope, action, extra, DEFAULT_ACTION_SCOPES.get(action, ()))


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(payload), status, headers, media_type="application/json")


def _error(
    status: int, code: str, message: str, details: Any = None, kind: str | None = None
) -> Response:
    envelope = {"error": {"code": code, "message": message, "details": details, "type": kind}}
    try:
        return _json(status, envelope)
    except (TypeError, ValueError):
        envelope["error"]["details"] = None
        return _json(status, envelope)


def _bad(message: str, details: Any = None) -> TetherError:
    return TetherError(message, details, code=StatusCode.INVALID_ARGUMENT)


def _guard(fn: Endpoint) -> Endpoint:
    """Turn the errors an endpoint raises into envelopes with their HTTP status."""

    action = ACTIONS[fn.__name__]

    async def endpoint(request: Request) -> Response:
        try:
            authorize(request, action)
            return await fn(request)
        except InvalidResult as exc:
            details = {"errors": exc.details, "job": job_to_wire(exc.job) if exc.job else None}
            return _error(422, exc.code.value, exc.message, details, exc.error_name)
        except TetherError as exc:
            return _error(
                exc.http_status,
                exc.code.value,
                exc.message,
                exc.details,
                getattr(exc, "error_name", None),
            )
        except JobStoreError as exc:
            return _error(exc.http_status, exc.code, exc.message, exc.details, type(exc).__name__)
        except ValueError as exc:
            return _error(400, StatusCode.INVALID_ARGUMENT.value, str(exc))

    endpoint.__name__ = fn.__name__
    return endpoint


_VERBS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _route(path: str, **handlers: Endpoint) -> Route:
    """A route answering the given verbs (``GET=...``); others get a 405 envelope."""
    guarded = {verb: _guard(fn) for verb, fn in handlers.items()}
    allowed = ", ".join(sorted(guarded))

    async def endpoint(request: Request) -> Response:
        handler = guarded.get(request.method) or (
            guarded.get("GET") if request.method == "HEAD" else None
        )
        if handler is None:
            return _error(
                405,
                StatusCode.UNIMPLEMENTED.value,
                f"method {request.method} not allowed here; use {allowed}",
            )
        return await handler(request)

    return Route(path, endpoint, methods=_VERBS)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    response = _error(404, StatusCode.NOT_FOUND.value, f"no jobs route {scope['path']!r}")
    await response(scope, receive, send)


class JobsAPI:
    """The ASGI app of the jobs API over one :class:`JobManager`.

    Args:
        manager: job types and store.
        max_body_size: largest request body in bytes (413 past it).
    """

    def __init__(self, manager: JobManager, *, max_body_size: int = 8 * 1024 * 1024) -> None:
        self.manager = manager
        self.max_body_size = max_body_size
        self.router = Router(
            routes=[
                _route("/", GET=self.list_jobs, POST=self.submit),
                _route("/types", GET=self.list_types),
                _route("/types/{name}", GET=self.get_type),
                _route("/types/{name}/validate", POST=self.validate),
                _route("/claim", POST=self.claim),
                _route("/{job_id}", GET=self.get),
                _route("/{job_id}/cancel", POST=self.cancel),
                _route("/{job_id}/wait", GET=self.wait),
                _route("/{job_id}/heartbeat", POST=self.heartbeat),
                _route("/{job_id}/complete", POST=self.complete),
                _route("/{job_id}/fail", POST=self.fail),
                _route("/{job_id}/release", POST=self.release),
                _route("/{job_id}/mark-cancelled", POST=self.mark_cancelled),
            ],
            redirect_slashes=False,
            default=_not_found,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry; ``root_path`` is where the API is mounted (``/jobs``)."""
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path = scope["path"]
        if path == root or not path.startswith(root):
            scope = {**scope, "path": root + "/"}
        try:
            await self.router(scope, receive, send)
        except Exception as exc:  # a bug here must still answer an envelope
            import logging

            logging.getLogger("tether.jobs").exception("jobs API error")
            response = _error(
                500, StatusCode.INTERNAL.value, f"internal error: {type(exc).__name__}"
            )
            with contextlib.suppress(Exception):
                await response(scope, receive, send)

    # -- helpers -------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            raise TetherError(
                f"request body larger than the limit of {self.max_body_size} bytes",
                code=StatusCode.RESOURCE_EXHAUSTED,
                http_status=413,
            )
        raw = await request.body()
        if len(raw) > self.max_body_size:
            raise TetherError(
                f"request body larger than the limit of {self.max_body_size} bytes",
                code=StatusCode.RESOURCE_EXHAUSTED,
                http_status=413,
            )
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(f"malformed JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise _bad("the body must be a JSON object")
        return data

    @staticmethod
    def _lease_token(body: dict[str, Any]) -> str:
        token = body.get("lease_token")
        if not isinstance(token, str) or not token:
            raise _bad("lease_token (a string) is required")
        return token

    async def _until_disconnect(self, request: Request) -> None:
        """Return when the client goes away (for long polls)."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def _or_disconnect(self, request: Request, work: Coroutine[Any, Any, Any]) -> bool:
        """Run ``work`` unless the client leaves first; True when it left."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(self._until_disconnect(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, gone):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        if task.done() and not task.cancelled():
            task.result()  # raise what the work raised
        return gone.done() and not gone.cancelled()

    # -- submitters ----------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        """POST /jobs: validate and store a job."""
        body = await self._body(request)
        type_ = body.get("type")
        if not isinstance(type_, str) or not type_:
            raise _bad("type (a job type name) is required")
        job_scopes = self.manager.types.get(type_).options.scopes
        if job_scopes:
            authorize(request, "jobs.submit", job_scopes)
        parameters = body.get("parameters", {})
        run_at: datetime | None = None
        if body.get("run_at") is not None:
            try:
                run_at = datetime.fromisoformat(str(body["run_at"]))
            except ValueError:
                raise _bad("run_at must be an ISO 8601 date-time with a timezone") from None
        if body.get("delay") is not None:
            delay = _number(body["delay"], "delay")
            if not 0 <= delay <= MAX_DELAY_SECONDS:
                raise _bad(f"delay must be between 0 and {MAX_DELAY_SECONDS:.0f} seconds")
            run_at = datetime.now(UTC) + timedelta(seconds=delay)
        key = body.get("idempotency_key") or request.headers.get("idempotency-key")
        job = await self.manager.submit(
            type_,
            parameters,
            queue=_opt_str(body, "queue"),
            priority=_opt_int(body, "priority"),
            max_attempts=_opt_int(body, "max_attempts"),
            run_at=run_at,
            idempotency_key=None if key is None else str(key),
        )
        return _json(201, job_to_wire(job), {"location": f"{request.scope['root_path']}/{job.id}"})

    async def list_jobs(self, request: Request) -> Response:
        """GET /jobs: one page of jobs, newest first."""
        q = request.query_params
        limit = _int_param(q.get("limit"), "limit", 50)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise _bad(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        store = await self.manager.store()
        jobs, cursor = await store.list(
            type=q.get("type") or None,
            state=q.get("state") or None,
            queue=q.get("queue") or None,
            limit=limit,
            cursor=q.get("cursor") or None,
        )
        return _json(200, {"jobs": [job_to_wire(j) for j in jobs], "next_cursor": cursor})

    async def get(self, request: Request) -> Response:
        """GET /jobs/{id}."""
        store = await self.manager.store()
        return _json(200, job_to_wire(await store.get(request.path_params["job_id"])))

    async def cancel(self, request: Request) -> Response:
        """POST /jobs/{id}/cancel."""
        return _json(200, job_to_wire(await self.manager.cancel(request.path_params["job_id"])))

    async def wait(self, request: Request) -> Response:
        """GET /jobs/{id}/wait: long poll until terminal (or, with ``since_version``,
        until any change), or ``timeout`` seconds; answers the job."""
        job_id = request.path_params["job_id"]
        q = request.query_params
        timeout = min(_number(q.get("timeout", "30"), "timeout"), MAX_WAIT)
        since = q.get("since_version")
        store = await self.manager.store()
        deadline = time.monotonic() + max(timeout, 0.0)
        job = await store.get(job_id)
        base = job.version if since is None else _int_param(since, "since_version", 0)
        while not job.terminal and (since is None or job.version == base):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            result: list[Job] = []
            change = store.wait_for_change(job_id, remaining, since_version=base)
            if await self._or_disconnect(request, _append(result, change)):
                break
            job = result[0]
            base = job.version if since is None else base
        return _json(200, job_to_wire(job))

    async def list_types(self, request: Request) -> Response:
        """GET /jobs/types."""
        return _json(200, {"job_types": self.manager.types.describe()})

    async def get_type(self, request: Request) -> Response:
        """GET /jobs/types/{name}."""
        return _json(200, self.manager.types.get(request.path_params["name"]).describe())

    async def validate(self, request: Request) -> Response:
        """POST /jobs/types/{name}/validate: check parameters and/or a result."""
        job_type = self.manager.types.get(request.path_params["name"])
        body = await self._body(request)
        if "parameters" not in body and "result" not in body:
            raise _bad("give parameters, result or both")
        errors: list[dict[str, Any]] = []
        for side, check in (
            ("parameters", job_type.validate_parameters),
            ("result", job_type.validate_result),
        ):
            if side in body:
                try:
                    check(body[side])
                except JobValidationError as exc:
                    errors.extend({**e, "loc": [side, *e["loc"]]} for e in exc.errors)
        return _json(200, {"valid": not errors, "errors": errors})

    # -- workers -------------------------------------------------------------------------

    async def claim(self, request: Request) -> Response:
        """POST /jobs/claim: take up to ``limit`` jobs, waiting up to ``wait`` seconds."""
        body = await self._body(request)
        worker_id = body.get("worker_id")
        if not isinstance(worker_id, str) or not worker_id:
            raise _bad("worker_id (a string) is required")
        queues = body.get("queues") or ["default"]
        types = body.get("types")
        if not isinstance(queues, list) or not all(isinstance(x, str) for x in queues):
            raise _bad("queues must be a list of names")
        if types is not None and (
            not isinstance(types, list) or not types or not all(isinstance(x, str) for x in types)
        ):
            raise _bad("types must be a non-empty list of names, or null")
        limit = _opt_int(body, "limit") or 1
        if not 1 <= limit <= MAX_CLAIM_LIMIT:
            raise _bad(f"limit must be between 1 and {MAX_CLAIM_LIMIT}")
        lease = _lease(body)
        wait = min(max(_number(body.get("wait", 0), "wait"), 0.0), MAX_WAIT)
        store = await self.manager.store()
        deadline = time.monotonic() + wait
        while True:
            if await request.is_disconnected():
                return Response(status_code=204)  # nobody to hand jobs to
            claims = await store.claim(
                worker_id=worker_id, queues=queues, types=types, limit=limit, lease_seconds=lease
            )
            if claims and await request.is_disconnected():
                # The client left while the claim ran: give the jobs back at once
                # rather than leave them leased to nobody until the lease ends.
                for c in claims:
                    with contextlib.suppress(JobStoreError):
                        await self.manager.release(c.job.id, c.lease_token)
                return Response(status_code=204)
            if claims:
                out = []
                for c in claims:
                    entry = job_to_wire(c.job, with_lease=True)
                    jt = (
                        self.manager.types.get(c.job.type)
                        if c.job.type in self.manager.types
                        else None
                    )
                    entry["timeout"] = jt.options.timeout if jt is not None else None
                    out.append(entry)
                return _json(200, {"jobs": out})
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status_code=204)
            if await self._or_disconnect(
                request, store.wait_for_work(queues, remaining, types=types)
            ):
                return Response(status_code=204)  # nobody is listening any more

    async def heartbeat(self, request: Request) -> Response:
        """POST /jobs/{id}/heartbeat: renew the lease, record progress."""
        body = await self._body(request)
        progress = body.get("progress")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise _bad("message must be a string")
        store = await self.manager.store()
        cancel = await store.heartbeat(
            request.path_params["job_id"],
            self._lease_token(body),
            lease_seconds=_lease(body),
            progress=None if progress is None else _number(progress, "progress"),
            message=message,
        )
        return _json(200, {"cancel_requested": cancel})

    async def complete(self, request: Request) -> Response:
        """POST /jobs/{id}/complete: validate the result and finish the job."""
        body = await self._body(request)
        if "result" not in body:
            raise _bad("result is required")
        job = await self.manager.complete(
            request.path_params["job_id"], self._lease_token(body), body["result"]
        )
        return _json(200, job_to_wire(job))

    async def fail(self, request: Request) -> Response:
        """POST /jobs/{id}/fail: record a failed attempt (retried by default)."""
        body = await self._body(request)
        error = body.get("error") or {}
        if not isinstance(error, dict):
            raise _bad("error must be an object {code, message, details}")
        retry = body.get("retry", True)
        if not isinstance(retry, bool):
            raise _bad("retry must be true or false")
        delay = body.get("retry_delay")
        retry_delay = None if delay is None else _number(delay, "retry_delay")
        if retry_delay is not None and not 0 <= retry_delay <= MAX_DELAY_SECONDS:
            raise _bad(f"retry_delay must be between 0 and {MAX_DELAY_SECONDS:.0f} seconds")
        job = await self.manager.fail(
            request.path_params["job_id"],
            self._lease_token(body),
            error,
            retry=retry,
            retry_delay=retry_delay,
        )
        return _json(200, job_to_wire(job))

    async def release(self, request: Request) -> Response:
        """POST /jobs/{id}/release: hand a job back unfinished (not counted as an attempt)."""
        body = await self._body(request)
        job = await self.manager.release(request.path_params["job_id"], self._lease_token(body))
        return _json(200, job_to_wire(job))

    async def mark_cancelled(self, request: Request) -> Response:
        """POST /jobs/{id}/mark-cancelled: the worker stopped a job whose cancellation
        was requested (409 ``failed_precondition`` when none was)."""
        body = await self._body(request)
        job = await self.manager.mark_cancelled(
            request.path_params["job_id"], self._lease_token(body)
        )
        return _json(200, job_to_wire(job))


async def _append(into: list[Job], work: Awaitable[Job]) -> None:
    into.append(await work)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise _bad(f"{name} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(f"{name} must be a number") from None
    if not math.isfinite(number):
        raise _bad(f"{name} must be a finite number")
    return number


def _lease(body: dict[str, Any]) -> float:
    """The ``lease_seconds`` of a body: in (0, MAX_LEASE_SECONDS]."""
    lease = _number(body.get("lease_seconds", DEFAULT_LEASE), "lease_seconds")
    if not 0 < lease <= MAX_LEASE_SECONDS:
        raise _bad(f"lease_seconds must be > 0 and at most {MAX_LEASE_SECONDS:.0f}")
    return lease


def _int_param(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad(f"{name} must be an integer") from None


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer")
    return value


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(f"{name} must be a non-empty string")
    return value
