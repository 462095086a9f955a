"""Connections and proxies: the call path on the client side.

Every connection kind (integrated, direct, relay, discovered) is a
:class:`Connection` or :class:`AsyncConnection` over some transport: the
binding, encoding, deadline, headers and error mapping below are the same
for all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tether.codec import Codec, decode_any, encode_any
from tether.context import get_call
from tether.errors import (
    DeadlineExceeded,
    RemoteError,
    StatusCode,
    TetherError,
    error_from_envelope,
)
from tether.interface import MethodSpec, service_spec
from tether.server.dispatcher import REQUEST_ID_HEADER, TIMEOUT_HEADER
from tether.transports.base import AsyncTransport, RawResponse, SyncTransport, check_seconds

if TYPE_CHECKING:
    from tether.client.auth import ClientAuth
    from tether.jobs.client import AsyncJobsClient, JobsClient

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class _CallPath:
    """Encoding and decoding shared by the sync and async connections."""

    def __init__(self, target: str, codec: Codec | str, timeout: float) -> None:
        check_seconds(timeout)
        self.target = target
        self.codec = Codec(codec)
        # The python codec is no encoding at all (integrated connections only);
        # whatever needs bytes even then (dynamic calls) goes as JSON.
        self._wire = Codec.JSON if self.codec is Codec.PYTHON else self.codec
        self._media = self._wire.content_type
        self.timeout = timeout

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.target} codec={self.codec.value} "
            f"timeout={self.timeout}s>"
        )

    def _request(
        self, arguments: Mapping[str, Any], timeout: float | None, spec: MethodSpec | None
    ) -> tuple[bytes, dict[str, str], float]:
        """Encode the arguments; work out the timeout and the headers."""
        headers, seconds = self._headers(timeout, spec)
        values = arguments if type(arguments) is dict else dict(arguments)
        return encode_any(values, self._wire), headers, seconds

    def _headers(
        self, timeout: float | None, spec: MethodSpec | None
    ) -> tuple[dict[str, str], float]:
        """The request headers and the call's timeout in seconds."""
        seconds = self.timeout if timeout is None else timeout
        if spec is not None:
            limit = spec.options.timeout
            if limit is not None and limit < seconds:
                seconds = limit
        caller = get_call()
        media = self._media
        headers = {"content-type": media, "accept": media}
        if caller is not None:
            # A nested call never outlives the call it serves.
            left = caller.remaining()
            if left is not None:
                seconds = min(seconds, left)
            headers[REQUEST_ID_HEADER] = caller.request_id
            if "traceparent" in caller.headers:
                headers["traceparent"] = caller.headers["traceparent"]
        if seconds <= 0:
            name = spec.qualified_name if spec else "call"
            raise DeadlineExceeded(f"{name}: the deadline passed before the call was sent")
        headers[TIMEOUT_HEADER] = _millis(seconds)
        return headers, seconds

    def _response(self, raw: RawResponse, spec: MethodSpec | None) -> Any:
        """Decode a result, or raise the error the response carries (as the
        class ``spec`` declares for it, if it does)."""
        codec = Codec.MSGPACK if "msgpack" in raw.content_type else Codec.JSON
        if raw.status == 200:
            if spec is not None:
                return spec.decode_result(raw.body, codec)
            try:
                return decode_any(raw.body, codec)
            except TetherError as exc:  # the answer's fault, not the arguments'
                raise RemoteError(
                    f"the server's result is not valid {codec.value}: {exc.message}",
                    code=StatusCode.DATA_LOSS,
                ) from None
        try:
            envelope = decode_any(raw.body, codec)
        except TetherError:
            envelope = None
        raise error_from_envelope(envelope, raw.status, spec.errors if spec is not None else ())


@lru_cache(maxsize=256)
def _millis(seconds: float) -> str:
    """The ``tether-timeout-ms`` header for ``seconds`` (cached: a few timeouts recur)."""
    return str(max(1, int(seconds * 1000)))


