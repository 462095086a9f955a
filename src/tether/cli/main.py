"""The ``tether`` command: serve an App, call a method, describe a service."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tether.cli import auth as auth_commands
from tether.cli import discovery as discovery_commands
from tether.cli import jobs as jobs_commands
from tether.cli.arguments import parse_arguments
from tether.cli.discovery import RegistryOption
from tether.cli.options import ApiKeyOption, LogLevelOption, TokenOption
from tether.cli.output import emit, err, fail, out
from tether.errors import TetherError
from tether.registry import DEFAULT_LEASE_SECONDS, RegistryError

if TYPE_CHECKING:
    from tether.server.app import App
    from tether.server.launch import LaunchOptions

app = typer.Typer(
    help="Tether: serve typed Python services and call them from anywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="The App to serve, as MODULE:ATTRIBUTE.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="TCP port (0 picks a free one). Default 8000.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (HTTP only).")] = 1,
    log_level: LogLevelOption = None,
    relay: Annotated[
        str | None,
        typer.Option(
            metavar="NATS_URL",
            help="Also serve through this NATS relay (nats://host:port or tls://...); "
            "credentials come from the TETHER_NATS_* settings.",
        ),
    ] = None,
    http: Annotated[
        bool, typer.Option("--http/--no-http", help="Serve HTTP (--no-http: the relay only).")
    ] = True,
    registry: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Register this instance in this registry (sqlite:///path, nats://host:port) "
            "while it serves. Default: TETHER_REGISTRY_URL when set; with --advertise "
            "alone, the SQLite registry in the state directory.",
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="The address clients should use, e.g. http://10.0.0.5:8000. Default: the "
            "listening address when it is a concrete one (not 0.0.0.0), or with --no-http "
            "the relay's nats://host:port#INSTANCE_ID.",
        ),
    ] = None,
    lease: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.5,
            help="Seconds the registry entry lives without a heartbeat (heartbeats "
            "every third of it).",
        ),
    ] = DEFAULT_LEASE_SECONDS,
    access_log: Annotated[
        bool,
        typer.Option(help="Log every HTTP request (uvicorn's access log)."),
    ] = True,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="Verify client certificates with this CA (PEM): mutual TLS."),
    ] = None,
) -> None:
    """Serve an App over HTTP, through a NATS relay, or both; register it in a registry.

    HTTP runs on uvicorn (with uvloop and httptools where installed). On
    SIGTERM or SIGINT it stops taking calls, drains the calls in flight, then
    deregisters.

    Examples: tether serve examples.inventory.app:app --port 8000;
    tether serve examples.inventory.app:app --port 8001 --registry sqlite:///tmp/r.db;
    tether serve examples.inventory.app:app --relay nats://127.0.0.1:4222 --no-http
    """
    from tether.server.launch import ENV_OPTIONS, LaunchOptions, advertised_address
    from tether.settings import get_settings

    sys.path.insert(0, os.getcwd())  # like uvicorn: MODULE is found from here
    # Import it here first: a bad target is one error line, not a worker's traceback.
    load_target(target)
    if not http and relay is None:
        err.print("[bold red]error[/]: --no-http needs --relay NATS_URL", highlight=False)
        raise typer.Exit(2)
    if not http and (port is not None or workers != 1):
        err.print(
            "[bold red]error[/]: --no-http serves no port and runs one process: "
            "drop --port and --workers, or start more processes for more relay instances",
            highlight=False,
        )
        raise typer.Exit(2)
    if port is None:
        port = 8000
    if log_level is None:
        log_level = get_settings().log_level
    if registry is None and (advertise is not None or get_settings().registry_url):
        registry = get_settings().effective_registry_url
    options = LaunchOptions(
        target,
        relay=relay,
        registry=registry,
        advertise=advertise,
        lease=lease,
        host=host,
        port=port if http else None,
        tls=tls_cert is not None,
    )
    if registry is not None:
        try:
            advertised_address(options, "INSTANCE_ID")  # fail now, not in a worker
        except ValueError as exc:
            err.print(f"[bold red]error[/]: {exc}", highlight=False)
            raise typer.Exit(2) from None
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    if not http:
        _serve_without_http(options, loop, log_level)
        return
    import uvicorn

    from tether.cli.auth import uvicorn_tls_options

    factory = False
    if relay is not None or registry is not None:
        # uvicorn imports the App in each worker: the factory hooks the relay
        # and the registration to each worker's own App.
        os.environ[ENV_OPTIONS] = options.to_env()
        target, factory = "tether.server.launch:app_factory", True
    uvicorn.run(
        target,
        factory=factory,
        host=host,
        port=port,
        workers=workers,
        loop=loop,
        log_level=log_level,
        access_log=access_log,
        **uvicorn_tls_options(tls_cert, tls_key, tls_client_ca),
        timeout_keep_alive=65,  # longer than the client's 30 s idle reuse window
        timeout_graceful_shutdown=30,
    )


def _serve_without_http(options: LaunchOptions, loop: str, log_level: str) -> None:
    """Serve through the relay alone (and register, if asked) until SIGINT/SIGTERM."""
    import asyncio
    import logging

    from tether.server.launch import prepare
    from tether.server.relay import run_hooked

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        application = prepare(load_target(options.target), options)
    except ValueError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    try:
        asyncio.run(run_hooked(application))
    except TetherError as exc:
        raise fail(exc) from None
    except (RegistryError, OSError) as exc:
        err.print(f"[bold red]error[/] unavailable: {exc}", highlight=False)
        raise typer.Exit(1) from None
    except ValueError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None


def load_target(target: str) -> App:
    """Import the App that ``MODULE:ATTRIBUTE`` names, for ``tether serve``.

    Prints ``error CODE: message`` and a hint on stderr and exits 2 when the
    target is malformed, cannot be imported or found, or is not a
    ``tether.App``. An exception raised by the module's own code while it is
    imported propagates with its traceback (it is a bug to read there).
    """
    from tether.server.app import App
    from tether.server.launch import import_target

    hint = (
        "give MODULE:ATTRIBUTE, importable from the current directory or PYTHONPATH, "
        "e.g. examples.inventory.app:app"
    )
    try:
        value = import_target(target)
    except ValueError as exc:
        raise _bad_target("invalid_argument", str(exc), hint) from None
    except ImportError as exc:
        raise _bad_target("not_found", f"cannot import {target}: {exc}", hint) from None
    except AttributeError as exc:
        raise _bad_target("not_found", f"cannot find {target}: {exc}", hint) from None
    if not isinstance(value, App):
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise _bad_target(
            "invalid_argument",
            f"{target} is a {kind}, not a tether.App",
            "tether serve serves a tether.App; serve another ASGI app with uvicorn, "
            "mounting the App into it if you like",
        )
    return value


def _bad_target(code: str, message: str, hint: str) -> typer.Exit:
    """Print the error and the hint; return the exit (2: a bad argument) to raise."""
    err.print(f"[bold red]error[/] [red]{code}[/]: {message}", highlight=False)
    err.print(f"hint: {hint}", highlight=False)
    return typer.Exit(2)


@app.command()
def call(
    url: Annotated[
        str,
        typer.Argument(
            help="The server, e.g. http://127.0.0.1:8000; a NATS relay, nats://host:port "
            "(any instance) or nats://host:port#INSTANCE_ID (that one); or a service's "
            "name, e.g. inventory, resolved through the registry."
        ),
    ],
    name: Annotated[str, typer.Argument(help="SERVICE.METHOD to call.")],
    arguments: Annotated[
        list[str] | None,
        typer.Argument(help="name=text (a string) or name:=JSON (a number, list, object...)."),
    ] = None,
    json_arguments: Annotated[
        str | None, typer.Option("--json", help="All arguments as one JSON object.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 30.0,
    codec: Annotated[str, typer.Option(help="json or msgpack on the wire.")] = "json",
    registry: RegistryOption = None,
    token: TokenOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Call a method and print its result as JSON.

    Credentials: --token or --api-key (or TETHER_TOKEN, TETHER_API_KEY) for
    every kind of target; for an http(s) URL, what tether login stored.
    Through a relay or the registry the token travels to the service, which
    checks it.

    Examples: tether call http://127.0.0.1:8000 inventory.get name=r1;
    tether call nats://127.0.0.1:4222 inventory.get name=r1;
    tether call inventory inventory.get name=r1 (any healthy registered instance)
    """
    from tether.client.client import Client

    try:
        parsed = parse_arguments(arguments or [], json_arguments)
        with Client(timeout=timeout, codec=codec) as client:
            if url.startswith(("nats://", "tls://")):
                # nats://host:port#ID: that instance
                connection = client.relay(url, token=token, api_key=api_key)
            elif "://" not in url:
                connection = client.service(url, registry=registry, token=token, api_key=api_key)
            else:
                connection = client.connect(url, token=token, api_key=api_key)
            result = connection.call(name, parsed)
    except TetherError as exc:
        raise fail(exc) from None
    except ValueError as exc:
        err.print(f"[bold red]error[/] invalid_argument: {exc}", highlight=False)
        raise typer.Exit(2) from None
    emit(result)


