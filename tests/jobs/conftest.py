"""Fixtures of the jobs tests: one served App per store kind, worker processes, HTTP helpers.

Each store kind (SQLite file, PostgreSQL database on a real server) gets one
``tether serve tests.apps.jobs:app`` for the session; every test takes jobs
from a queue of its own, so tests never see each other's work.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.fixtures.postgres import database_url
from tests.fixtures.servers import ServerProcess
from tests.jobs.helpers import APP, WorkerProcess


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def jobs_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The job store of this session's server: a SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('jobs') / 'jobs.db'}"
        return
    admin: str = request.getfixturevalue("postgres_url")
    name = f"tether_jobs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def jobs_server(jobs_store_url: str) -> Iterator[ServerProcess]:
    """``tether serve tests.apps.jobs:app`` on ``store_url``."""
    server = ServerProcess(APP, env={"TETHER_JOB_STORE_URL": jobs_store_url}).start()
    yield server
    server.stop()


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own."""
    return f"q-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A directory where the ``work`` handler leaves its traces."""
    path = tmp_path / "marker"
    path.mkdir()
    return path


@pytest.fixture
def start_worker(
    jobs_store_url: str, queue: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers on this test's queue (``start_worker("--lease", "1.5", ...)``);
    every one still running is killed at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(jobs_store_url, queue, log, *args).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