def _resend_budget(started: float, seconds: float, headers: dict[str, str]) -> float | None:
    """Seconds left of a call's ``seconds`` since ``started`` (monotonic) for sending
    it again after a 401, with the deadline header updated; None when none is left.

    The renewal and the resend fit in the call's one deadline, so a refused
    token never makes a call take twice its timeout.
    """
    left = seconds - (time.monotonic() - started)
    if left <= 0:
        return None
    headers[TIMEOUT_HEADER] = _millis(left)
    return left


def _split(name: str) -> tuple[str, str]:
    service, sep, method = name.rpartition(".")
    if not sep or not service or not method:
        raise ValueError(f"call names look like 'service.method', got {name!r}")
    return service, method


def _binder(spec: MethodSpec) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]:
    """A fast binder: positional arguments to names; the server checks the rest."""
    names = tuple(
        p.name
        for p in list(spec.signature.parameters.values())[1:]
        if p.kind is p.POSITIONAL_OR_KEYWORD
    )

    first = names[0] if names else ""

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if not args:
            return kwargs
        if len(args) == 1 and not kwargs and first:
            return {first: args[0]}
        if len(args) > len(names):
            raise TypeError(
                f"{spec.qualified_name}() takes {len(names)} positional arguments, "
                f"{len(args)} given"
            )
        arguments = dict(zip(names, args, strict=False))
        for key in kwargs:
            if key in arguments:
                raise TypeError(f"{spec.qualified_name}() got two values for {key!r}")
        arguments.update(kwargs)
        return arguments

    return bind


