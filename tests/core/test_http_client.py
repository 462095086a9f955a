"""The blocking HTTP/1.1 client (tether.transports.http_sync) on its own.

Against the real uvicorn server (``behaviour_server``), and against a scripted
raw-socket server for what uvicorn never sends: chunked bodies, bodies that
run to EOF, interim 1xx answers, trickled bytes, connections dropped at
chosen moments.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate

import pytest

import tether
from tests.apps.behaviour import Behave
from tests.fixtures.servers import ServerProcess, free_port
from tether.transports.http_sync import SyncHTTPTransport

Handler = Callable[[socket.socket, int], None]


class RawServer:
    """A loopback TCP server that runs ``handler(conn, index)`` per accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index, self.accepted = self.accepted, self.accepted + 1
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with conn:
            try:
                self.handler(conn, index)
            except OSError:
                pass

    def read_request(self, conn: socket.socket) -> bytes | None:
        """One request (head and content-length body), or None at EOF."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(head)
        return body

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def make(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def keep_alive(answer: bytes) -> Handler:
    """A handler that answers every request on the connection with ``answer``."""

    def handle(conn: socket.socket, index: int) -> None:
        while server_of[conn.getsockname()].read_request(conn) is not None:
            conn.sendall(answer)

    return handle


server_of: dict[tuple[str, int], RawServer] = {}


def serve(make: Callable[[Handler], RawServer], handler: Handler) -> RawServer:
    server = make(handler)
    server_of[server.sock.getsockname()] = server
    return server


# -- against uvicorn ------------------------------------------------------------


def test_calls_reuse_one_pooled_connection(behaviour_server: ServerProcess) -> None:
    transport = SyncHTTPTransport(behaviour_server.url)
    try:
        headers = {"content-type": "application/json", "accept": "application/json"}
        first = transport.send("behave", "greet", b'{"name": "a"}', headers, 5)
        pooled = transport._idle[0].sock
        second = transport.send("behave", "greet", b'{"name": "b"}', headers, 5)
        assert (first.status, first.body) == (200, b'"hello a!"')
        assert (second.status, second.body) == (200, b'"hello b!"')
        assert first.content_type == "application/json"
        assert len(transport._idle) == 1 and transport._idle[0].sock is pooled
    finally:
        transport.close()


def test_get_and_error_statuses(behaviour_server: ServerProcess) -> None:
    transport = SyncHTTPTransport(behaviour_server.url)
    try:
        assert transport.request("GET", "/healthz", None, {}, 5).status == 200
        missing = transport.request("GET", "/nowhere", None, {}, 5)
        assert missing.status == 404 and b"not_found" in missing.body
        head = transport.request("HEAD", "/healthz", None, {}, 5)
        assert head.status == 200 and head.body == b""
        assert transport.request("GET", "/healthz", None, {}, 5).status == 200  # still in sync
    finally:
        transport.close()


def test_timeout_is_deadline_exceeded(behaviour_server: ServerProcess) -> None:
    with tether.Client(timeout=10) as client:
        conn = client.connect(behaviour_server.url)
        behave = conn.proxy(Behave)
        assert behave.greet("x") == "hello x!"
        started = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded):  # the server's answer or the client's own
            conn.with_timeout(0.3).proxy(Behave).sleep(2)
        assert time.monotonic() - started < 1.5
        assert behave.greet("y") == "hello y!"


def test_a_pooled_connection_closed_locally_is_replaced(behaviour_server: ServerProcess) -> None:
    transport = SyncHTTPTransport(behaviour_server.url)
    try:
        assert transport.request("GET", "/healthz", None, {}, 5).status == 200
        transport._idle[0].sock.shutdown(socket.SHUT_RDWR)  # as if the server went away
        assert transport.request("GET", "/healthz", None, {}, 5).status == 200
    finally:
        transport.close()


def test_closed_transport_refuses() -> None:
    transport = SyncHTTPTransport(f"http://127.0.0.1:{free_port()}")
    transport.close()
    with pytest.raises(tether.Unavailable):
        transport.request("GET", "/healthz", None, {}, 1)


def test_refused_connection_is_not_sent() -> None:
    transport = SyncHTTPTransport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(tether.Unavailable) as caught:
        transport.request("POST", "/rpc/a/b", b"{}", {}, 2)
    assert caught.value.details == {"sent": False}


def test_header_injection_is_refused() -> None:
    transport = SyncHTTPTransport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError):
        transport.request("GET", "/", None, {"x-evil": "a\r\nhost: elsewhere"}, 1)


# -- against a scripted server --------------------------------------------------


def test_chunked_response_in_pieces(raw: Callable[[Handler], RawServer]) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        pieces = [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
            b"5\r\nhel",
            b"lo\r\n",
            b"6;ext=1\r\n world\r\n",
            b"0\r\nx-trailer: yes\r\n\r\n",
        ]
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(0.01)
        server.read_request(conn)  # a second request on the same connection
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        time.sleep(0.5)

    server = serve(raw, handle)
    transport = SyncHTTPTransport(server.url)
    first = transport.request("GET", "/a", None, {}, 5)
    assert (first.status, first.content_type, first.body) == (200, "text/plain", b"hello world")
    assert len(transport._idle) == 1  # reusable after the trailers
    second = transport.request("GET", "/b", None, {}, 5)
    assert (second.status, second.body) == (200, b"")
    assert server.accepted == 1
    transport.close()


def test_connection_close_is_not_pooled(raw: Callable[[Handler], RawServer]) -> None:
    server = serve(
        raw,
        keep_alive(
            b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n"
            b"retry-after: 3\r\n\r\nno"
        ),
    )
    transport = SyncHTTPTransport(server.url)
    answer = transport.request("GET", "/", None, {}, 5)
    assert (answer.status, answer.body, answer.retry_after) == (503, b"no", 3.0)
    assert transport._idle == []
    transport.close()


def test_retry_after_as_an_http_date(raw: Callable[[Handler], RawServer]) -> None:
    when = formatdate(time.time() + 60, usegmt=True).encode()
    server = serve(
        raw,
        keep_alive(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: "
            + when
            + b"\r\n\r\n"
        ),
    )
    transport = SyncHTTPTransport(server.url)
    answer = transport.request("GET", "/", None, {}, 5)
    assert answer.retry_after is not None and 55 <= answer.retry_after <= 60
    transport.close()


def test_http10_body_runs_to_eof(raw: Callable[[Handler], RawServer]) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n[1,")
        time.sleep(0.05)
        conn.sendall(b"2]")

    server = serve(raw, handle)
    transport = SyncHTTPTransport(server.url)
    answer = transport.request("POST", "/", b"{}", {}, 5)
    assert (answer.status, answer.body) == (200, b"[1,2]")
    assert transport._idle == []
    transport.close()


def test_interim_responses_are_skipped(raw: Callable[[Handler], RawServer]) -> None:
    server = serve(
        raw,
        keep_alive(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        ),
    )
    transport = SyncHTTPTransport(server.url)
    answer = transport.request("POST", "/", b"{}", {}, 5)
    assert (answer.status, answer.body) == (200, b"ok")
    transport.close()


def test_the_timeout_covers_the_whole_exchange(raw: Callable[[Handler], RawServer]) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):  # each byte well within the timeout, the whole far beyond it
            conn.sendall(b"x")
            time.sleep(0.05)

    server = serve(raw, handle)
    transport = SyncHTTPTransport(server.url)
    started = time.monotonic()
    with pytest.raises(tether.DeadlineExceeded):
        transport.request("GET", "/", None, {}, 0.5)
    assert time.monotonic() - started < 1.5
    assert transport._idle == []  # the timed-out connection was closed, not pooled
    transport.close()


def test_a_connection_the_server_closed_while_idle_is_replaced(
    raw: Callable[[Handler], RawServer],
) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)  # one answer, keep-alive promised, then a close
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" + str(index).encode())

    server = serve(raw, handle)
    transport = SyncHTTPTransport(server.url)
    assert transport.request("POST", "/", b"{}", {}, 5).body == b"0"
    time.sleep(0.2)  # the server has closed the pooled connection by now
    assert transport.request("POST", "/", b"{}", {}, 5).body == b"1"  # not sent on the dead one
    assert server.accepted == 2
    transport.close()


def test_a_drop_after_sending_is_retried_only_when_idempotent(
    raw: Callable[[Handler], RawServer],
) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" + str(index).encode())
        if index % 2 == 0:
            server.read_request(conn)  # the second request on a connection: read, dropped
        else:
            while server.read_request(conn) is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nr")

    server = serve(raw, handle)
    transport = SyncHTTPTransport(server.url)
    assert transport.send("s", "m", b"{}", {}, 5).body == b"0"
    with pytest.raises(tether.Unavailable) as caught:
        transport.send("s", "m", b"{}", {}, 5)  # may have run: not retried
    assert caught.value.details == {"sent": True}
    assert transport.send("s", "m", b"{}", {}, 5).body == b"1"  # connection 1
    transport.close()

    transport = SyncHTTPTransport(server.url)
    assert transport.send("s", "m", b"{}", {}, 5).body == b"2"  # connection 2
    answer = transport.send("s", "m", b"{}", {}, 5, idempotent=True)  # dropped, then retried
    assert answer.body == b"3"
    transport.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"",
    ],
)
def test_broken_answers_are_unavailable(raw: Callable[[Handler], RawServer], answer: bytes) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(answer)

    server = serve(raw, handle)
    transport = SyncHTTPTransport(server.url)
    with pytest.raises(tether.Unavailable) as caught:
        transport.request("GET", "/", None, {}, 5)
    assert caught.value.details == {"sent": True}
    transport.close()


def test_request_on_the_wire(raw: Callable[[Handler], RawServer]) -> None:
    server = serve(raw, keep_alive(b"HTTP/1.1 204 No Content\r\n\r\n"))
    transport = SyncHTTPTransport(server.url + "/prefix")
    headers = {"content-type": "application/json", "accept": "application/json", "x-a": "1"}
    assert transport.send("svc", "m\u00e9thode", b"{}", headers, 5).status == 204
    assert transport.request("GET", "/g", None, {"accept": "application/json"}, 5).status == 204
    post, get = server.requests
    assert post.startswith(b"POST /prefix/rpc/svc/m%C3%A9thode HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in post and b"\r\ncontent-length: 2" in post
    assert b"\r\nx-a: 1" in post and b"accept" not in post  # accept = content-type: left out
    assert get.startswith(b"GET /prefix/g HTTP/1.1\r\n") and b"\r\naccept: application/json" in get
    assert b"content-length" not in get
    transport.close()
