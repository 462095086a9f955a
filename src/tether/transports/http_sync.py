"""Blocking HTTP/1.1 transport: a minimal keep-alive client on raw sockets.

DESIGN.md ("Library choices") measured ``http.client`` at about a fifth of
``httpx.Client``'s cost per call; most of what remains is ``http.client``'s
own header handling (the ``email`` parser) and its two writes per request.
This client writes each request in one ``sendall`` with the header block
pre-encoded, and parses the few response headers it needs itself: about a
third of ``http.client``'s CPU per call (see ``benchmarks/rpc.py``).

It speaks enough HTTP/1.1 for any server: ``content-length`` and chunked
responses, bodies read to EOF, ``connection: close``, HTTP/1.0 answers and
interim 1xx responses. A pooled connection is checked for a close by the
server (a zero-timeout poll) before it is reused, and ``timeout`` bounds the
whole exchange, not each socket operation. Given a ``connect_timeout``,
opening a connection (TCP and TLS handshakes) gets at most that much of it:
a host that drops the packets is then :class:`~tether.errors.Unavailable`
with ``sent`` False, a failure before sending that a caller may retry
elsewhere (a discovered connection does), not a deadline spent on one dead
address. Without one, or when less of the deadline is left, the connection
may take what is left of the deadline, and running out of it is
:class:`~tether.errors.DeadlineExceeded`.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from tether.errors import DeadlineExceeded, Unavailable
from tether.transports.base import RawResponse, check_seconds, retry_after_seconds

_MAX_HEAD = 64 * 1024  # bytes of status line and headers
_MAX_HEADERS = 100
_RECV = 65536
_NO_BODY_STATUS = frozenset((204, 304))
_PATH_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/!$&'()*+,;=:@%?"
)


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x this client can read."""


