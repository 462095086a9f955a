"""Parsing ``name=value`` and ``name:=json`` call arguments from the command line."""

from __future__ import annotations

import json
from typing import Any


def parse_arguments(items: list[str], json_object: str | None = None) -> dict[str, Any]:
    """Turn command-line arguments into a dict of call arguments.

    ``name=text`` gives the string ``text``; ``name:=JSON`` gives the parsed
    JSON value (numbers, booleans, null, lists, objects), as HTTPie does.
    ``json_object`` (from ``--json``) is a JSON object merged first.

    Raises:
        ValueError: an item has neither form, a JSON value does not parse, or
            ``--json`` is not an object.
    """
    arguments: dict[str, Any] = {}
    if json_object:
        try:
            loaded = json.loads(json_object)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError("--json must be a JSON object of arguments by name")
        arguments.update(loaded)
    for item in items:
        name, sep, raw = item.partition(":=")
        if sep and "=" not in name:
            try:
                arguments[name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}:= takes a JSON value: {exc}") from None
            continue
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"arguments look like name=text or name:=JSON, got {item!r}")
        arguments[name] = text
    return arguments
