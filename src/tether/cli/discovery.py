"""``tether services`` and ``tether health``: what the registry knows, and readiness."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import typer
from rich.table import Table

from tether.cli.output import emit, err, fail, out
from tether.errors import TetherError
from tether.registry import InstanceRecord, RegistryError, open_registry
from tether.settings import get_settings

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        metavar="URL",
        help="sqlite:///path, nats://host:port or memory://; default: TETHER_REGISTRY_URL "
        "or the SQLite file in the state directory.",
    ),
]


def _registry_url(registry: str | None) -> str:
    return registry or get_settings().effective_registry_url


def _row(record: InstanceRecord) -> dict[str, Any]:
    return {
        "instance_id": record.instance_id,
        "services": [f"{s.name}@{s.version}" if s.version else s.name for s in record.services],
        "address": record.address,
        "health": record.health,
        "service_health": record.service_health,
        "last_heartbeat": record.last_heartbeat.isoformat(),
        "metadata": record.metadata,
    }


def _table(records: list[InstanceRecord], title: str) -> Table:
    table = Table(title=title)
    widest = max((len(r.address) for r in records), default=7)
    table.add_column("service", overflow="fold")
    table.add_column("instance", overflow="fold")
    table.add_column("address", min_width=widest, overflow="fold")  # never cut an address
    table.add_column("health")
    table.add_column("heartbeat")
    for record in records:
        for ref in record.services:
            status = record.status_for(ref.name)
            colour = {"passing": "green", "warning": "yellow"}.get(status, "red")
            table.add_row(
                f"{ref.name} v{ref.version}" if ref.version else ref.name,
                record.instance_id,
                record.address,
                f"[{colour}]{status}[/]",
                record.last_heartbeat.strftime("%H:%M:%S"),
            )
    return table


async def _list(url: str, service: str | None) -> list[InstanceRecord]:
    async with open_registry(url) as registry:
        return await registry.list(service)


async def _watch(url: str, service: str | None) -> None:
    records: dict[str, InstanceRecord] = {}
    async with open_registry(url) as registry:
        synced = False
        async for event in registry.watch(service):
            if event.kind == "synced":
                synced = True
            elif event.record is not None and event.kind == "removed":
                records.pop(event.record.instance_id, None)
            elif event.record is not None:
                records[event.record.instance_id] = event.record
            if not out.is_terminal:
                if event.kind != "synced":
                    emit({"event": event.kind, **_row(event.record)} if event.record else {})
            elif synced:
                out.print(_table(sorted(records.values(), key=lambda r: r.instance_id), url))


def services(
    service: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
    registry: RegistryOption = None,
    watch: Annotated[bool, typer.Option(help="Keep printing changes (Ctrl-C stops).")] = False,
) -> None:
    """List services and their instances with health, from the registry.

    A table in a terminal; JSON when piped (with --watch: one JSON event a line).
    """
    url = _registry_url(registry)
    try:
        if watch:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_watch(url, service))
            return
        records = asyncio.run(_list(url, service))
    except (RegistryError, OSError, ValueError) as exc:
        err.print(f"[bold red]error[/] unavailable: registry {url}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if out.is_terminal:
        out.print(_table(records, url))
    else:
        emit([_row(r) for r in records])


def health(
    target: Annotated[
        str, typer.Argument(help="An instance URL (http://host:port) or a service name.")
    ],
    registry: RegistryOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 10.0,
) -> None:
    """Check readiness; exit 1 when unhealthy.

    For a URL: its GET /readyz with each check. For a service name: every
    instance in the registry; healthy when at least one instance is.
    """
    if target.startswith(("http://", "https://")):
        from tether.cli.remote import fetch

        try:
            status, report = fetch(target, "/readyz", timeout)
        except TetherError as exc:
            raise fail(exc) from None
        emit(report)
        raise typer.Exit(0 if status == 200 else 1)
    url = _registry_url(registry)
    try:
        records = asyncio.run(_list(url, target))
    except (RegistryError, OSError, ValueError) as exc:
        err.print(f"[bold red]error[/] unavailable: registry {url}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    emit({"service": target, "instances": [_row(r) for r in records]})
    if not any(r.is_healthy(target) for r in records):
        err.print(f"[bold red]unhealthy[/]: no healthy instance of {target!r} in {url}")
        raise typer.Exit(1)