class _Connection:
    """One socket, the poller that checks it while idle, and when it went idle."""

    __slots__ = ("poller", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.since = 0.0

    def alive(self) -> bool:
        """False when the server has closed (or written to) the idle connection."""
        # Readable while idle means EOF, a reset or stray bytes: unusable in all cases.
        return not self.poller.poll(0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SyncHTTPTransport:
    """A keep-alive connection pool to one base URL.

    Args:
        url: ``http://host:port[/prefix]`` or ``https://...``.
        ssl_context: for ``https``; default the system's trust store.
        max_idle: idle connections kept for reuse (one per concurrent thread
            is enough).
        idle_timeout: seconds after which an idle connection is not reused.
        connect_timeout: seconds a new connection may take, TCP and TLS
            handshakes included; slower is ``Unavailable`` with ``sent``
            False (and ``connect_timeout`` True). Default None: no limit but
            the call's deadline. When less of the deadline is left, the
            deadline bounds the connection and ending it is ``DeadlineExceeded``.

    Raises:
        ValueError: not an http(s) URL, or ``connect_timeout`` is not
            positive, finite seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 16,
        idle_timeout: float = 30.0,
        connect_timeout: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.connect_timeout = (
            None if connect_timeout is None else check_seconds(connect_timeout, "connect_timeout")
        )
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        self._ssl = ssl_context or (ssl.create_default_context() if self._tls else None)
        self._prefix = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        if self._port != (443 if self._tls else 80):
            host = f"{host}:{self._port}"
        self._host_header = host.encode("idna" if not host.isascii() else "ascii")
        self._lines: dict[tuple[str, str], bytes] = {}
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._closed = False

    def __repr__(self) -> str:
        return f"<SyncHTTPTransport {self.url} idle={len(self._idle)}>"

    # -- the pool -------------------------------------------------------------

    def _checkout(self) -> _Connection | None:
        """An idle connection that still looks usable, or None."""
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if now - conn.since < self._idle_timeout and conn.alive():
                return conn
            conn.close()

    def _connect(self, remaining: float) -> _Connection:
        """A new connection within ``connect_timeout`` (and ``remaining`` seconds).

        Raises:
            Unavailable: it took longer than ``connect_timeout`` (``sent`` False).
            TimeoutError: ``remaining`` ran out first (the deadline's doing).
            OSError: refused, unreachable, or the TLS handshake failed.
        """
        cap = self.connect_timeout
        timeout = remaining if cap is None else min(cap, remaining)
        capped = timeout < remaining  # else the deadline, not the cap, bounds it
        try:
            sock = socket.create_connection((self._host, self._port), timeout)
        except TimeoutError:
            if capped:
                raise self._connect_timed_out(timeout) from None
            raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except TimeoutError:
            sock.close()
            if capped:
                raise self._connect_timed_out(timeout) from None
            raise
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _connect_timed_out(self, timeout: float) -> Unavailable:
        return Unavailable(
            f"cannot connect to {self.url}: no connection within {timeout:.3f} s",
            {"sent": False, "connect_timeout": True},
        )

    def _checkin(self, conn: _Connection) -> None:
        conn.since = time.monotonic()
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    # -- requests -------------------------------------------------------------

    def _request_line(self, verb: str, path: str) -> bytes:
        """``VERB path HTTP/1.1`` and the Host header, encoded once per route."""
        key = (verb, path)
        line = self._lines.get(key)
        if line is None:
            full = self._prefix + path
            if not all(c in _PATH_SAFE for c in full):
                full = quote(full, safe="/%")
            line = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (
                verb.encode("ascii"),
                full.encode("ascii"),
                self._host_header,
            )
            if len(self._lines) >= 1024:
                self._lines.clear()
            self._lines[key] = line
        return line

    def request(
        self,
        verb: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Send one HTTP request to ``base URL + path`` and read the whole answer.

        A call that broke on a reused connection before any answer is tried
        once more on a new connection when it is idempotent.

        Raises:
            Unavailable: connection refused, not made within
                ``connect_timeout`` (both with ``details["sent"]`` False), or
                reset or closed mid-call.
            DeadlineExceeded: no complete answer within ``timeout`` seconds
                (a connection not made within them included).
            ValueError: a header name or value that cannot go on the wire.
        """
        if self._closed:
            raise Unavailable("the client is closed")
        deadline = time.monotonic() + timeout
        message = _encode(self._request_line(verb, path), verb, body, headers)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"no answer from {self.url} within {timeout:.3f} s")
            conn = self._checkout()
            reused = conn is not None
            sent = False
            try:
                if conn is None:
                    conn = self._connect(remaining)
                sock = conn.sock
                sock.settimeout(remaining)
                sock.sendall(message)
                sent = True
                response, keep = _read_response(sock, deadline, verb == "HEAD")
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise DeadlineExceeded(
                    f"no answer from {self.url} within {timeout:.3f} s"
                ) from None
            except (ConnectionRefusedError, socket.gaierror) as exc:
                if conn is not None:
                    conn.close()
                raise Unavailable(f"cannot connect to {self.url}: {exc}", {"sent": False}) from None
            except (OSError, ProtocolError) as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 1 and (idempotent or not sent):
                    continue  # the server closed a pooled connection: a fresh one
                raise Unavailable(
                    f"connection to {self.url} broke{' after the call was sent' if sent else ''}: "
                    f"{type(exc).__name__}: {exc}",
                    {"sent": sent},
                ) from None
            except BaseException:
                if conn is not None:
                    conn.close()  # interrupted mid-exchange: the connection's state is unknown
                raise
            if keep:
                self._checkin(conn)
            else:
                conn.close()
            return response

    def send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """POST a call to ``/rpc/{service}/{method}`` (see :meth:`request`)."""
        return self.request(
            "POST", f"/rpc/{service}/{method}", body, headers, timeout, idempotent=idempotent
        )

    def close(self) -> None:
        """Close every pooled connection; later calls raise Unavailable."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _encode(line: bytes, verb: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
    """The whole request as one buffer: request line, headers, blank line, body.

    ``accept`` equal to ``content-type`` is left out: the server answers in
    the request's media type by default, and every header costs it parsing.
    """
    parts = [line]
    same = headers.get("content-type")
    for name, value in headers.items():
        if name == "accept" and value == same:
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid HTTP header {name!r}: {value!r}")
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if body is not None:
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
    elif verb in ("POST", "PUT", "PATCH"):
        parts.append(b"content-length: 0\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(remaining)
    return sock.recv(_RECV)


def _read_response(
    sock: socket.socket, deadline: float, head_only: bool
) -> tuple[RawResponse, bool]:
    """Read one response: ``(response, connection reusable)``.

    Raises:
        ProtocolError: a malformed answer.
        ConnectionResetError: the server closed the connection before answering.
        TimeoutError: the deadline passed first.
    """
    buf = _recv(sock, deadline)
    while True:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > _MAX_HEAD:
                raise ProtocolError("response headers longer than 64 KiB")
            more = _recv(sock, deadline)
            if not more:
                if not buf:
                    raise ConnectionResetError("the server closed the connection without answering")
                raise ProtocolError("the connection closed in the middle of the response headers")
            buf += more
            end = buf.find(b"\r\n\r\n")
        lines = buf[:end].split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise ProtocolError(f"bad status line: {status_line[:80]!r}") from None
        buf = buf[end + 4 :]
        if 100 <= status < 200 and status != 101:
            continue  # an interim response (100 Continue, 103 Early Hints): the real one follows
        break
    if len(lines) > _MAX_HEADERS + 1:
        raise ProtocolError(f"more than {_MAX_HEADERS} response headers")
    content_type = ""
    retry_after: float | None = None
    length: int | None = None
    chunked = False
    keep = status_line[7:8] == b"1"  # HTTP/1.1 keeps the connection by default, 1.0 does not
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line: {raw[:80]!r}")
        name = name.strip().lower()
        if name == b"content-type":
            text = value.strip().decode("latin-1")
            content_type = f"{content_type}, {text}" if content_type else text
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise ProtocolError(f"bad content-length: {value[:40]!r}") from None
            if length < 0:
                raise ProtocolError(f"bad content-length: {value[:40]!r}")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
        elif name == b"retry-after":
            retry_after = retry_after_seconds(value)
    if head_only or status in _NO_BODY_STATUS or status == 101:
        return RawResponse(status, content_type, b"", retry_after), keep and not buf
    if chunked:
        body, rest = _read_chunked(sock, buf, deadline)
        return RawResponse(status, content_type, body, retry_after), keep and not rest
    if length is not None:
        while len(buf) < length:
            more = _recv(sock, deadline)
            if not more:
                raise ProtocolError(
                    f"the connection closed after {len(buf)} of {length} body bytes"
                )
            buf += more
        body = buf if len(buf) == length else buf[:length]
        return RawResponse(status, content_type, body, retry_after), keep and len(buf) == length
    # Neither length nor chunked: the body runs to the end of the connection.
    chunks = [buf]
    while more := _recv(sock, deadline):
        chunks.append(more)
    return RawResponse(status, content_type, b"".join(chunks), retry_after), False


def _read_chunked(sock: socket.socket, buf: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Decode a chunked body that starts in ``buf``: ``(body, bytes after it)``."""
    chunks: list[bytes] = []
    pos = 0

    def fill(need: int) -> None:
        # Make buf[pos:] at least `need` bytes long.
        nonlocal buf, pos
        if pos:
            buf, pos = buf[pos:], 0
        while len(buf) < need:
            more = _recv(sock, deadline)
            if not more:
                raise ProtocolError("the connection closed in the middle of a chunked body")
            buf += more

    def line() -> bytes:
        nonlocal pos
        while (end := buf.find(b"\r\n", pos)) < 0:
            if len(buf) - pos > _MAX_HEAD:
                raise ProtocolError("chunk header longer than 64 KiB")
            fill(len(buf) - pos + 1)
        text = buf[pos:end]
        pos = end + 2
        return text

    while True:
        size_text = line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size: {size_text[:40]!r}") from None
        if size < 0:
            raise ProtocolError(f"bad chunk size: {size_text[:40]!r}")
        if size == 0:
            while line():  # trailers, up to the blank line
                pass
            return b"".join(chunks), buf[pos:]
        fill(size + 2)
        chunks.append(buf[pos : pos + size])
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
        pos += size + 2
