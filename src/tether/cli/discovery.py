"""``tether services`` and ``tether health``: what the registry knows, and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from tether.cli.output import emit, err, fail, out
from tether.errors import TetherError
from tether.registry import InstanceRecord, RegistryError, RegistryUnavailable, open_registry
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
    table.add_column("last heartbeat (UTC)")
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


async def _list(
    url: str, service: str | None, timeout: float | None = None
) -> list[InstanceRecord]:
    async with open_registry(url) as registry:
        try:
            return await asyncio.wait_for(registry.list(service), timeout)
        except TimeoutError:
            raise RegistryUnavailable(f"no answer within {round(timeout or 0, 1):g} s") from None


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

    A table in a terminal (heartbeats in UTC); JSON when piped (timestamps in
    ISO 8601 with their offset; with --watch: one JSON event a line).
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
    timeout: Annotated[
        float, typer.Option(help="Seconds before giving up (with --wait: in all).")
    ] = 10.0,
    wait: Annotated[
        bool, typer.Option(help="Keep checking until healthy, for up to --timeout seconds.")
    ] = False,
    min_healthy: Annotated[
        int, typer.Option(min=1, help="For a service name: healthy instances needed.")
    ] = 1,
) -> None:
    """Check readiness; exit 1 when unhealthy.

    For a URL: its GET /readyz with each check. For a service name: every
    instance in the registry; healthy when at least --min-healthy instances
    are. With --wait, checks again every 0.2 s until healthy or --timeout.
    """
    deadline = time.monotonic() + timeout
    if target.startswith(("http://", "https://")):
        from tether.cli.remote import fetch

        while True:
            try:
                status, report = fetch(target, "/readyz", max(0.1, deadline - time.monotonic()))
            except TetherError as exc:
                if wait and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise fail(exc) from None
            if status == 200 or not wait or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        emit(report)
        raise typer.Exit(0 if status == 200 else 1)
    url = _registry_url(registry)
    while True:
        try:
            records = asyncio.run(_list(url, target, max(0.1, deadline - time.monotonic())))
        except (RegistryError, OSError, ValueError) as exc:
            if wait and not isinstance(exc, ValueError) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            err.print(f"[bold red]error[/] unavailable: registry {url}: {exc}", highlight=False)
            raise typer.Exit(1) from None
        healthy = sum(r.is_healthy(target) for r in records)
        if healthy >= min_healthy or not wait or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    emit({"service": target, "instances": [_row(r) for r in records]})
    if healthy < min_healthy:
        found = f"no healthy instance of {target!r} in {url}"
        if healthy:
            found = f"{healthy} healthy instance(s) of {target!r} in {url}, {min_healthy} needed"
        err.print(f"[bold red]unhealthy[/]: {found}", highlight=False)
        raise typer.Exit(1)
