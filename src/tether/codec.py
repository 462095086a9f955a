"""Wire codecs: JSON and msgpack bodies, and content negotiation.

JSON is parsed and written by pydantic-core (Rust) straight from and to the
typed schemas, so a JSON body is validated while it is parsed. msgpack goes
through ``ormsgpack`` into plain Python values that pydantic then validates;
``bytes`` travel as msgpack binary, ``datetime``, ``UUID`` and the like as
their JSON string forms.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import ormsgpack
from pydantic_core import from_json, to_json, to_jsonable_python

from tether.errors import StatusCode, TetherError


class Codec(StrEnum):
    """A body encoding; the value is the short name used in options.

    ``PYTHON`` is no encoding at all, for in-process (integrated) connections
    only: arguments go to the server as the caller's Python values, validated
    against the same parameter model; the result comes back validated and
    copied through pydantic's python mode (no bytes), and errors are the same
    as with JSON. It never goes on a wire: an HTTP or relay connection
    refuses it, and servers do not accept it.
    """

    JSON = "json"
    MSGPACK = "msgpack"
    PYTHON = "python"

    @property
    def content_type(self) -> str:
        """The media type sent in ``content-type``."""
        return _CONTENT_TYPES[self]


_CONTENT_TYPES = {
    Codec.JSON: "application/json",
    Codec.MSGPACK: "application/msgpack",
    Codec.PYTHON: "application/x-tether-python",  # never sent; no server accepts it
}

_MEDIA_TYPES: dict[str, Codec] = {
    "application/json": Codec.JSON,
    "application/msgpack": Codec.MSGPACK,
    "application/x-msgpack": Codec.MSGPACK,
    "application/vnd.msgpack": Codec.MSGPACK,
}


def codec_for_content_type(content_type: str | None) -> Codec:
    """Return the codec for a request's ``content-type`` header.

    A missing header means JSON (so a bare ``curl -d`` works).

    Raises:
        TetherError: ``invalid_argument`` with HTTP 415 for any other media type.
    """
    if not content_type:
        return Codec.JSON
    exact = _MEDIA_TYPES.get(content_type)
    if exact is not None:
        return exact
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _MEDIA_TYPES:
        return _MEDIA_TYPES[media]
    if media == "application/x-www-form-urlencoded":
        # curl -d without -H sends this; the body is still the JSON object.
        return Codec.JSON
    raise TetherError(
        f"unsupported content-type {media!r}; send application/json or application/msgpack",
        code=StatusCode.INVALID_ARGUMENT,
        http_status=415,
    )


def codec_for_accept(accept: str | None, default: Codec) -> Codec:
    """Return the codec a response should use, from the ``accept`` header.

    Absent, ``*/*`` or a list naming neither codec first answers in ``default``
    (the request's codec). The first known media type in the header wins;
    quality values are not weighed.

    Raises:
        TetherError: ``invalid_argument`` with HTTP 406 when the header names
            only media types Tether cannot produce.
    """
    if not accept:
        return default
    exact = _MEDIA_TYPES.get(accept)
    if exact is not None:
        return exact
    wildcard = False
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _MEDIA_TYPES:
            return _MEDIA_TYPES[media]
        if media in ("*/*", "application/*", ""):
            wildcard = True
    if wildcard:
        return default
    raise TetherError(
        f"cannot answer in {accept!r}; accept application/json or application/msgpack",
        code=StatusCode.INVALID_ARGUMENT,
        http_status=406,
    )


def _msgpack_default(value: Any) -> Any:
    # Decimal, set, timedelta and the rest: their JSON forms, which pydantic
    # validates back to the declared type on the other side.
    return to_jsonable_python(value)


# Enum members are looked up through a descriptor in Python 3.11: the hot path
# compares with a module constant instead.
_MSGPACK = Codec.MSGPACK

_PACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS | ormsgpack.OPT_SERIALIZE_PYDANTIC


def pack(value: Any) -> bytes:
    """Encode a Python value as msgpack.

    Raises:
        TypeError: for a value that has no msgpack or JSON form.
    """
    return ormsgpack.packb(value, default=_msgpack_default, option=_PACK_OPTIONS)


def unpack(body: bytes) -> Any:
    """Decode a msgpack body.

    Raises:
        TetherError: ``invalid_argument`` when the body is not valid msgpack.
    """
    try:
        return ormsgpack.unpackb(body)
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError) as exc:
        raise TetherError(
            f"malformed msgpack body: {exc}", code=StatusCode.INVALID_ARGUMENT
        ) from None


def encode_any(value: Any, codec: Codec) -> bytes:
    """Encode an untyped value (dynamic calls, error envelopes).

    JSON carries ``bytes`` as URL-safe base64, like the typed path.
    """
    if codec is _MSGPACK:
        return pack(value)
    return to_json(value, bytes_mode="base64")


def decode_any(body: bytes, codec: Codec) -> Any:
    """Decode an untyped body.

    Raises:
        TetherError: ``invalid_argument`` when the body cannot be decoded.
    """
    if codec is Codec.MSGPACK:
        return unpack(body)
    try:
        return from_json(body)
    except ValueError as exc:
        raise TetherError(f"malformed JSON body: {exc}", code=StatusCode.INVALID_ARGUMENT) from None