@app.command()
def describe(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000.")],
    service: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 10.0,
) -> None:
    """Describe the services a server hosts: methods, parameters, results.

    A table in a terminal; the JSON description (as GET /rpc serves it) when piped.
    """
    from tether.cli.remote import fetch_json

    try:
        description = fetch_json(url, "/rpc", timeout)
    except TetherError as exc:
        raise fail(exc) from None
    services = description.get("services", [])
    if service is not None:
        services = [s for s in services if s["name"] == service]
        if not services:
            known = ", ".join(s["name"] for s in description.get("services", []))
            err.print(f"[bold red]error[/] not_found: no service {service!r}; services: {known}")
            raise typer.Exit(1)
    if not out.is_terminal:
        emit(services)
        return
    for svc in services:
        table = Table(title=f"{svc['name']} v{svc['version']}", caption=svc.get("doc") or None)
        table.add_column("method", style="bold")
        table.add_column("parameters")
        table.add_column("result")
        table.add_column("options")
        for m in svc["methods"]:
            opts = ", ".join(
                k for k, on in (("idempotent", m["idempotent"]), ("timeout", m["timeout"])) if on
            )
            table.add_row(m["name"], _signature(m["parameters"]), _type(m["result"]), opts)
        out.print(table)


def _signature(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        suffix = "" if name in required else f" = {json.dumps(prop.get('default'))}"
        parts.append(f"{name}: {_type(prop)}{suffix}")
    return ", ".join(parts)


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array" and "items" in schema:
        return f"list[{_type(schema['items'])}]"
    if "format" in schema:
        return f"{kind}({schema['format']})"
    return str(kind)


config_app = typer.Typer(help="Tether's settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings and where each value came from.

    Sources, highest first: TETHER_* environment variables, tether.toml
    ($TETHER_CONFIG or ./tether.toml), defaults.
    """
    from tether.settings import Settings

    settings = Settings()
    origin = settings.sources()
    values = settings.model_dump(mode="json")
    if not out.is_terminal:
        emit({k: {"value": v, "source": origin[k]} for k, v in values.items()})
        return
    table = Table(title="tether settings")
    table.add_column("setting", style="bold")
    table.add_column("value")
    table.add_column("source")
    for name, value in values.items():
        table.add_row(name, json.dumps(value), origin[name])
    out.print(table)


app.command()(discovery_commands.services)
app.command()(discovery_commands.health)
auth_commands.register(app)  # login, logout, whoami, auth ...
jobs_commands.register(app)  # jobs submit|get|list|cancel|wait|types, worker


def main() -> None:
    """Entry point of the ``tether`` console script."""
    app()
