"""The ``python`` codec: integrated calls without an encoding.

The behaviour suite covers what it shares with JSON (types, errors,
deadlines) when ``python`` is among its codecs for integrated connections;
these are what only it has: copies instead of bytes, and no wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

import tether


class Item(BaseModel):
    name: str
    tags: list[str]


@tether.service(name="store")
class Store:
    def get(self) -> Item: ...

    def put(self, item: Item) -> int: ...

    def get_dict(self) -> Item: ...

    async def aget(self) -> Item: ...


class StoreImpl(Store):
    def __init__(self) -> None:
        self.item = Item(name="a", tags=["x"])
        self.received: list[Item] = []

    def get(self) -> Item:
        return self.item

    def put(self, item: Item) -> int:
        self.received.append(item)
        return len(item.tags)

    def get_dict(self) -> Item:
        return {"name": "d", "tags": ["t"]}  # type: ignore[return-value]

    async def aget(self) -> Item:
        await asyncio.sleep(0)
        return self.item


def test_results_are_copies_never_the_servers_objects() -> None:
    impl = StoreImpl()
    with tether.Client() as client:
        store = client.integrated(tether.App(impl), codec="python").proxy(Store)
        got = store.get()
        assert got == impl.item and got is not impl.item and got.tags is not impl.item.tags
        got.tags.append("mine")
        assert impl.item.tags == ["x"]
        assert store.get_dict() == Item(name="d", tags=["t"])  # converted as over JSON
        assert store.aget() == impl.item


@tether.service(name="loose")
class Loose:
    def anything(self) -> dict[str, Any]: ...


class LooseImpl(Loose):
    def __init__(self) -> None:
        self.thing = object()

    def anything(self) -> dict[str, Any]:
        return {"thing": self.thing}


@pytest.mark.parametrize("codec", ["json", "python"])
def test_an_object_without_a_json_form_is_internal_as_over_json(codec: str) -> None:
    """Under ``Any`` pydantic's python mode would pass any object on, by reference."""
    with tether.Client() as client:
        loose = client.integrated(tether.App(LooseImpl()), codec=codec).proxy(Loose)
        with pytest.raises(tether.RemoteError) as caught:
            loose.anything()
    assert caught.value.code is tether.StatusCode.INTERNAL
    assert "declared result type" in caught.value.message


def test_arguments_are_validated_like_json() -> None:
    impl = StoreImpl()
    with tether.Client() as client:
        store = client.integrated(tether.App(impl), codec="python").proxy(Store)
        assert store.put({"name": "b", "tags": ["1", "2"]}) == 2  # type: ignore[arg-type]
        assert impl.received == [Item(name="b", tags=["1", "2"])]
        with pytest.raises(tether.RemoteError) as caught:
            store.put({"name": "b"})  # type: ignore[arg-type]
        assert caught.value.code is tether.StatusCode.INVALID_ARGUMENT
        assert caught.value.details[0]["loc"] == ["item", "tags"]


def test_the_python_codec_never_goes_on_a_wire() -> None:
    with tether.Client() as client, pytest.raises(ValueError, match="integrated"):
        client.connect("http://127.0.0.1:1", codec="python")


@pytest.mark.parametrize("explicit", [True, False], ids=["argument", "client-default"])
def test_connect_and_relay_refuse_the_python_codec_at_once(explicit: bool) -> None:
    only = "integrated connections only"
    codec = "python" if explicit else None
    default = "json" if explicit else "python"
    # Conflicting credentials (token and api_key) would raise their own ValueError: the
    # codec is checked first.
    with tether.Client(codec=default) as client:
        with pytest.raises(ValueError, match=only) as caught:
            client.connect("http://127.0.0.1:1", codec=codec, token="t", api_key="k")
        assert caught.value.args[0].startswith("connect(): ")
        with pytest.raises(ValueError, match=only) as caught:
            client.relay("nats://127.0.0.1:1", codec=codec, token="t", api_key="k")
        assert caught.value.args[0].startswith("relay(): ")
        assert client.connect("http://127.0.0.1:1", codec="msgpack").codec is tether.Codec.MSGPACK
        assert client.integrated(tether.App(StoreImpl()), codec=codec).codec is tether.Codec.PYTHON

    async def main() -> None:
        async with tether.AsyncClient(codec=default) as client:
            with pytest.raises(ValueError, match=only):
                client.connect("http://127.0.0.1:1", codec=codec, token="t", api_key="k")
            with pytest.raises(ValueError, match=only):
                client.relay("nats://127.0.0.1:1", codec=codec, token="t", api_key="k")
            conn = client.integrated(tether.App(StoreImpl()), codec=codec)
            assert conn.codec is tether.Codec.PYTHON

    asyncio.run(main())


def test_async_integrated_python_codec() -> None:
    impl = StoreImpl()

    async def main() -> None:
        async with tether.AsyncClient() as client:
            store = client.integrated(tether.App(impl), codec="python").proxy(Store)
            got = await store.aget()
            assert got == impl.item and got is not impl.item
            assert await store.get() == impl.item  # a sync method, in the App's threads
            assert await store.put(Item(name="c", tags=[])) == 0

    asyncio.run(main())
