"""The App that the behaviour suite calls, in-process and over HTTP.

Two services: ``types`` echoes one value of every supported type, and
``behave`` covers defaults, ``-> None``, sync and async methods, deadlines
and errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import time
import uuid
from decimal import Decimal
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel
from typing_extensions import TypedDict

import tether
from tether.context import current_call


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Interface(BaseModel):
    name: str
    mtu: int = 1500


class Port(BaseModel):
    device: str
    interfaces: list[Interface]
    seen: dt.datetime
    labels: dict[str, str] = {}


@dataclasses.dataclass
class Point:
    x: int
    y: float
    label: str = ""


class Pair(TypedDict):
    left: int
    right: str


#: name -> (type, a value that must round-trip exactly)
SAMPLES: dict[str, tuple[Any, Any]] = {
    "str": (str, 'héllo ✓ "quoted"\n'),
    "int": (int, 2**62 + 1),
    "negative_int": (int, -17),
    "float": (float, 0.1),
    "bool": (bool, True),
    "none": (type(None), None),
    "optional_none": (Optional[int], None),  # noqa: UP045 - the point is Optional
    "optional_value": (Optional[int], 7),  # noqa: UP045
    "union": (Union[int, str], "seven"),  # noqa: UP007 - the point is Union
    "pipe_union": (int | list[str], ["a", "b"]),
    "list": (list[int], [3, 1, 2]),
    "dict": (dict[str, int], {"a": 1, "b": 2}),
    "tuple": (tuple[int, str, float], (1, "two", 3.5)),
    "var_tuple": (tuple[int, ...], (1, 2, 3)),
    "set": (set[int], {1, 2, 3}),
    "frozenset": (frozenset[str], frozenset({"x", "y"})),
    "literal": (Literal["up", "down"], "down"),
    "enum": (Color, Color.GREEN),
    "int_enum": (Level, Level.HIGH),
    "datetime_aware": (
        dt.datetime,
        dt.datetime(2026, 11, 22, 10, 30, 1, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ),
    "datetime_naive": (dt.datetime, dt.datetime(2026, 11, 22, 10, 30, 1, 5)),
    "date": (dt.date, dt.date(2026, 2, 28)),
    "time": (dt.time, dt.time(23, 59, 58, 999)),
    "timedelta": (dt.timedelta, dt.timedelta(days=1, seconds=2, microseconds=3)),
    "uuid": (uuid.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    "decimal": (Decimal, Decimal("12.3400")),
    "bytes": (bytes, b"\x00\xff\xfe binary \x80"),
    "model": (
        Port,
        Port(
            device="r1",
            interfaces=[Interface(name="ge-0/0/0"), Interface(name="lo0", mtu=65535)],
            seen=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            labels={"k": "v"},
        ),
    ),
    "dataclass": (Point, Point(1, 2.5, "p")),
    "typeddict": (Pair, {"left": 1, "right": "r"}),
    "list_of_models": (list[Interface], [Interface(name="a"), Interface(name="b", mtu=9000)]),
    "nested": (dict[str, list[tuple[int, dt.date]]], {"k": [(1, dt.date(2020, 1, 1))]}),
}


def _echo(kind: Any) -> Any:
    def echo(self: object, value: Any) -> Any:
        return value

    echo.__annotations__ = {"value": kind, "return": kind}
    return echo


# The interface is its own implementation here: one echo method per type.
Types = tether.service(name="types")(
    type("Types", (), {f"echo_{name}": _echo(kind) for name, (kind, _) in SAMPLES.items()})
)


class Missing(tether.ServiceError):
    """Declared by the interface: the thing asked for is not there."""

    code = tether.StatusCode.NOT_FOUND


class Busy(tether.ServiceError):
    """A ServiceError with another code."""

    code = tether.StatusCode.RESOURCE_EXHAUSTED


class Gone(tether.ServiceError):
    """Declared by ``fail``; its constructor takes other arguments than ServiceError's."""

    code = tether.StatusCode.FAILED_PRECONDITION

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is gone", {"name": name})


