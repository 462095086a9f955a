"""Bad declarations and bad client options are refused at once, with ValueError."""

from __future__ import annotations

import asyncio
import math

import pytest

import tether
from tests.apps.behaviour import Behave
from tests.apps.behaviour import app as behaviour_app


@pytest.mark.parametrize("name", ["a/b", "a.b", "", "a b", "get?x=1", "x#y"])
def test_method_wire_names_are_checked_at_declaration(name: str) -> None:
    with pytest.raises(ValueError, match="method name"):
        tether.method(name=name)


@pytest.mark.parametrize("name", ["a/b", "a.b", "in ventory"])
def test_service_names_are_checked_at_declaration(name: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        tether.service(name=name)(type("Svc", (), {}))


def test_good_wire_names_are_taken() -> None:
    @tether.service(name="good-svc_2")
    class Good:
        @tether.method(name="get-it_2")
        def get(self) -> int: ...

    assert set(tether.service_spec(Good).methods) == {"get-it_2"}


@pytest.mark.parametrize("timeout", [0, -1.0, math.nan])
def test_method_timeouts_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        tether.method(timeout=timeout)


@pytest.mark.parametrize("timeout", [0, -5, math.nan, math.inf])
def test_client_timeouts_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        tether.Client(timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        tether.AsyncClient(timeout=timeout)
    with tether.Client() as client:
        with pytest.raises(ValueError, match="timeout"):
            client.connect("http://127.0.0.1:9", timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            client.integrated(behaviour_app, timeout=timeout)
        conn = client.integrated(behaviour_app)
        with pytest.raises(ValueError, match="timeout"):
            conn.with_timeout(timeout)
        with pytest.raises(ValueError, match="timeout"):
            conn.proxy(Behave, timeout=timeout)


def test_the_async_client_checks_timeouts_too() -> None:
    async def scenario() -> None:
        async with tether.AsyncClient() as client:
            with pytest.raises(ValueError, match="timeout"):
                client.connect("http://127.0.0.1:9", timeout=0)
            conn = client.integrated(behaviour_app)
            with pytest.raises(ValueError, match="timeout"):
                conn.with_timeout(0)
            with pytest.raises(ValueError, match="timeout"):
                conn.proxy(Behave, timeout=-1)
            with pytest.raises(ValueError, match=r"service\.method"):
                await conn.call("greet")

    asyncio.run(scenario())


def test_unknown_codecs_and_call_names_are_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        tether.Client(codec="xml")
    with pytest.raises(ValueError, match="xml"):
        tether.AsyncClient(codec="xml")
    with tether.Client() as client:
        conn = client.integrated(behaviour_app)
        for name in ("greet", ".greet", "behave."):
            with pytest.raises(ValueError, match=r"service\.method"):
                conn.call(name)
