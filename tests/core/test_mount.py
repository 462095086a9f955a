"""An App mounted into FastAPI, served by a real uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

import tether
from tests.apps.behaviour import Behave, BehaveImpl
from tests.apps.behaviour import app as behaviour_app
from tests.fixtures.servers import free_port


@pytest.fixture
def fastapi_url() -> Iterator[str]:
    outer = FastAPI()

    @outer.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    outer.mount("/tether", behaviour_app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(outer, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_mounted_under_a_prefix(fastapi_url: str) -> None:
    with tether.Client(timeout=10) as client:
        behave = client.connect(fastapi_url + "/tether").proxy(Behave)
        assert behave.greet("mounted") == "hello mounted!"
        with pytest.raises(tether.RemoteError) as caught:
            client.connect(fastapi_url + "/tether").call("behave.nope")
        assert caught.value.code is tether.StatusCode.UNIMPLEMENTED
    import urllib.request

    with urllib.request.urlopen(fastapi_url + "/tether/docs", timeout=5) as r:
        assert b"/tether/openapi.json" in r.read()
    with urllib.request.urlopen(fastapi_url + "/hello", timeout=5) as r:
        assert r.status == 200


def serve_in_thread(asgi: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def hooked_app() -> tuple[tether.App, list[str]]:
    """A fresh App whose start-up and shutdown hooks log themselves."""
    events: list[str] = []
    app = tether.App(BehaveImpl(), title="Hooked")

    async def started() -> None:
        events.append("startup")

    async def stopped() -> None:
        events.append("shutdown")

    app.on_startup(started)
    app.on_shutdown(stopped)
    return app, events


def test_the_parent_runs_a_mounted_apps_lifespan() -> None:
    app, events = hooked_app()
    outer = FastAPI(lifespan=app.lifespan)
    outer.mount("/tether", app)
    server, thread, url = serve_in_thread(outer)
    try:
        assert events == ["startup"]
        with tether.Client(timeout=10) as client:
            assert client.connect(url + "/tether").proxy(Behave).greet("x") == "hello x!"
    finally:
        server.should_exit = True
        thread.join(20)
    assert events == ["startup", "shutdown"]


def test_without_the_lifespan_a_mounted_apps_hooks_do_not_run() -> None:
    # What the README warns of: Starlette sends lifespan events to the outer app only.
    app, events = hooked_app()
    outer = FastAPI()
    outer.mount("/tether", app)
    server, thread, url = serve_in_thread(outer)
    try:
        with tether.Client(timeout=10) as client:
            assert client.connect(url + "/tether").proxy(Behave).greet("y") == "hello y!"
    finally:
        server.should_exit = True
        thread.join(20)
    assert events == []
