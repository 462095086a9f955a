"""``tether jobs ...`` (submit, get, list, cancel, wait, types) and ``tether worker``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tether.cli.arguments import parse_arguments
from tether.cli.options import ApiKeyOption, LogLevelOption, TokenOption
from tether.cli.output import emit, err, fail, out
from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.jobs.client import JobsClient
    from tether.jobs.model import Job
    from tether.jobs.worker import Worker

jobs_app = typer.Typer(
    help="Submit jobs to a server's /jobs API, inspect, cancel and wait for them. The server: "
    "--url, else TETHER_URL (or url in tether.toml).",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        "-u",
        help="The server, e.g. http://127.0.0.1:8000 (default: TETHER_URL, url in tether.toml).",
    ),
]
Timeout = Annotated[float, typer.Option(help="Seconds per request before giving up.")]


def _looks_like_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _server(option: str | None, positional: str | None = None) -> str:
    """The server URL: ``--url``, a URL given first (the older form), else the settings'.

    Raises:
        typer.Exit: none is known (exit 2, naming TETHER_URL).
    """
    if option and positional and option.rstrip("/") != positional.rstrip("/"):
        err.print(
            f"[bold red]error[/]: two servers given: --url {option} and {positional}",
            highlight=False,
        )
        raise typer.Exit(2)
    url = option or positional
    if not url:
        from tether.settings import get_settings

        url = get_settings().url
    if not url:
        err.print(
            "[bold red]error[/]: no server: give --url URL, or set TETHER_URL "
            "(or url in tether.toml)",
            highlight=False,
        )
        raise typer.Exit(2)
    return url


def _split(words: list[str], what: str) -> tuple[str | None, str]:
    """``[URL] VALUE`` positionals: the URL (None when absent) and the value."""
    if len(words) == 2 and _looks_like_url(words[0]):
        return words[0], words[1]
    if len(words) == 1 and not _looks_like_url(words[0]):
        return None, words[0]
    err.print(
        f"[bold red]error[/]: expected [URL] {what}, got {' '.join(words)!r}", highlight=False
    )
    raise typer.Exit(2)


def _jobs(url: str, timeout: float) -> tuple[Any, JobsClient]:
    from tether.client.client import Client

    client = Client(timeout=timeout)
    try:
        return client, client.connect(url).jobs
    except ValueError as exc:
        client.close()
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None


def _show(job: Job) -> None:
    from tether.jobs.wire import job_to_wire

    emit(job_to_wire(job))


def _follow(jobs: JobsClient, job: Job, timeout: float) -> Job:
    """Long poll until ``job`` is finished or ``timeout`` s pass, with a progress bar
    on stderr when it is a terminal."""
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(job.type, total=1.0)
        while True:
            message = f" {job.progress_message}" if job.progress_message else ""
            bar.update(
                task,
                completed=job.progress or 0.0,
                description=f"{job.type} {job.id[-6:]} [bold]{job.state.value}[/]{message}",
            )
            left = deadline - time.monotonic()
            if job.terminal or left <= 0:
                return job
            job = jobs.wait(job.id, min(left, 30.0), since_version=job.version)


def _finish(job: Job) -> None:
    """Print the result of a finished job, or its failure (exit 1)."""
    if not job.terminal:
        err.print(
            f"[bold red]error[/] [red]deadline_exceeded[/]: job {job.id} is still "
            f"{job.state.value}",
            highlight=False,
        )
        raise typer.Exit(1)
    if job.state.value == "succeeded":
        emit(job.result)
        return
    if job.state.value == "cancelled":
        err.print(f"[bold red]cancelled[/]: job {job.id} was cancelled", highlight=False)
        raise typer.Exit(1)
    error = job.error or {"code": "error", "message": "", "details": None}
    err.print(f"[bold red]failed[/] [red]{error['code']}[/]: {error['message']}", highlight=False)
    if error.get("details"):
        err.print(json.dumps(error["details"], indent=2, default=str), highlight=False)
    raise typer.Exit(1)


@jobs_app.command()
def submit(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="TYPE [PARAMETER]",
            help="The job type, then parameters: name=text or name:=JSON (a server URL "
            "before the type is accepted too, as --url).",
        ),
    ],
    json_parameters: Annotated[
        str | None, typer.Option("--json", help="All parameters as one JSON object.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait for the job, with a progress bar; print its result."),
    ] = False,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", help="Seconds --wait waits at most.")
    ] = 3600.0,
    queue: Annotated[str | None, typer.Option(help="Queue (default: the type's).")] = None,
    priority: Annotated[int | None, typer.Option(help="Priority; higher runs first.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Starts allowed.")] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds before it may start.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submitting the same key again returns the same job.")
    ] = None,
    url: UrlOption = None,
    timeout: Timeout = 30.0,
) -> None:
    """Submit a job (parameters are validated by the server) and print it, or with
    --wait its result.

    Example: tether jobs submit checksum --json '{"paths": ["README.md"]}' --wait
    (with TETHER_URL set, or --url http://127.0.0.1:8000)
    """
    given = None
    if words and _looks_like_url(words[0]):
        given, words = words[0], words[1:]
    if not words:
        err.print("[bold red]error[/]: the job type is missing", highlight=False)
        raise typer.Exit(2)
    type, arguments = words[0], words[1:]
    server = _server(url, given)
    try:
        parameters = parse_arguments(arguments or [], json_parameters)
    except ValueError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    client, jobs = _jobs(server, timeout)
    try:
        handle = jobs.submit(
            type,
            parameters,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            delay=delay,
            idempotency_key=idempotency_key,
        )
        if not wait:
            _show(handle.job)
            return
        err.print(f"submitted {handle.job.type} job {handle.id}", highlight=False)
        job = _follow(jobs, handle.job, wait_timeout)
    except TetherError as exc:
        raise fail(exc) from None
    finally:
        client.close()
    _finish(job)


JobWords = Annotated[
    list[str],
    typer.Argument(metavar="ID", help="The job's id (a server URL before it is accepted too)."),
]


@jobs_app.command()
def get(words: JobWords, url: UrlOption = None, timeout: Timeout = 30.0) -> None:
    """Print a job: state, progress, result or error."""
    given, job_id = _split(words, "ID")
    client, jobs = _jobs(_server(url, given), timeout)
    try:
        _show(jobs.fetch(job_id))
    except TetherError as exc:
        raise fail(exc) from None
    finally:
        client.close()


@jobs_app.command("list")
def list_jobs(
    given: Annotated[
        str | None, typer.Argument(metavar="[URL]", help="The server (or --url).")
    ] = None,
    state: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed, cancelled.")
    ] = None,
    type: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    limit: Annotated[int, typer.Option(help="Jobs per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    url: UrlOption = None,
    timeout: Timeout = 30.0,
) -> None:
    """List jobs, newest first: a table in a terminal, JSON ({jobs, next_cursor}) when piped."""
    from tether.jobs.wire import job_to_wire

    client, jobs = _jobs(_server(url, given), timeout)
    try:
        page = jobs.list(type=type, state=state, queue=queue, limit=limit, cursor=cursor)
    except TetherError as exc:
        raise fail(exc) from None
    except ValueError as exc:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    finally:
        client.close()
    if not out.is_terminal:
        emit({"jobs": [job_to_wire(j) for j in page.jobs], "next_cursor": page.next_cursor})
        return
    table = Table(caption=f"next cursor: {page.next_cursor}" if page.next_cursor else None)
    for column in ("id", "type", "state", "progress", "attempts", "created"):
        table.add_column(column)
    for job in page.jobs:
        progress = "" if job.progress is None else f"{job.progress:.0%}"
        created = job.created_at.isoformat(" ", "seconds")
        table.add_row(
            job.id,
            job.type,
            job.state.value,
            progress,
            f"{job.attempts}/{job.max_attempts}",
            created,
        )
    out.print(table)


@jobs_app.command()
def cancel(words: JobWords, url: UrlOption = None, timeout: Timeout = 30.0) -> None:
    """Cancel a job (a running one stops at its worker's next heartbeat)."""
    given, job_id = _split(words, "ID")
    client, jobs = _jobs(_server(url, given), timeout)
    try:
        _show(jobs.cancel(job_id))
    except TetherError as exc:
        raise fail(exc) from None
    finally:
        client.close()


@jobs_app.command()
def wait(
    words: JobWords,
    wait_timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait at most.")
    ] = 3600.0,
    url: UrlOption = None,
) -> None:
    """Wait for a job with a progress bar (on a terminal); print its result (exit 1
    if it failed or was cancelled)."""
    given, job_id = _split(words, "ID")
    client, jobs = _jobs(_server(url, given), 30.0)
    try:
        job = _follow(jobs, jobs.fetch(job_id), wait_timeout)
    except TetherError as exc:
        raise fail(exc) from None
    finally:
        client.close()
    _finish(job)


@jobs_app.command()
def types(
    given: Annotated[
        str | None, typer.Argument(metavar="[URL]", help="The server (or --url).")
    ] = None,
    url: UrlOption = None,
    timeout: Timeout = 30.0,
) -> None:
    """List the server's job types with their schemas and options (JSON)."""
    client, jobs = _jobs(_server(url, given), timeout)
    try:
        emit(jobs.types())
    except TetherError as exc:
        raise fail(exc) from None
    finally:
        client.close()


def load_worker(target: str, **options: Any) -> Worker:
    """Build the worker ``MODULE:ATTRIBUTE`` names: an App (its handlers run) or a
    ``Worker`` subclass (its ``run``), with ``options`` for ``Worker``.

    Raises:
        ValueError: malformed target, or an attribute of another kind.
        ImportError, AttributeError: it cannot be found.
    """
    from tether.jobs.worker import Worker
    from tether.server.app import App
    from tether.server.launch import import_target

    value = import_target(target)
    if isinstance(value, App):
        return Worker(value, **options)
    if isinstance(value, type) and issubclass(value, Worker):
        return value(**options)
    raise ValueError(f"{target} is a {type(value).__name__}, not a tether.App or Worker subclass")


def worker(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="The App whose job handlers to run (or a Worker subclass), as MODULE:ATTRIBUTE."
        ),
    ],
    concurrency: Annotated[int, typer.Option(help="Jobs run at once.")] = 1,
    queue: Annotated[
        list[str] | None, typer.Option(help="Queue to take jobs from (repeatable).")
    ] = None,
    job_type: Annotated[
        list[str] | None, typer.Option("--type", help="Job type to run (repeatable).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Work through this server's HTTP API instead of the job store."),
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Job store URL (default: the App's / the settings').")
    ] = None,
    lease: Annotated[float, typer.Option(help="Seconds per lease (heartbeat: a third).")] = 30.0,
    grace: Annotated[
        float, typer.Option(help="Seconds running jobs get to finish on SIGTERM.")
    ] = 30.0,
    log_level: LogLevelOption = None,
    token: TokenOption = None,
    api_key: ApiKeyOption = None,
    ca: Annotated[
        Path | None, typer.Option(help="With --url: CA bundle to verify the server with.")
    ] = None,
    cert: Annotated[
        Path | None, typer.Option(help="With --url: client certificate (PEM) for mutual TLS.")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="With --cert: the client certificate's key (PEM).")
    ] = None,
    pin_sha256: Annotated[
        str | None,
        typer.Option(help="With --url: accept only the server certificate with this SHA-256."),
    ] = None,
) -> None:
    """Run jobs: claim them with leases, run their handlers, report results.

    Straight on the job store (TETHER_JOB_STORE_URL, App(job_store=...), or the SQLite
    file in the state directory) unless --url names a server to work through (with
    the credentials 'tether login' stored for it, or --token / --api-key (or
    TETHER_TOKEN, TETHER_API_KEY), and --ca for a private CA). SIGTERM/SIGINT: stop
    claiming, let running jobs finish for --grace seconds, then ask them to stop and
    hand them back (a second signal ends the grace at once; a third exits without
    waiting for handlers that ignore it).

    Example: tether worker examples.inventory.app:app --concurrency 4
    """
    from tether.settings import get_settings

    logging.basicConfig(
        level=(log_level or get_settings().log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.path.insert(0, os.getcwd())
    remote: dict[str, Any] = {}
    if key is not None and cert is None:
        err.print("[bold red]error[/]: --key needs --cert (the certificate it goes with)")
        raise typer.Exit(2)
    if url is not None:
        remote = {
            "token": token,
            "api_key": api_key,
            "ca": ca,
            "cert": (cert, key) if cert and key else cert,
            "pin_sha256": pin_sha256,
        }
    else:
        # TETHER_TOKEN / TETHER_API_KEY in the environment (for other commands) are
        # no mistake on a worker that goes straight to the store: only options are.
        given = [
            name
            for name, value in (
                ("token", token),
                ("api_key", api_key),
                ("ca", ca),
                ("cert", cert),
                ("key", key),
                ("pin_sha256", pin_sha256),
            )
            if value is not None and not _from_environment(ctx, name)
        ]
        if given:
            err.print("[bold red]error[/]: credentials and TLS options need --url", highlight=False)
            raise typer.Exit(2)
    try:
        built = load_worker(
            target,
            url=url,
            store=store,
            queues=queue or None,
            types=job_type or None,
            concurrency=concurrency,
            lease=lease,
            grace=grace,
            **remote,
        )
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        err.print(f"[bold red]error[/]: cannot start a worker for {target}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    built.serve()
    if built.abandoned_threads:
        # Handlers that ignored their stop or their timeout still run in threads, and
        # their jobs are no longer this worker's (failed past their timeout, lost with
        # their lease, or left to a lease that expires): nothing waits for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _from_environment(ctx: typer.Context, name: str) -> bool:
    """True when option ``name`` took its value from its environment variable."""
    source = ctx.get_parameter_source(name)
    # By name: typer ships its own copy of click, whose enum is not click's.
    return source is not None and source.name == "ENVIRONMENT"


def register(app: typer.Typer) -> None:
    """Add ``jobs ...`` and ``worker`` to the ``tether`` command."""
    app.add_typer(jobs_app, name="jobs")
    app.command("worker")(worker)
