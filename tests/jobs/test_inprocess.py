"""Job types, descriptions and OpenAPI, and a Worker in this process against the
App's store through an integrated client; on both stores."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

import tether
from tests.apps.jobs import JOB_TYPES, make_app
from tests.jobs.helpers import wait_for
from tether.jobs import (
    Job,
    JobContext,
    JobFailed,
    JobManager,
    JobOptions,
    JobState,
    JobValidationError,
)
from tether.jobs.types import MAX_BACKOFF

T = TypeVar("T")

TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh job store URL of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


def running(worker: tether.Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.serve, kwargs={"install_signal_handlers": False})
    thread.start()
    return thread


@pytest.fixture
def app_and_client(store: str) -> Iterator[tuple[tether.App, tether.Client]]:
    app = make_app(store)
    with tether.Client(timeout=10) as client:
        yield app, client
        # The integrated connection opened the App's store on the client's event loop:
        # close it there (as an ASGI server's shutdown would).
        client._run_async(app.jobs.close(), 10)


def test_descriptions_and_openapi_list_the_job_types() -> None:
    app = make_app("memory://")
    described = {t["name"]: t for t in app.describe()["job_types"]}
    assert set(described) == JOB_TYPES
    assert described["nap"]["timeout"] == 0.5 and described["work"]["max_attempts"] == 3
    assert described["work"]["parameters"]["properties"]["seconds"]["type"] == "number"
    assert described["raw.echo"]["result"]["required"] == ["answer"]
    document = app.openapi()
    validate(document)
    schemas = document["components"]["schemas"]
    assert schemas["job.raw.echo.result"]["required"] == ["answer"]
    assert schemas["job.work.parameters"]["properties"]["seconds"]["type"] == "number"
    submit = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert submit["schema"]["discriminator"]["mapping"]["nap"].endswith("job.nap.submit")
    for path in (
        "/jobs/claim",
        "/jobs/{id}/heartbeat",
        "/jobs/{id}/complete",
        "/jobs/{id}/wait",
        "/jobs/types/work/validate",
    ):
        assert path in document["paths"]


def test_job_types_need_object_schemas_and_hints() -> None:
    app = tether.App(job_store="memory://")
    with pytest.raises(jsonschema.SchemaError):
        app.register_job_type("bad", parameters_schema={"type": "nonsense"}, result_schema={})
    with pytest.raises(TypeError):
        app.register_job_type("list", parameters_schema={"type": "array"}, result_schema={})

    def untyped(parameters):  # type: ignore[no-untyped-def]
        return {}

    with pytest.raises(TypeError):
        app.job("untyped")(untyped)

    def scalar(parameters: int) -> dict[str, int]:
        return {}

    with pytest.raises(TypeError):
        app.job("scalar")(scalar)

    def fine(parameters: Seconds) -> Seconds:
        return parameters

    app.job("fine")(fine)
    with pytest.raises(ValueError):
        app.job("fine")(fine)  # the name is taken
    with pytest.raises(ValueError):
        app.job("bad name!")(fine)


def _finished(client: tether.Client, app: tether.App, job_id: str) -> Any:
    return client.integrated(app).jobs.wait(job_id, 20)


def test_an_in_process_worker_runs_handlers_with_retries_timeouts_and_checks(
    app_and_client: tuple[tether.App, tether.Client],
) -> None:
    app, client = app_and_client
    jobs = client.integrated(app).jobs
    worker = tether.Worker(app, concurrency=4, lease=3, grace=1)
    thread = running(worker)
    try:
        retried = jobs.submit("work", {"fail_times": 1})
        timed_out = jobs.submit("nap", {"seconds": 5})
        broken = jobs.submit("raw.echo", {"reply": {"answer": "many"}})
        good = jobs.submit("raw.echo", {"reply": {"answer": 1}})
        job = retried.wait(20)
        assert job.state is JobState.SUCCEEDED and job.attempts == 2
        assert retried.result == {"slept": 0.0, "attempt": 2}
        job = timed_out.wait(20)
        assert job.state is JobState.FAILED and job.error is not None
        assert job.error["code"] == "deadline_exceeded" and job.attempts == 1
        with pytest.raises(JobFailed) as failed:
            _ = broken.wait(20) and broken.result
        assert failed.value.code == "processing_error"
        assert failed.value.details[0]["loc"] == ["answer"]
        assert good.wait(20).result == {"answer": 1}
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()


class Answer(tether.Worker):
    """The TopChef model: a subclass with run()."""

    job_types = ("raw.echo",)

    def run(self, parameters: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.5, "thinking")
        if parameters["reply"].get("fail"):
            raise ValueError("asked to fail")
        return {"answer": 42}


def test_a_worker_subclass_with_run(app_and_client: tuple[tether.App, tether.Client]) -> None:
    app, client = app_and_client
    jobs = client.integrated(app).jobs
    worker = Answer(app, lease=3)
    thread = running(worker)
    try:
        handle = jobs.submit("raw.echo", {"reply": {}})
        assert handle.wait(20).result == {"answer": 42}
        failing = jobs.submit("raw.echo", {"reply": {"fail": True}})
        job = failing.wait(20)
        assert job.state is JobState.FAILED and job.error is not None
        assert job.error["code"] == "handler_error"
        assert job.error["details"]["type"] == "builtins.ValueError"
    finally:
        worker.stop()
        thread.join(20)


def test_cancelling_an_async_handler(app_and_client: tuple[tether.App, tether.Client]) -> None:
    app, client = app_and_client
    app.job("long_nap", timeout=60)(_long_nap)
    jobs = client.integrated(app).jobs
    worker = tether.Worker(app, types=["long_nap"], lease=1.5)
    thread = running(worker)
    try:
        handle = jobs.submit("long_nap", {"seconds": 60})
        job = jobs.wait(handle.id, 20, since_version=handle.job.version)
        assert job.state is JobState.RUNNING
        handle.cancel()
        assert handle.wait(10).state is JobState.CANCELLED
    finally:
        worker.stop()
        thread.join(20)


class Seconds(BaseModel):
    seconds: float


async def _long_nap(parameters: Seconds) -> dict[str, float]:
    import asyncio

    await asyncio.sleep(parameters.seconds)
    return {"slept": parameters.seconds}


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _until_finished(manager: JobManager, job_id: str, timeout: float = 30.0) -> Job:
    store = await manager.store()
    deadline = time.monotonic() + timeout
    job = await store.get(job_id)
    while not job.terminal and time.monotonic() < deadline:
        job = await store.wait_for_change(job_id, deadline - time.monotonic())
    return job


class RecordingContext(JobContext):
    """A real JobContext that also keeps every progress report (to look at afterwards)."""

    def __init__(self, job: Job) -> None:
        super().__init__(job, None)
        self.reports: list[tuple[float | None, str | None]] = []

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        super().progress(fraction, message)
        self.reports.append((fraction, message))


def test_the_example_checksum_job_hashes_real_files(tmp_path: Path) -> None:
    from examples.inventory.app import app as inventory

    first = tmp_path / "first.bin"
    first.write_bytes(os.urandom(300_000))
    second = tmp_path / "second.txt"
    second.write_text("hello, tether\n" * 1000)
    missing = tmp_path / "nowhere.txt"
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    manager = JobManager(inventory.jobs.types, url)
    worker = tether.Worker(inventory, store=url, lease=5)
    thread = running(worker)

    async def main() -> tuple[Job, Job]:
        try:
            with pytest.raises(JobValidationError):  # at least one path
                await manager.submit("checksum", {"paths": []})
            good = await manager.submit(
                "checksum", {"paths": [str(first), str(second)], "chunk_size": 4096}
            )
            bad = await manager.submit("checksum", {"paths": [str(second), str(missing)]})
            return await _until_finished(manager, good.id), await _until_finished(manager, bad.id)
        finally:
            await manager.close()

    try:
        good, bad = _drive(main())
    finally:
        worker.stop()
        thread.join(20)
    assert good.state is JobState.SUCCEEDED, good
    assert good.result == {
        "files": [
            {"path": str(p), "size": p.stat().st_size, "sha256": sha256(p.read_bytes()).hexdigest()}
            for p in (first, second)
        ],
        "total_bytes": first.stat().st_size + second.stat().st_size,
    }
    # A missing file fails the job for good (a ServiceError: no retry), naming the path.
    assert bad.state is JobState.FAILED and bad.attempts == 1 and bad.error is not None
    assert bad.error["code"] == "not_found" and bad.error["details"] == {"paths": [str(missing)]}
    # Progress: reported by bytes read, per file, reaching 1.
    job_type = inventory.jobs.types.get("checksum")
    assert job_type.handler is not None
    ctx = RecordingContext(good)
    job_type.handler(job_type.load_parameters(good.parameters), ctx)
    fractions = [f for f, _ in ctx.reports]
    assert len(ctx.reports) == len(range(0, 300_000, 4096)) + len(range(0, 14_000, 4096))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 0.02
    assert {m for _, m in ctx.reports} == {f"hashing {first}", f"hashing {second}"}


def _plain(parameters: Seconds) -> dict[str, float]:
    return {"slept": parameters.seconds}


def test_job_type_defaults_and_a_worker_taking_its_queues_from_its_types(
    app_and_client: tuple[tether.App, tether.Client],
) -> None:
    app, client = app_and_client
    app.job("special", queue="special-q", priority=7)(_plain)
    jobs = client.integrated(app).jobs
    default = jobs.submit("special", {"seconds": 0})
    assert (default.job.queue, default.job.priority) == ("special-q", 7)
    elsewhere = jobs.submit("special", {"seconds": 0}, queue="other-q", priority=-1)
    assert (elsewhere.job.queue, elsewhere.job.priority) == ("other-q", -1)
    assert tether.Worker(app).queues == ["default", "special-q"]  # all its types' queues
    worker = tether.Worker(app, types=["special"], lease=3)
    assert worker.queues == ["special-q"]
    thread = running(worker)
    try:
        assert default.wait(20).state is JobState.SUCCEEDED
        assert jobs.wait(elsewhere.id, 0.5).state is JobState.QUEUED  # not its queue
    finally:
        worker.stop()
        thread.join(20)


def test_retries_back_off_exponentially(store: str) -> None:
    assert [JobOptions(backoff=2.0).retry_delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert JobOptions(backoff=2.0).retry_delay(40) == MAX_BACKOFF
    assert JobOptions(backoff=0).retry_delay(3) == 0.0
    app = tether.App(job_store=store)
    app.job("flaky", backoff=0.5, max_attempts=3)(_plain)
    manager = JobManager(app.jobs.types, store)
    error = {"code": "flaky", "message": "again"}

    async def main() -> list[tuple[float, float]]:
        try:
            db = await manager.store()
            job = await manager.submit("flaky", {"seconds": 0})
            delays = []
            for _ in range(2):
                await db.wait_for_work(["default"], 30)
                [claim] = await db.claim(worker_id="w", queues=["default"], lease_seconds=5)
                before = datetime.now(UTC)
                failed = await manager.fail(job.id, claim.lease_token, error)
                after = datetime.now(UTC)
                assert failed.state is JobState.QUEUED
                delays.append(
                    (
                        (failed.scheduled_at - after).total_seconds(),
                        (failed.scheduled_at - before).total_seconds(),
                    )
                )
            return delays
        finally:
            await manager.close()

    (low1, high1), (low2, high2) = _drive(main())
    assert low1 <= 0.5 <= high1 + 0.01  # after the first failed start: the backoff
    assert low2 <= 1.0 <= high2 + 0.01  # after the second: twice as long


@pytest.mark.parametrize(
    "options",
    [
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"max_attempts": 0},
        {"priority": 1.5},
        {"priority": "1"},
        {"priority": 2**31},
        {"backoff": -1},
        {"backoff": float("nan")},
        {"timeout": 0},
        {"queue": ""},
        {"scopes": "admin"},  # a string would be the scopes a, d, m, i, n
        {"scopes": ["admin", ""]},
    ],
)
def test_job_options_are_checked_at_registration(options: dict[str, Any]) -> None:
    app = tether.App(job_store="memory://")
    with pytest.raises(ValueError):
        app.job("checked", **options)(_plain)
    with pytest.raises(ValueError):
        app.register_job_type(
            "checked",
            parameters_schema={"type": "object"},
            result_schema={"type": "object"},
            **options,
        )
    assert "checked" not in app.jobs.types
    with pytest.raises(ValueError):
        JobOptions(scopes="jobs.submit")  # type: ignore[arg-type]


def test_job_type_scopes_are_kept_as_names() -> None:
    app = tether.App(job_store="memory://")
    app.job("listed", scopes=["admin", "payroll.run"])(_plain)
    app.register_job_type(
        "raw", parameters_schema={"type": "object"}, result_schema={"type": "object"}, scopes=("x",)
    )
    assert app.jobs.types.get("listed").options.scopes == ("admin", "payroll.run")
    assert app.jobs.types.get("raw").options.scopes == ("x",)


class Overlap:
    """Watches a sync handler's runs: how many, and whether two ever ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.starts = 0
        self.overlapped = False
        self.release = threading.Event()

    def handler(self) -> Any:
        def blocker(parameters: Seconds) -> dict[str, float]:
            with self.lock:
                self.active += 1
                self.starts += 1
                self.overlapped |= self.active > 1
                first = self.starts == 1
            try:
                if first:  # the first run blocks, ignoring its lost lease, until told
                    self.release.wait(60)
                return {"slept": parameters.seconds}
            finally:
                with self.lock:
                    self.active -= 1

        return blocker


