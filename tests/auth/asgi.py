"""Drive an ASGI app in-process: one HTTP request, the whole response.

Not a mock: the real App handles a real ASGI scope, as uvicorn would pass
it, minus the socket. Used where the tests need many requests quickly.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from tether.server.app import App


@dataclass
class Answer:
    """An HTTP response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The error envelope's ``error`` object."""
        return dict(self.json()["error"])


async def request(
    app: App,
    verb: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | dict[str, Any] = b"",
    client: str = "127.0.0.1",
    client_cert_pem: str | None = None,
) -> Answer:
    """Send one request to ``app`` and collect its answer.

    Args:
        body: bytes, or a dict sent as JSON (with its content-type).
        client: the peer address in the scope.
        client_cert_pem: a verified client certificate, as the ASGI TLS extension carries it.
    """
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs.setdefault("content-type", "application/json")
    hdrs.setdefault("content-length", str(len(body)))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": verb,
        "scheme": "https" if client_cert_pem else "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hdrs.items()],
        "client": (client, 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    if client_cert_pem is not None:
        scope["extensions"] = {
            "tls": {"client_cert_chain": [client_cert_pem], "tls_version": 0x0304}
        }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    answer = Answer(0)
    chunks: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    answer.body = b"".join(chunks)
    return answer