@tether.service(name="behave", version="2", errors=[Missing])
class Behave:
    """Methods that exercise the call path."""

    def greet(self, name: str, punctuation: str = "!", *, times: int = 1) -> str:
        """Keyword-only parameters and defaults."""
        ...

    def nothing(self) -> None:
        """Returns None."""
        ...

    async def async_greet(self, name: str) -> str:
        """An async method."""
        ...

    def sleep(self, seconds: float) -> float:
        """A sync method that blocks; returns the seconds slept."""
        ...

    async def async_sleep(self, seconds: float) -> float:
        """An async method that waits."""
        ...

    def deadline_left(self) -> float | None:
        """Seconds left before this call's deadline, as the server sees them."""
        ...

    @tether.method(errors=[Busy, Gone])
    def fail(self, kind: str) -> None:
        """Raise the error named by ``kind``: missing, busy, gone, server_only, crash."""
        ...

    def fail_undeclared(self, kind: str) -> None:
        """Raise Busy or Gone, which only ``fail`` declares: here they are undeclared."""
        ...

    def fail_with(self, code: str) -> None:
        """Raise a TetherError with ``code``, one of the 16 status codes."""
        ...

    @tether.method(timeout=1.5)
    def capped_deadline_left(self) -> float | None:
        """``deadline_left`` with the method's own 1.5 s timeout."""
        ...

    @tether.method(name="renamed-on-the-wire")
    def python_name(self) -> str:
        """A method whose wire name is not its Python name."""
        ...

    def bad_result(self) -> int:
        """Returns a value of the wrong type."""
        ...

    def thread_name(self) -> str:
        """The name of the thread the method runs in."""
        ...

    def size(self, data: bytes) -> int:
        """The length of ``data`` in bytes."""
        ...

    def nested_deadline(self, url: str, sleep: float = 0.0) -> float | None:
        """Call ``behave`` at ``url`` from inside this call; return the inner deadline left.

        With ``sleep``, the inner call sleeps that long (and should be cut short).
        """
        ...


class BehaveImpl(Behave):
    def greet(self, name: str, punctuation: str = "!", *, times: int = 1) -> str:
        return " ".join([f"hello {name}{punctuation}"] * times)

    def nothing(self) -> None:
        return None

    async def async_greet(self, name: str) -> str:
        await asyncio.sleep(0)
        return f"hello {name}"

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    async def async_sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def deadline_left(self) -> float | None:
        ctx = current_call()
        return None if ctx is None else ctx.remaining()

    def fail(self, kind: str) -> None:
        if kind == "missing":
            raise Missing("no such thing", {"kind": kind})
        if kind == "busy":
            raise Busy("try later")
        if kind == "gone":
            raise Gone("thing")
        if kind == "server_only":
            raise ServerOnly("a class the client does not have")
        raise RuntimeError("secret internal detail")

    def fail_undeclared(self, kind: str) -> None:
        if kind == "gone":
            raise Gone("thing")
        raise Busy("try later")

    def fail_with(self, code: str) -> None:
        raise tether.TetherError(f"failing with {code}", code=code)

    def capped_deadline_left(self) -> float | None:
        return self.deadline_left()

    def python_name(self) -> str:
        return "called by its wire name"

    def bad_result(self) -> int:
        return "not an int"  # type: ignore[return-value]

    def thread_name(self) -> str:
        import threading

        return threading.current_thread().name

    def size(self, data: bytes) -> int:
        return len(data)

    def nested_deadline(self, url: str, sleep: float = 0.0) -> float | None:
        with tether.Client(timeout=30) as client:  # 30 s, but the caller's deadline wins
            inner = client.connect(url).proxy(Behave)
            if sleep:
                inner.async_sleep(sleep)
            return inner.deadline_left()


class ServerOnly(tether.ServiceError):
    """Raised by ``fail`` but declared nowhere: callers get a RemoteError, even a
    caller that imports this module. Its wire name is its own (see error_name)."""

    code = tether.StatusCode.FAILED_PRECONDITION
    error_name = "tests.ServerOnlyError"


app = tether.App(Types(), BehaveImpl(), title="Behaviour", max_body_size=64 * 1024)
#: The same service in debug: unexpected errors carry their traceback.
debug_app = tether.App(BehaveImpl(), title="Behaviour (debug)", debug=True)
