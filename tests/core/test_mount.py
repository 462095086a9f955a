"""An App mounted into FastAPI, served by a real uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

import tether
from tests.apps.behaviour import Behave
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
