"""The ``tether`` command against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.servers import ROOT, ServerProcess

#: The console script pip installed next to this interpreter.
CONSOLE_SCRIPT = Path(sys.executable).with_name("tether")
# Wide enough that rich does not wrap error lines on stderr.
ENV = {**os.environ, "COLUMNS": "200"}


def tether_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=ENV,
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


def test_describe_one_service_with_the_console_script(inventory_server: ServerProcess) -> None:
    assert CONSOLE_SCRIPT.is_file(), "pip install the package: it makes the tether script"
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "describe", inventory_server.url, "inventory"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    (service,) = json.loads(result.stdout)
    assert (service["name"], service["version"]) == ("inventory", "1")
    get = next(m for m in service["methods"] if m["name"] == "get")
    assert get["parameters"]["required"] == ["name"] and get["idempotent"] is True
    assert [e["type"] for e in service["errors"]] == ["NotFound"]
    missing = tether_cli("describe", inventory_server.url, "nope")
    assert "not_found" in missing.stderr and "inventory" in missing.stderr


def test_serve_refuses_a_target_it_cannot_import() -> None:
    result = tether_cli("serve", "nosuch.mod:app", "--port", "0")
    assert result.returncode == 2
    assert "error not_found: cannot import nosuch.mod:app" in result.stderr
    assert "No module named 'nosuch'" in result.stderr
    assert "hint: give MODULE:ATTRIBUTE" in result.stderr
    assert "Traceback" not in result.stderr
    result = tether_cli("serve", "examples.inventory.app:nothing", "--port", "0")
    assert result.returncode == 2 and "error not_found: cannot find" in result.stderr
    result = tether_cli("serve", "examples.inventory.app", "--port", "0")
    assert result.returncode == 2 and "MODULE:ATTRIBUTE" in result.stderr


def test_serve_refuses_what_is_not_an_app() -> None:
    result = tether_cli("serve", "examples.inventory.app:create_app", "--port", "0")
    assert result.returncode == 2
    assert "error invalid_argument:" in result.stderr
    assert "is a builtins.function, not a tether.App" in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_options_that_a_relay_only_instance_cannot_honour() -> None:
    relay_only = [
        "serve",
        "examples.inventory.app:app",
        "--relay",
        "nats://127.0.0.1:1",
        "--no-http",
    ]
    for extra in (["--port", "9000"], ["--workers", "2"]):
        result = tether_cli(*relay_only, *extra)
        assert result.returncode == 2, result.stderr
        assert "--no-http serves no port and runs one process" in result.stderr