def test_a_job_claimed_again_waits_for_the_thread_of_its_lost_attempt(
    app_and_client: tuple[tether.App, tether.Client],
) -> None:
    app, client = app_and_client
    watch = Overlap()
    app.job("blocker", max_attempts=3)(watch.handler())
    jobs = client.integrated(app).jobs
    worker = tether.Worker(app, types=["blocker"], concurrency=2, lease=1.5)
    thread = running(worker)
    try:
        handle = jobs.submit("blocker", {"seconds": 0})
        wait_for(lambda: watch.starts == 1, 20, "the first run")

        async def steal() -> str:  # the lease is lost, as after a network split
            store = await app.jobs.store()
            job = await store.get(handle.id)
            assert job.lease_token is not None
            await store.release(job.id, job.lease_token)
            return job.lease_token

        first_token = client._run_async(steal(), 10)

        async def lease_token() -> str | None:
            return (await (await app.jobs.store()).get(handle.id)).lease_token

        # The worker learns of the loss at its next heartbeat, claims the job again with
        # its free slot, and holds it while the first thread still runs.
        wait_for(
            lambda: client._run_async(lease_token(), 10) not in (None, first_token),
            20,
            "the job to be claimed again",
        )
        assert watch.starts == 1
        watch.release.set()
        job = handle.wait(30)
        assert job.state is JobState.SUCCEEDED, job
        assert watch.starts == 2 and not watch.overlapped
    finally:
        watch.release.set()
        worker.stop()
        thread.join(20)
