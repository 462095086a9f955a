"""The dispatcher: one RPC request in, one response out, for every transport.

HTTP, the in-process (integrated) connection and the relay all hand a
request to :class:`Dispatcher` as ``(service, method, body, headers)`` and
get back a :class:`Response`; so validation, deadlines and errors are the
same whatever carried the call. It is also where an App with metrics counts
and times each call (:mod:`tether.server.metrics`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import random
import time
import traceback
from collections.abc import Callable, Coroutine, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.codec import Codec, codec_for_accept, codec_for_content_type, encode_any
from tether.context import CallContext, enter_call, leave_call
from tether.errors import DeadlineExceeded, ServiceError, StatusCode, TetherError
from tether.interface import MethodSpec, ServiceSpec
from tether.transports.base import RawResponse

if TYPE_CHECKING:
    from tether.auth.authenticator import Authenticator
    from tether.server.metrics import CallMetrics, MethodStats

log = logging.getLogger("tether.server")

TIMEOUT_HEADER = "tether-timeout-ms"
REQUEST_ID_HEADER = "tether-request-id"
#: The largest request body in bytes an App accepts by default (8 MiB).
DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
# More digits than this in tether-timeout-ms (over 31 000 years) is not a deadline.
_MAX_TIMEOUT_DIGITS = 15

_clock = time.perf_counter
_CANCELLED = StatusCode.CANCELLED.value


@dataclass(frozen=True)
class Response(RawResponse):
    """A response ready to send: HTTP status, media type and body bytes.

    A :class:`RawResponse`, so the in-process transports hand it on as it is.
    """


@dataclass(frozen=True)
class HostedMethod:
    """A method spec bound to the implementation that serves it."""

    spec: MethodSpec
    function: Callable[..., Any]
    is_async: bool
    #: The method's call figures (None when the App keeps no metrics).
    stats: MethodStats | None = None


@dataclass(frozen=True)
class Prepared:
    """A request that passed routing, negotiation and validation."""

    target: HostedMethod
    arguments: dict[str, Any]
    context: CallContext
    response_codec: Codec


class Dispatcher:
    """Routes RPC requests to implementations.

    Args:
        debug: put tracebacks of unexpected exceptions into ``details``.
        max_workers: threads that run sync methods (never the event loop).
        max_body_size: the largest request body in bytes; a larger one is
            refused ``resource_exhausted`` (HTTP 413) whatever carried it.
    """

    def __init__(
        self,
        *,
        debug: bool = False,
        max_workers: int = 32,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        self.services: dict[str, ServiceSpec] = {}
        self._methods: dict[tuple[str, str], HostedMethod] = {}
        self.debug = debug
        self.max_body_size = max_body_size
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        # Set by App(auth=...): every call is authenticated and authorized in prepare.
        self.auth: Authenticator | None = None
        # Set by App(metrics=True) before any service is added: calls are counted and timed.
        self.metrics: CallMetrics | None = None

    def __repr__(self) -> str:
        return f"<Dispatcher services={sorted(self.services)}>"

    def add(self, spec: ServiceSpec, implementation: object) -> None:
        """Serve ``spec``'s methods with ``implementation``'s attributes.

        Raises:
            ValueError: a service of that name is hosted already.
            TypeError: the implementation lacks one of the methods.
        """
        if spec.name in self.services:
            raise ValueError(f"service {spec.name!r} is hosted already")
        for m in spec.methods.values():
            fn = getattr(implementation, m.attr, None)
            if not callable(fn):
                raise TypeError(f"{type(implementation).__name__} does not implement {m.attr}()")
            unbound = getattr(type(implementation), m.attr, None)
            if unbound is getattr(spec.interface, m.attr, None) and _is_stub(unbound):
                raise TypeError(
                    f"{type(implementation).__name__} does not implement {m.attr}(): it inherits "
                    "the interface's declaration"
                )
            is_async = inspect.iscoroutinefunction(fn)
            stats = None if self.metrics is None else self.metrics.add(spec.name, m.name)
            self._methods[(spec.name, m.name)] = HostedMethod(m, fn, is_async, stats)
        self.services[spec.name] = spec

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The thread pool for sync methods, created on first use."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="tether")
        return self._executor

    def close(self) -> None:
        """Stop the thread pool (calls running in it finish first)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- the call path ----------------------------------------------------

    def lookup(self, service: str, method: str) -> HostedMethod:
        """Find a hosted method.

        Raises:
            TetherError: ``unimplemented`` (HTTP 404) for an unknown service or
                method, naming the known ones.
        """
        hosted = self._methods.get((service, method))
        if hosted is not None:
            return hosted
        spec = self.services.get(service)
        if spec is None:
            known = ", ".join(sorted(self.services)) or "none"
            raise TetherError(
                f"no service {service!r} here; services: {known}",
                code=StatusCode.UNIMPLEMENTED,
                http_status=404,
            )
        spec.method(method)  # raises with the list of methods
        raise AssertionError("unreachable")

    def prepare(
        self, service: str, method: str, body: bytes, headers: Mapping[str, str]
    ) -> Prepared:
        """Authenticate and authorize (App with auth), route, negotiate codecs, read
        the deadline and validate arguments.

        Raises:
            TetherError: with the code and HTTP status to answer
                (``resource_exhausted`` with 413 for a body over
                :attr:`max_body_size`).
        """
        return Prepared(*self._prepare(service, method, body, headers))

    def _prepare(
        self, service: str, method: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[HostedMethod, dict[str, Any], CallContext, Codec]:
        # The hot path of every call: tuples, not a Prepared.
        if len(body) > self.max_body_size:
            # HTTP refuses it while reading; this covers in-process callers.
            raise body_too_large(self.max_body_size)
        target, ctx, codec, response_codec = self._route(service, method, headers)
        return target, target.spec.decode_arguments(body, codec), ctx, response_codec

    def _route(
        self, service: str, method: str, headers: Mapping[str, str], codec: Codec | None = None
    ) -> tuple[HostedMethod, CallContext, Codec, Codec]:
        """:meth:`prepare` but the arguments: ``(target, context, codec, response codec)``.

        A ``codec`` given (an in-process caller that sends and accepts that
        codec, or JSON for the python codec, the codec of error envelopes)
        skips the content negotiation: both codecs are then ``codec``.
        """
        auth = self.auth
        identity = None if auth is None else auth.authenticate_call(headers)
        target = self._methods.get((service, method))
        if target is None:
            target = self.lookup(service, method)
        if auth is not None and identity is not None:
            auth.authorize(identity, target.spec)
        get = headers.get
        if codec is None:
            codec = codec_for_content_type(get("content-type"))
            response_codec = codec_for_accept(get("accept"), codec)
        else:
            response_codec = codec
        header = get(TIMEOUT_HEADER)
        limit = target.spec.options.timeout
        now = time.monotonic()
        if header is not None:
            seconds = _header_seconds(header)
            deadline: float | None = now + (seconds if limit is None or seconds < limit else limit)
        elif limit is not None:
            deadline = now + limit
        else:
            deadline = None
        request_id = get(REQUEST_ID_HEADER) or _request_id()
        ctx = CallContext(service, method, request_id, deadline, headers, identity)
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"{service}.{method}: the deadline passed before the call ran")
        return target, ctx, codec, response_codec

    async def dispatch(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        own_task: bool = True,
    ) -> Response:
        """Serve one call on the running event loop; never raises.

        Sync methods run in the thread pool; the deadline is enforced by
        abandoning the wait (a sync method's thread cannot be interrupted and
        runs on, its result discarded).

        Args:
            own_task: run an async method with a deadline in a task of its
                own (so context variables it sets stay its own). A caller
                that runs each request in a fresh task already (an ASGI
                server) passes False, which saves a task per call.
        """
        start = _clock() if self.metrics is not None else 0.0
        try:
            target, arguments, ctx, codec = self._prepare(service, method, body, headers)
        except Exception as exc:
            return self._refused(exc, error_codec(headers), service, method, start)
        stats = target.stats
        if stats is not None:
            stats.enter()
        try:
            result = await self._invoke_async(target, arguments, ctx, own_task)
            response = Response(200, codec.content_type, target.spec.encode_result(result, codec))
        except Exception as exc:
            return self._failed(exc, codec, service, method, stats, start)
        except BaseException:
            if stats is not None:
                stats.leave(_CANCELLED, _clock() - start)
            raise
        if stats is not None:
            stats.leave_ok(_clock() - start)
        return response

    def dispatch_sync(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        run_async: Callable[[Coroutine[Any, Any, Any], float | None], Any],
    ) -> Response:
        """Serve one call in the calling thread (the integrated sync path).

        A sync method runs inline: its deadline is checked before and after
        but cannot cut it short. An async method runs through ``run_async``
        (coroutine, timeout seconds), which the sync client backs with its
        own event-loop thread. A body over :attr:`max_body_size` is refused
        ``resource_exhausted`` (413), as HTTP refuses it. Never raises.
        """
        start = _clock() if self.metrics is not None else 0.0
        try:
            target, arguments, ctx, codec = self._prepare(service, method, body, headers)
        except Exception as exc:
            return self._refused(exc, error_codec(headers), service, method, start)
        stats = target.stats
        if stats is not None:
            stats.enter()
        try:
            result = self._call_sync(target, arguments, ctx, run_async)
            response = Response(200, codec.content_type, target.spec.encode_result(result, codec))
        except Exception as exc:
            return self._failed(exc, codec, service, method, stats, start)
        except BaseException:
            if stats is not None:
                stats.leave(_CANCELLED, _clock() - start)
            raise
        if stats is not None:
            stats.leave_ok(_clock() - start)
        return response

    def dispatch_local(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        codec: Codec,
        run_async: Callable[[Coroutine[Any, Any, Any], float | None], Any],
    ) -> bytes | Response:
        """:meth:`dispatch_sync` for an in-process caller that sends ``codec`` and
        accepts it back (an integrated connection's typed calls): no content
        negotiation, and the result's bytes rather than a :class:`Response`.
        Never raises.

        Returns:
            The encoded result, or the error response.
        """
        start = _clock() if self.metrics is not None else 0.0
        try:
            if len(body) > self.max_body_size:
                raise body_too_large(self.max_body_size)
            target, ctx, _, _ = self._route(service, method, headers, codec)
            arguments = target.spec.decode_arguments(body, codec)
        except Exception as exc:
            return self._refused(exc, codec, service, method, start)
        stats = target.stats
        if stats is not None:
            stats.enter()
        try:
            if target.is_async:
                result = self._call_sync(target, arguments, ctx, run_async)
            else:  # _call_sync inline: this path is mostly overhead
                token = enter_call(ctx)
                try:
                    result = target.function(**arguments)
                finally:
                    leave_call(token)
                deadline = ctx.deadline
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded(f"{service}.{method} ran past its deadline")
            data = target.spec.encode_result(result, codec)
        except Exception as exc:
            return self._failed(exc, codec, service, method, stats, start)
        except BaseException:
            if stats is not None:
                stats.leave(_CANCELLED, _clock() - start)
            raise
        if stats is not None:
            stats.leave_ok(_clock() - start)
        return data

    def _call_sync(
        self,
        target: HostedMethod,
        arguments: dict[str, Any],
        ctx: CallContext,
        run_async: Callable[[Coroutine[Any, Any, Any], float | None], Any],
    ) -> Any:
        if target.is_async:
            return run_async(self._invoke_async(target, arguments, ctx, True), ctx.remaining())
        token = enter_call(ctx)
        try:
            result = target.function(**arguments)
        finally:
            leave_call(token)
        if ctx.deadline is not None and time.monotonic() > ctx.deadline:
            raise DeadlineExceeded(f"{ctx.service}.{ctx.method} ran past its deadline")
        return result

    # -- the python codec: in-process calls without an encoding -------------

    def invoke_local(
        self,
        spec: MethodSpec,
        arguments: Mapping[str, Any],
        headers: Mapping[str, str],
        run_async: Callable[[Coroutine[Any, Any, Any], float | None], Any],
    ) -> tuple[Any, Response | None]:
        """:meth:`dispatch_sync` for the ``python`` codec: no bytes either way.

        The arguments are validated as Python values against the hosted
        method's parameter model; the result is dumped to plain Python data
        (:meth:`MethodSpec.dump_result`) for the caller to validate into its
        own copy. Routing, auth, deadlines and the method call are those of
        :meth:`dispatch_sync`. Never raises.

        Returns:
            ``(data, None)``, or ``(None, error response)`` with a JSON error
            envelope, so the caller raises exactly what it would over JSON.
        """
        service, method = spec.service, spec.name
        start = _clock() if self.metrics is not None else 0.0
        try:
            target, ctx, _, _ = self._route(service, method, headers, Codec.JSON)
            hosted = target.spec
            args = hosted.validate_arguments(arguments)
        except Exception as exc:
            return None, self._refused(exc, Codec.JSON, service, method, start)
        stats = target.stats
        if stats is not None:
            stats.enter()
        try:
            if target.is_async:
                result = self._call_sync(target, args, ctx, run_async)
            else:  # _call_sync inline: this path is all overhead
                token = enter_call(ctx)
                try:
                    result = target.function(**args)
                finally:
                    leave_call(token)
                deadline = ctx.deadline
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded(f"{service}.{method} ran past its deadline")
            data = hosted.dump_result(result)
        except Exception as exc:
            return None, self._failed(exc, Codec.JSON, service, method, stats, start)
        except BaseException:
            if stats is not None:
                stats.leave(_CANCELLED, _clock() - start)
            raise
        if stats is not None:
            stats.leave_ok(_clock() - start)
        return data, None

    async def invoke_local_async(
        self, spec: MethodSpec, arguments: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[Any, Response | None]:
        """:meth:`invoke_local` on the running event loop, as :meth:`dispatch` runs calls."""
        service, method = spec.service, spec.name
        start = _clock() if self.metrics is not None else 0.0
        try:
            target, ctx, _, _ = self._route(service, method, headers, Codec.JSON)
            args = target.spec.validate_arguments(arguments)
        except Exception as exc:
            return None, self._refused(exc, Codec.JSON, service, method, start)
        stats = target.stats
        if stats is not None:
            stats.enter()
        try:
            result = await self._invoke_async(target, args, ctx, True)
            data = target.spec.dump_result(result)
        except Exception as exc:
            return None, self._failed(exc, Codec.JSON, service, method, stats, start)
        except BaseException:
            if stats is not None:
                stats.leave(_CANCELLED, _clock() - start)
            raise
        if stats is not None:
            stats.leave_ok(_clock() - start)
        return data, None

    async def _invoke_async(
        self, target: HostedMethod, arguments: dict[str, Any], ctx: CallContext, own_task: bool
    ) -> Any:
        token = enter_call(ctx)
        try:
            if target.is_async:
                call: Any = target.function(**arguments)
            else:
                run = contextvars.copy_context().run
                loop = asyncio.get_running_loop()
                call = loop.run_in_executor(
                    self.executor, lambda: run(target.function, **arguments)
                )
            remaining = ctx.remaining()
            if remaining is None:
                return await call
            try:
                if own_task:
                    return await asyncio.wait_for(call, remaining)
                if target.is_async:
                    # Run the first step now: a method that finishes without
                    # waiting for anything needs no timer (timers cost ~5 us).
                    try:
                        step = call.send(None)
                    except StopIteration as done:
                        return done.value
                    call = _Resume(call, step)
                    remaining = ctx.remaining()
                    assert remaining is not None
                async with asyncio.timeout(remaining):
                    return await call
            except TimeoutError:
                raise DeadlineExceeded(
                    f"{ctx.service}.{ctx.method} did not finish before its deadline"
                ) from None
        finally:
            leave_call(token)

    def _refused(
        self, exc: BaseException, codec: Codec, service: str, method: str, start: float
    ) -> Response:
        """The error response of a call that failed before its method ran; counted."""
        error = self._as_error(exc, service, method)
        metrics = self.metrics
        if metrics is not None:
            metrics.record(service, method, str(error.code), _clock() - start)
        return error_response(error, codec)

    def _failed(
        self,
        exc: BaseException,
        codec: Codec,
        service: str,
        method: str,
        stats: MethodStats | None,
        start: float,
    ) -> Response:
        """The error response of a call whose method ran (``stats.enter``-ed); counted."""
        error = self._as_error(exc, service, method)
        if stats is not None:
            stats.leave(str(error.code), _clock() - start)
        return error_response(error, codec)

    def error_response(
        self, exc: BaseException, codec: Codec, service: str = "", method: str = ""
    ) -> Response:
        """Turn an exception into an error response (envelope and status).

        ServiceError and TetherError keep their code and message. Anything
        else is ``internal``: logged with its traceback here, and sent with
        the traceback only when the dispatcher runs in debug.
        """
        return error_response(self._as_error(exc, service, method), codec)

    def _as_error(self, exc: BaseException, service: str, method: str) -> TetherError:
        """``exc`` as the TetherError to send (see :meth:`error_response`); logs the
        unexpected ones."""
        if not isinstance(exc, TetherError):
            log.error("unexpected error in %s.%s", service, method, exc_info=exc)
            details = {"traceback": traceback.format_exception(exc)} if self.debug else None
            exc = TetherError(
                f"{service}.{method} failed unexpectedly ({type(exc).__name__})"
                + (f": {exc}" if self.debug else "; the server log has the traceback"),
                details,
                code=StatusCode.INTERNAL,
            )
        elif not isinstance(exc, ServiceError) and exc.code is StatusCode.INTERNAL:
            log.error("%s.%s: %s", service, method, exc.message)
        return exc


def body_too_large(limit: int) -> TetherError:
    """The error for a request body over ``limit`` bytes: ``resource_exhausted``, HTTP 413."""
    return TetherError(
        f"request body larger than the limit of {limit} bytes",
        code=StatusCode.RESOURCE_EXHAUSTED,
        http_status=413,
    )


def error_response(exc: TetherError, codec: Codec = Codec.JSON) -> Response:
    """Encode ``exc`` as an error envelope with its HTTP status."""
    try:
        body = encode_any(exc.to_envelope(), codec)
    except (TypeError, ValueError):
        # Details that do not serialise must not hide the error itself.
        body = encode_any({**exc.to_envelope(), "details": None}, codec)
    return Response(exc.http_status, codec.content_type, body)


def error_codec(headers: Mapping[str, str]) -> Codec:
    """The codec to answer an error in: as ``accept`` and ``content-type`` negotiate,
    JSON when they name nothing Tether speaks."""
    try:
        return codec_for_accept(
            headers.get("accept"), codec_for_content_type(headers.get("content-type"))
        )
    except TetherError:
        return Codec.JSON


def _header_seconds(header: str) -> float:
    """The ``tether-timeout-ms`` header in seconds.

    Raises:
        TetherError: ``invalid_argument`` unless it is 1 to 15 ASCII digits
            (``int`` alone would take ``-5``, ``1_000``, ``" 7"`` and numbers
            too large for a float).
    """
    if header.isdigit() and header.isascii() and len(header) <= _MAX_TIMEOUT_DIGITS:
        return int(header) / 1000
    shown = header if len(header) <= 40 else header[:40] + "..."
    raise TetherError(
        f"{TIMEOUT_HEADER} must be a whole number of milliseconds "
        f"(at most {_MAX_TIMEOUT_DIGITS} digits), got {shown!r}",
        code=StatusCode.INVALID_ARGUMENT,
    )


class _Resume:
    """Awaits the rest of a coroutine whose first step already ran (and yielded ``step``).

    Passes what the coroutine yields up to the task, and what the task sends
    or throws (cancellation) down to the coroutine, as ``await`` does.
    """

    __slots__ = ("_coro", "_step")

    def __init__(self, coro: Coroutine[Any, Any, Any], step: Any) -> None:
        self._coro = coro
        self._step = step

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, step = self._coro, self._step
        self._step = None
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    step = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    step = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _request_id() -> str:
    """16 random hex digits, as ``os.urandom(8).hex()`` gives but cheaper."""
    return f"{random.getrandbits(64):016x}"


def _stub() -> None: ...


def _documented_stub() -> None:
    """A docstring moves None to the second constant."""


_STUB_CODES = {_stub.__code__.co_code, _documented_stub.__code__.co_code}


def _is_stub(fn: Any) -> bool:
    """True when a function's body is only a docstring and/or ``...``/``pass``."""
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_code in _STUB_CODES
