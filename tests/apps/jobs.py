"""The App the jobs tests serve and run workers for (its store: ``TETHER_JOB_STORE_URL``).

The ``work`` handler leaves traces in ``marker`` (a directory) so tests can see
what really ran: ``{id}.{attempt}.start`` and ``{id}.{attempt}.end`` per run
(``end``: it ran to its end), ``{id}.{attempt}.exit`` when a run returns or
raises, and ``{id}.OVERLAP`` when two runs of one job ever held its lock at once
(an ``flock``, which the kernel drops when a process dies).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import tether
from tether.jobs import JobCancelled, JobContext


class Work(BaseModel):
    seconds: float = 0.0
    #: Seconds of the attempts after the first (default: ``seconds``).
    later_seconds: float | None = None
    #: Run on (past ``seconds``) until this file exists.
    until: str | None = None
    marker: str | None = None
    fail_times: int = 0
    bad_result: bool = False
    ignore_cancel: bool = False


class Done(BaseModel):
    slept: float
    attempt: int


def _touch(marker: str | None, name: str) -> None:
    if marker is not None:
        Path(marker, name).write_text(str(os.getpid()))


def work(parameters: Work, ctx: JobContext) -> Done:
    """Sleep ``seconds`` in small steps (and until ``until`` exists), reporting progress;
    stop when cancelled."""
    marker = parameters.marker
    seconds = parameters.seconds
    if ctx.attempt > 1 and parameters.later_seconds is not None:
        seconds = parameters.later_seconds
    until = Path(parameters.until) if parameters.until else None
    lock = None
    if marker is not None:
        lock = open(Path(marker, f"{ctx.id}.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _touch(marker, f"{ctx.id}.OVERLAP")
    _touch(marker, f"{ctx.id}.{ctx.attempt}.start")
    try:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds or (
            until is not None and not until.exists()
        ):
            if ctx.cancelled and not parameters.ignore_cancel:
                raise JobCancelled()
            fraction = min(elapsed / seconds, 1.0) if seconds else 0.5
            ctx.progress(fraction, f"{elapsed:.1f} s")
            time.sleep(0.05 if until is not None else min(0.05, seconds - elapsed))
        if ctx.attempt <= parameters.fail_times:
            raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")
        _touch(marker, f"{ctx.id}.{ctx.attempt}.end")
    finally:
        if lock is not None:
            lock.close()
        _touch(marker, f"{ctx.id}.{ctx.attempt}.exit")
    if parameters.bad_result:
        return {"slept": "a while"}  # type: ignore[return-value]
    return Done(slept=seconds, attempt=ctx.attempt)


class Nap(BaseModel):
    seconds: float


async def nap(parameters: Nap, ctx: JobContext) -> dict[str, float]:
    """An async handler: sleeps, which a timeout (0.5 s) or a cancellation cuts short."""
    await asyncio.sleep(parameters.seconds)
    return {"slept": parameters.seconds}


def echo(parameters: dict[str, Any]) -> dict[str, Any]:
    """Return ``parameters["reply"]`` as the result, whatever it is."""
    reply: dict[str, Any] = parameters["reply"]
    return reply


#: The job types ``make_app`` registers.
JOB_TYPES = {"work", "nap", "work_timed", "raw.echo"}


def make_app(job_store: str | None = None) -> tether.App:
    """The test App with its job types, on ``job_store`` (default: the settings')."""
    app = tether.App(title="Jobs test", job_store=job_store)
    app.job("work", max_attempts=3, backoff=0.2)(work)
    app.job("nap", timeout=0.5, max_attempts=1)(nap)
    # A sync handler with a timeout: one that ignores it runs on past it.
    app.job("work_timed", timeout=0.5, max_attempts=2, backoff=0.0)(work)
    app.register_job_type(
        "raw.echo",
        parameters_schema={
            "type": "object",
            "properties": {"reply": {"type": "object"}},
            "required": ["reply"],
        },
        result_schema={
            "type": "object",
            "properties": {"answer": {"type": "integer"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
        handler=echo,
        doc="Echoes parameters.reply; a result must be {answer: int}.",
        max_attempts=1,
    )
    return app


app = make_app()