class Connection(_CallPath):
    """A blocking connection to a service endpoint (any kind).

    Made by :meth:`tether.Client.connect`, :meth:`tether.Client.integrated`
    and friends; not constructed directly.

    Args:
        transport: moves encoded calls.
        target: shown in ``repr`` and errors.
        codec: ``"json"`` or ``"msgpack"``.
        timeout: default seconds per call (30).
        auth: credentials: adds ``authorization`` to each call, renewed
            once on a 401 (see :mod:`tether.client.auth`).
    """

    def __init__(
        self,
        transport: SyncTransport,
        target: str,
        *,
        codec: Codec | str = Codec.JSON,
        timeout: float = DEFAULT_TIMEOUT,
        auth: ClientAuth | None = None,
    ) -> None:
        super().__init__(target, codec, timeout)
        self.transport = transport
        self.auth = auth
        self._local: Callable[..., tuple[Any, RawResponse | None]] | None = None
        # An integrated transport's shortcut for typed calls: the result's bytes
        # straight from the dispatcher (see SyncIntegratedTransport.send_local).
        self._send_local: Callable[..., bytes | RawResponse] | None = None
        if self.codec is Codec.PYTHON:
            self._local = getattr(transport, "invoke_local", None)
            if self._local is None:
                raise ValueError(
                    "codec 'python' passes Python objects in-process: only integrated "
                    "connections take it"
                )
        else:
            self._send_local = getattr(transport, "send_local", None)

    def with_timeout(self, timeout: float) -> Connection:
        """The same connection (sharing its pool) with another default timeout in seconds.

        Raises:
            ValueError: ``timeout`` is not positive, finite seconds.
        """
        return Connection(
            self.transport, self.target, codec=self.codec, timeout=timeout, auth=self.auth
        )

    def _send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: dict[str, str],
        seconds: float,
        idempotent: bool = False,
    ) -> RawResponse:
        auth = self.auth
        if auth is None:
            return self.transport.send(
                service, method, body, headers, seconds, idempotent=idempotent
            )
        started = time.monotonic()
        headers.update(auth.headers())
        raw = self.transport.send(service, method, body, headers, seconds, idempotent=idempotent)
        if raw.status == 401 and auth.on_unauthorized():  # refused before it ran: resend
            left = _resend_budget(started, seconds, headers)
            if left is not None:
                headers.update(auth.headers())
                raw = self.transport.send(
                    service, method, body, headers, left, idempotent=idempotent
                )
        return raw

    def invoke(
        self, spec: MethodSpec, arguments: Mapping[str, Any], *, timeout: float | None = None
    ) -> Any:
        """Call a method described by ``spec`` with arguments by name.

        Args:
            spec: the method, from :func:`tether.service_spec`.
            arguments: the arguments by name (a proxy binds positional ones).
            timeout: seconds for this call (default: the connection's),
                capped by the method's own ``timeout`` and by the deadline of
                the call being served, if any.

        Returns:
            The result, validated into the declared result type.

        Raises:
            ServiceError subclass: the server raised an error that ``spec``
                declares (the method's or its service's ``errors``), or one
                of Tether's own (authentication, say).
            RemoteError: any other error, with its code (``invalid_argument``,
                ``unimplemented``...); DeadlineExceeded and Unavailable are
                RemoteErrors too, and so is ``data_loss``, raised when the
                result does not validate into the declared type (a server
                serving another version of the interface).
            DeadlineExceeded: the deadline had passed before the call was sent.
            TypeError: from a proxy, arguments that do not bind to the
                method's parameters (too many positional ones, a name given
                twice).
        """
        if self._local is not None:
            return self._invoke_local(self._local, spec, arguments, timeout)
        if self._send_local is not None:
            return self._invoke_integrated(self._send_local, spec, arguments, timeout)
        body, headers, seconds = self._request(arguments, timeout, spec)
        raw = self._send(spec.service, spec.name, body, headers, seconds, spec.options.idempotent)
        return self._response(raw, spec)

    def _invoke_integrated(
        self,
        send_local: Callable[..., bytes | RawResponse],
        spec: MethodSpec,
        arguments: Mapping[str, Any],
        timeout: float | None,
    ) -> Any:
        """:meth:`invoke` over an integrated transport: the same encoding, headers
        and errors, without a RawResponse for a result."""
        body, headers, seconds = self._request(arguments, timeout, spec)
        wire, auth = self._wire, self.auth
        if auth is None:
            answer = send_local(spec.service, spec.name, body, headers, wire)
        else:
            started = time.monotonic()
            headers.update(auth.headers())
            answer = send_local(spec.service, spec.name, body, headers, wire)
            if (
                isinstance(answer, RawResponse)
                and answer.status == 401
                and auth.on_unauthorized()
                and _resend_budget(started, seconds, headers) is not None
            ):
                headers.update(auth.headers())  # refused before it ran: again
                answer = send_local(spec.service, spec.name, body, headers, wire)
        if isinstance(answer, bytes):
            return spec.decode_result(answer, wire)
        return self._response(answer, spec)

    def _invoke_local(
        self,
        local: Callable[..., tuple[Any, RawResponse | None]],
        spec: MethodSpec,
        arguments: Mapping[str, Any],
        timeout: float | None,
    ) -> Any:
        """A call with the python codec: the same path as :meth:`invoke` minus the bytes."""
        headers, seconds = self._headers(timeout, spec)
        auth = self.auth
        if auth is None:
            data, error = local(spec, arguments, headers)
        else:
            started = time.monotonic()
            headers.update(auth.headers())
            data, error = local(spec, arguments, headers)
            if (
                error is not None
                and error.status == 401
                and auth.on_unauthorized()
                and _resend_budget(started, seconds, headers) is not None
            ):
                headers.update(auth.headers())  # refused before it ran: again
                data, error = local(spec, arguments, headers)
        if error is None:
            return spec.load_result(data)
        return self._response(error, spec)

    def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``"service.method"`` without its interface.

        Args:
            name: ``"service.method"``.
            arguments: arguments by name, as a mapping (for names such as
                ``timeout`` that clash with this method's own).
            timeout: seconds for this call (default: the connection's).
            idempotent: the method may safely run twice, so a discovered
                connection may retry it after a broken call (a typed proxy
                knows this from the interface).
            **kwargs: arguments by name.

        Returns:
            The decoded result as plain JSON-like values (``bytes`` stay
            base64 text in JSON, binary in msgpack).

        Raises:
            ValueError: ``name`` has no dot, or nothing before or after it.
            RemoteError: see :meth:`invoke`; with no interface to declare
                them, an application's ServiceErrors arrive as RemoteError
                too (with ``error_name``), Tether's own keep their class.
                A result body that does not decode is ``data_loss``.
        """
        service, method = _split(name)
        merged = {**(arguments or {}), **kwargs}
        body, headers, seconds = self._request(merged, timeout, None)
        raw = self._send(service, method, body, headers, seconds, idempotent)
        return self._response(raw, None)

    def proxy(self, interface: type[T], *, timeout: float | None = None) -> T:
        """A typed proxy: an object with the interface's methods that call remotely.

        Args:
            interface: a class decorated with ``@tether.service``.
            timeout: seconds per call through this proxy (default: the connection's).

        Raises:
            TypeError: ``interface`` is not a service interface.
            ValueError: ``timeout`` is not positive, finite seconds.
        """
        if timeout is not None:
            check_seconds(timeout)
        spec = service_spec(interface)
        proxy = _Proxy(self, spec.name)
        for m in spec.methods.values():
            setattr(proxy, m.attr, self._bound(m, timeout))
        return cast(T, proxy)

    def _bound(self, spec: MethodSpec, timeout: float | None) -> Callable[..., Any]:
        bind = _binder(spec)
        invoke = self.invoke
        local, invoke_local = self._local, self._invoke_local
        send_local, invoke_integrated = self._send_local, self._invoke_integrated

        def call(*args: Any, **kwargs: Any) -> Any:
            # In-process calls skip a call layer: they are nearly all overhead.
            if local is not None:  # the python codec
                return invoke_local(local, spec, bind(args, kwargs), timeout)
            if send_local is not None:  # integrated, json or msgpack
                return invoke_integrated(send_local, spec, bind(args, kwargs), timeout)
            return invoke(spec, bind(args, kwargs), timeout=timeout)

        call.__name__ = spec.attr
        call.__doc__ = spec.doc
        return call

    def close(self) -> None:
        """Close the transport's connections (and the credentials' own, if any)."""
        self.transport.close()
        closer = getattr(self.auth, "close", None)
        if closer is not None:
            closer()

    @property
    def jobs(self) -> JobsClient:
        """The endpoint's jobs API (:class:`tether.jobs.client.JobsClient`): submit,
        get, list, cancel and wait for jobs. Direct and integrated connections only.

        Raises:
            TypeError: this connection kind has no jobs API.
        """
        from tether.jobs.client import JobsClient

        return JobsClient(self)


class AsyncConnection(_CallPath):
    """The asyncio twin of :class:`Connection`: the same methods, awaited."""

    def __init__(
        self,
        transport: AsyncTransport,
        target: str,
        *,
        codec: Codec | str = Codec.JSON,
        timeout: float = DEFAULT_TIMEOUT,
        auth: ClientAuth | None = None,
    ) -> None:
        super().__init__(target, codec, timeout)
        self.transport = transport
        self.auth = auth
        self._local: Callable[..., Awaitable[tuple[Any, RawResponse | None]]] | None = None
        if self.codec is Codec.PYTHON:
            self._local = getattr(transport, "invoke_local", None)
            if self._local is None:
                raise ValueError(
                    "codec 'python' passes Python objects in-process: only integrated "
                    "connections take it"
                )

    def with_timeout(self, timeout: float) -> AsyncConnection:
        """The same connection with another default timeout in seconds.

        Raises:
            ValueError: ``timeout`` is not positive, finite seconds.
        """
        return AsyncConnection(
            self.transport, self.target, codec=self.codec, timeout=timeout, auth=self.auth
        )

    async def _send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: dict[str, str],
        seconds: float,
        idempotent: bool = False,
    ) -> RawResponse:
        auth = self.auth
        if auth is None:
            return await self.transport.send(
                service, method, body, headers, seconds, idempotent=idempotent
            )
        started = time.monotonic()
        # Renewing a token blocks (HTTP, file lock): off the event loop.
        headers.update(auth.headers() if auth.fresh() else await asyncio.to_thread(auth.headers))
        raw = await self.transport.send(
            service, method, body, headers, seconds, idempotent=idempotent
        )
        if raw.status == 401 and await asyncio.to_thread(auth.on_unauthorized):
            left = _resend_budget(started, seconds, headers)
            if left is not None:
                headers.update(await asyncio.to_thread(auth.headers))
                raw = await self.transport.send(
                    service, method, body, headers, left, idempotent=idempotent
                )
        return raw

    async def invoke(
        self, spec: MethodSpec, arguments: Mapping[str, Any], *, timeout: float | None = None
    ) -> Any:
        """Call a method described by ``spec``; see :meth:`Connection.invoke` (the same
        arguments, result and errors)."""
        if self._local is not None:
            return await self._invoke_local(self._local, spec, arguments, timeout)
        body, headers, seconds = self._request(arguments, timeout, spec)
        raw = await self._send(
            spec.service, spec.name, body, headers, seconds, spec.options.idempotent
        )
        return self._response(raw, spec)

    async def _invoke_local(
        self,
        local: Callable[..., Awaitable[tuple[Any, RawResponse | None]]],
        spec: MethodSpec,
        arguments: Mapping[str, Any],
        timeout: float | None,
    ) -> Any:
        """A call with the python codec; see :meth:`Connection._invoke_local`."""
        headers, seconds = self._headers(timeout, spec)
        auth = self.auth
        if auth is not None:
            started = time.monotonic()
            fresh = auth.headers() if auth.fresh() else await asyncio.to_thread(auth.headers)
            headers.update(fresh)
        data, error = await local(spec, arguments, headers, seconds)
        if error is not None and error.status == 401 and auth is not None:
            if await asyncio.to_thread(auth.on_unauthorized):
                left = _resend_budget(started, seconds, headers)
                if left is not None:
                    headers.update(await asyncio.to_thread(auth.headers))
                    data, error = await local(spec, arguments, headers, left)
        if error is None:
            return spec.load_result(data)
        return self._response(error, spec)

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``"service.method"`` without its interface; see :meth:`Connection.call`.

        Raises:
            ValueError: ``name`` has no dot, or nothing before or after it.
            RemoteError: as :meth:`Connection.call`.
        """
        service, method = _split(name)
        merged = {**(arguments or {}), **kwargs}
        body, headers, seconds = self._request(merged, timeout, None)
        raw = await self._send(service, method, body, headers, seconds, idempotent)
        return self._response(raw, None)

    def proxy(self, interface: type[T], *, timeout: float | None = None) -> T:
        """A typed proxy whose methods return awaitables (see :meth:`Connection.proxy`).

        Raises:
            TypeError: ``interface`` is not a service interface.
            ValueError: ``timeout`` is not positive, finite seconds.
        """
        if timeout is not None:
            check_seconds(timeout)
        spec = service_spec(interface)
        proxy = _Proxy(self, spec.name)
        for m in spec.methods.values():
            setattr(proxy, m.attr, self._bound(m, timeout))
        return cast(T, proxy)

    def _bound(self, spec: MethodSpec, timeout: float | None) -> Callable[..., Any]:
        bind = _binder(spec)
        invoke = self.invoke

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await invoke(spec, bind(args, kwargs), timeout=timeout)

        call.__name__ = spec.attr
        call.__doc__ = spec.doc
        return call

    async def close(self) -> None:
        """Close the transport's connections (and the credentials' own, if any)."""
        await self.transport.close()
        closer = getattr(self.auth, "close", None)
        if closer is not None:
            closer()

    @property
    def jobs(self) -> AsyncJobsClient:
        """The endpoint's jobs API, async (:class:`tether.jobs.client.AsyncJobsClient`).

        Raises:
            TypeError: this connection kind has no jobs API.
        """
        from tether.jobs.client import AsyncJobsClient

        return AsyncJobsClient(self)


class _Proxy:
    """The object :meth:`Connection.proxy` returns; its methods are set per instance."""

    def __init__(self, connection: _CallPath, service: str) -> None:
        self._connection = connection
        self._service = service

    def __repr__(self) -> str:
        return f"<tether proxy {self._service} via {self._connection.target}>"
