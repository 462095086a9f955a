"""Job types, descriptions and OpenAPI, and a Worker in this process against the
App's store through an integrated client; on both stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

import tether
from tests.apps.jobs import make_app
from tether.jobs import JobContext, JobFailed, JobState

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
    assert set(described) == {"work", "nap", "raw.echo"}
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
