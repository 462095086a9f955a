"""The ``tether`` command against a real server."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.servers import ROOT, ServerProcess


def tether_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_help_explains_every_command() -> None:
    result = tether_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "call", "describe"):
        assert command in result.stdout
    call_help = tether_cli("call", "--help").stdout
    assert "name:=JSON" in call_help and "--timeout" in call_help


def test_call_prints_the_result_as_json(inventory_server: ServerProcess) -> None:
    result = tether_cli("call", inventory_server.url, "inventory.get", "name=r1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["host"] == "10.0.0.1"


def test_call_with_json_values(inventory_server: ServerProcess) -> None:
    result = tether_cli(
        "call", inventory_server.url, "inventory.filter", 'tags:=["core"]', "platform=iosxe"
    )
    assert result.returncode == 0, result.stderr
    assert [d["name"] for d in json.loads(result.stdout)] == ["r1", "r2"]
    result = tether_cli(
        "call", inventory_server.url, "inventory.filter", "--json", '{"host_prefix": "10.0.1."}'
    )
    assert [d["name"] for d in json.loads(result.stdout)] == ["sw1", "sw2"]


def test_call_with_msgpack(inventory_server: ServerProcess) -> None:
    result = tether_cli(
        "call", inventory_server.url, "inventory.get", "name=fw1", "--codec", "msgpack"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["platform"] == "panos"


def test_errors_print_code_and_message_and_exit_non_zero(inventory_server: ServerProcess) -> None:
    result = tether_cli("call", inventory_server.url, "inventory.get", "name=ghost")
    assert result.returncode == 1
    assert "not_found" in result.stderr and "ghost" in result.stderr
    result = tether_cli("call", inventory_server.url, "inventory.get", "nom=r1")
    assert result.returncode == 1 and "invalid_argument" in result.stderr
    result = tether_cli("call", inventory_server.url, "inventory.get", "garbage")
    assert result.returncode == 2 and "name=text" in result.stderr
    result = tether_cli("call", "http://127.0.0.1:9", "inventory.get", "name=r1")
    assert result.returncode == 1 and "unavailable" in result.stderr


def test_describe(inventory_server: ServerProcess) -> None:
    result = tether_cli("describe", inventory_server.url)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)  # piped: JSON
    methods = {m["name"] for m in services[0]["methods"]}
    assert methods == {"list", "get", "filter", "add", "remove"}
    assert tether_cli("describe", inventory_server.url, "nope").returncode == 1
