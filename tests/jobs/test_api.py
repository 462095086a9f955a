"""The jobs HTTP API against a served App, with plain urllib, on both stores."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.apps.jobs import JOB_TYPES
from tests.fixtures.servers import ServerProcess
from tests.jobs.helpers import http, job_state, submit, wait_for


def _lease_ended(job: dict[str, Any]) -> bool:
    ends = job["lease_expires_at"]
    return ends is None or datetime.fromisoformat(ends) < datetime.now(UTC)


def _claim(server: ServerProcess, queue: str, **extra: Any) -> dict[str, Any]:
    """Claim the one job of ``queue``; return its claim entry (with the lease token)."""
    status, body = http(
        "POST",
        f"{server.url}/jobs/claim",
        {"worker_id": "t", "queues": [queue], "wait": 5, **extra},
    )
    assert status == 200, body
    [entry] = body["jobs"]
    return dict(entry)


def test_invalid_parameters_are_rejected_with_422_and_not_stored(
    jobs_server: ServerProcess, queue: str
) -> None:
    url = jobs_server.url
    status, body = http(
        "POST",
        f"{url}/jobs",
        {
            "type": "work",
            "parameters": {"seconds": "long", "fail_times": 1},
            "queue": queue,
        },
    )
    assert status == 422
    assert body["error"]["code"] == "invalid_argument"
    assert body["error"]["type"] == "JobValidationError"
    assert [e["loc"] for e in body["error"]["details"]] == [["seconds"]]
    # A raw JSON Schema job type: checked with jsonschema (Draft 2020-12).
    status, body = http(
        "POST",
        f"{url}/jobs",
        {
            "type": "raw.echo",
            "parameters": {"reply": 5},
            "queue": queue,
        },
    )
    assert status == 422
    assert body["error"]["details"] == [
        {"loc": ["reply"], "msg": "5 is not of type 'object'", "type": "type"}
    ]
    status, body = http(
        "POST", f"{url}/jobs", {"type": "raw.echo", "parameters": {}, "queue": queue}
    )
    assert status == 422 and body["error"]["details"][0]["type"] == "required"
    status, body = http("POST", f"{url}/jobs", {"type": "nope", "parameters": {}})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = http("POST", f"{url}/jobs", {"parameters": {}})
    assert status == 400 and body["error"]["code"] == "invalid_argument"
    # Nothing of the refused submissions was stored.
    status, page = http("GET", f"{url}/jobs?queue={queue}")
    assert status == 200 and page == {"jobs": [], "next_cursor": None}


def test_validate_checks_without_submitting(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    status, body = http(
        "POST",
        f"{url}/jobs/types/raw.echo/validate",
        {"parameters": {"reply": {}}, "result": {"answer": 1}},
    )
    assert status == 200 and body == {"valid": True, "errors": []}
    status, body = http(
        "POST",
        f"{url}/jobs/types/raw.echo/validate",
        {"parameters": {"reply": []}, "result": {"answer": "x", "more": 1}},
    )
    assert status == 200 and body["valid"] is False
    assert sorted(tuple(e["loc"]) for e in body["errors"]) == [
        ("parameters", "reply"),
        ("result",),
        ("result", "answer"),
    ]
    status, body = http(
        "POST", f"{url}/jobs/types/work/validate", {"parameters": {"seconds": -1, "x": 1}}
    )
    assert status == 200 and body["valid"] is True  # typed: extra keys ignored, as pydantic does
    status, page = http("GET", f"{url}/jobs?queue={queue}")
    assert page["jobs"] == []
    status, types = http("GET", f"{url}/jobs/types")
    assert {t["name"] for t in types["job_types"]} == JOB_TYPES
    status, description = http("GET", f"{url}/rpc")
    assert {t["name"] for t in description["job_types"]} == JOB_TYPES


def test_claim_answers_204_after_its_long_poll_and_wakes_on_submit(
    jobs_server: ServerProcess, queue: str
) -> None:
    url = jobs_server.url
    claim = {"worker_id": "t", "queues": [queue], "lease_seconds": 5, "wait": 1.0}
    started = time.monotonic()
    status, body = http("POST", f"{url}/jobs/claim", claim)
    waited = time.monotonic() - started
    assert status == 204 and body is None
    # It waited its second, and answered long before the client's own timeout (30 s).
    assert 0.9 <= waited < 20.0
    # A submission during the long poll ends it with the job.
    threading.Timer(0.5, submit, (jobs_server, "raw.echo", {"reply": {}}), {"queue": queue}).start()
    started = time.monotonic()
    status, body = http("POST", f"{url}/jobs/claim", {**claim, "wait": 60})
    assert status == 200, body
    assert 0.4 <= time.monotonic() - started < 40.0  # woken by the submission, not at 60 s
    [entry] = body["jobs"]
    assert entry["type"] == "raw.echo" and entry["state"] == "running" and entry["lease_token"]


def test_wait_is_a_long_poll(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    job_id = submit(jobs_server, "raw.echo", {"reply": {"answer": 7}}, queue=queue)
    started = time.monotonic()
    status, job = http("GET", f"{url}/jobs/{job_id}/wait?timeout=1")
    assert status == 200 and job["state"] == "queued"
    assert 0.9 <= time.monotonic() - started < 20.0
    assert "lease_token" not in job  # only a claim hands the lease out

    def finish() -> None:
        _, claimed = http("POST", f"{url}/jobs/claim", {"worker_id": "t", "queues": [queue]})
        token = claimed["jobs"][0]["lease_token"]
        time.sleep(0.5)
        http(
            "POST", f"{url}/jobs/{job_id}/complete", {"lease_token": token, "result": {"answer": 7}}
        )

    threading.Thread(target=finish).start()
    started = time.monotonic()
    status, job = http("GET", f"{url}/jobs/{job_id}/wait?timeout=60")
    assert status == 200 and job["state"] == "succeeded" and job["result"] == {"answer": 7}
    assert time.monotonic() - started < 40.0  # woken by the completion, not at 60 s
    # With since_version it answers at the first change (here: at once, it changed).
    status, again = http("GET", f"{url}/jobs/{job_id}/wait?timeout=5&since_version=1")
    assert again["version"] > 1


def test_an_http_only_worker_written_with_urllib_completes_jobs(
    jobs_server: ServerProcess, queue: str
) -> None:
    """What a worker in any language does: claim, heartbeat, complete."""
    url = jobs_server.url
    ids = [submit(jobs_server, "raw.echo", {"reply": {"answer": n}}, queue=queue) for n in range(5)]
    done: list[str] = []
    while True:
        status, body = http(
            "POST",
            f"{url}/jobs/claim",
            {
                "worker_id": "urllib-worker",
                "queues": [queue],
                "limit": 2,
                "lease_seconds": 10,
                "wait": 0.5,
            },
        )
        if status == 204:
            break
        assert status == 200, body
        for job in body["jobs"]:
            token = job["lease_token"]
            status, beat = http(
                "POST",
                f"{url}/jobs/{job['id']}/heartbeat",
                {
                    "lease_token": token,
                    "lease_seconds": 10,
                    "progress": 0.5,
                    "message": "halfway",
                },
            )
            assert status == 200 and beat == {"cancel_requested": False}
            assert job_state(jobs_server, job["id"])["progress_message"] == "halfway"
            status, finished = http(
                "POST",
                f"{url}/jobs/{job['id']}/complete",
                {
                    "lease_token": token,
                    "result": job["parameters"]["reply"],
                },
            )
            assert status == 200 and finished["state"] == "succeeded", finished
            done.append(job["id"])
            # The lease ended with the job: using it again is a conflict.
            status, body = http(
                "POST",
                f"{url}/jobs/{job['id']}/complete",
                {
                    "lease_token": token,
                    "result": {"answer": 0},
                },
            )
            assert status == 409 and body["error"]["code"] == "aborted"
    assert sorted(done) == sorted(ids)
    results = [job_state(jobs_server, i)["result"] for i in ids]
    assert results == [{"answer": n} for n in range(5)]


def test_lost_lease_is_a_409(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    job_id = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue)
    status, body = http(
        "POST", f"{url}/jobs/claim", {"worker_id": "w", "queues": [queue], "lease_seconds": 0.5}
    )
    token = body["jobs"][0]["lease_token"]
    for action, extra in (
        ("heartbeat", {}),
        ("complete", {"result": {"answer": 1}}),
        ("fail", {"error": {"code": "x"}}),
        ("release", {}),
    ):
        status, body = http(
            "POST", f"{url}/jobs/{job_id}/{action}", {"lease_token": "not-the-token", **extra}
        )
        assert status == 409 and body["error"]["code"] == "aborted", (action, body)
    # Once the lease ends, the right token is refused too; the message depends on
    # whether the server's reaper has re-queued the job yet, the code does not.
    wait_for(lambda: _lease_ended(job_state(jobs_server, job_id)), 10, "the lease to end")
    status, body = http(
        "POST", f"{url}/jobs/{job_id}/complete", {"lease_token": token, "result": {"answer": 1}}
    )
    assert status == 409, body
    assert body["error"]["code"] == "aborted" and body["error"]["type"] == "LeaseLost"


def test_an_invalid_result_fails_the_job_with_processing_error(
    jobs_server: ServerProcess, queue: str
) -> None:
    url = jobs_server.url
    job_id = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue)
    _, body = http("POST", f"{url}/jobs/claim", {"worker_id": "w", "queues": [queue]})
    token = body["jobs"][0]["lease_token"]
    status, body = http(
        "POST",
        f"{url}/jobs/{job_id}/complete",
        {"lease_token": token, "result": {"answer": "forty-two"}},
    )
    assert status == 422, body
    assert body["error"]["type"] == "InvalidResult"
    assert body["error"]["details"]["job"]["state"] == "failed"
    job = job_state(jobs_server, job_id)
    assert job["state"] == "failed" and job["result"] is None
    assert job["error"]["code"] == "processing_error"
    assert job["error"]["details"] == [
        {"loc": ["answer"], "msg": "'forty-two' is not of type 'integer'", "type": "type"}
    ]


def test_idempotency_list_filters_cursor_and_cancel(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    first = submit(jobs_server, "work", {"seconds": 1}, queue=queue, idempotency_key=queue)
    again = submit(jobs_server, "work", {"seconds": 1}, queue=queue, idempotency_key=queue)
    assert again == first
    status, body = http(
        "POST",
        f"{url}/jobs",
        {"type": "work", "parameters": {"seconds": 2}, "queue": queue, "idempotency_key": queue},
    )
    assert status == 409 and body["error"]["code"] == "already_exists"
    others = [submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue) for _ in range(3)]
    status, page = http("GET", f"{url}/jobs?queue={queue}&type=raw.echo&limit=2")
    assert [j["id"] for j in page["jobs"]] == others[::-1][:2] and page["next_cursor"]
    status, rest = http(
        "GET", f"{url}/jobs?queue={queue}&type=raw.echo&limit=2&cursor={page['next_cursor']}"
    )
    assert [j["id"] for j in rest["jobs"]] == others[:1] and rest["next_cursor"] is None
    status, cancelled = http("POST", f"{url}/jobs/{first}/cancel")
    assert status == 200 and cancelled["state"] == "cancelled"
    status, body = http("POST", f"{url}/jobs/{first}/cancel")
    assert status == 409 and body["error"]["code"] == "failed_precondition"
    status, page = http("GET", f"{url}/jobs?queue={queue}&state=cancelled")
    assert [j["id"] for j in page["jobs"]] == [first]
    status, body = http("GET", f"{url}/jobs?state=bogus")
    assert status == 400
    status, body = http("GET", f"{url}/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert status == 404 and body["error"]["code"] == "not_found"


def _delayed(job: dict[str, Any]) -> bool:
    return bool(job["scheduled_at"] > job["created_at"])


def test_delayed_submission(jobs_server: ServerProcess, queue: str) -> None:
    job_id = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue, delay=30)
    assert _delayed(job_state(jobs_server, job_id))
    status, _ = http(
        "POST", f"{jobs_server.url}/jobs/claim", {"worker_id": "w", "queues": [queue], "wait": 0}
    )
    assert status == 204  # not due yet


def test_unknown_routes_and_verbs_answer_envelopes(jobs_server: ServerProcess) -> None:
    status, body = http("DELETE", f"{jobs_server.url}/jobs/types")
    assert status == 405 and body["error"]["code"] == "unimplemented"
    status, body = http("GET", f"{jobs_server.url}/jobs/a/b/c/d")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = http("POST", f"{jobs_server.url}/jobs", None)
    assert status == 400 and body["error"]["code"] == "invalid_argument"


def test_fail_with_and_without_retry_over_http(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    job_id = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue, max_attempts=3)
    entry = _claim(jobs_server, queue)
    before = datetime.now(UTC)
    status, job = http(
        "POST",
        f"{url}/jobs/{job_id}/fail",
        {
            "lease_token": entry["lease_token"],
            "error": {"code": "flaky", "message": "try again", "details": {"n": 1}},
            "retry_delay": 60,
        },
    )
    assert status == 200, job
    assert job["state"] == "queued" and job["attempts"] == 1
    assert job["error"] == {"code": "flaky", "message": "try again", "details": {"n": 1}}
    assert datetime.fromisoformat(job["scheduled_at"]) >= before + timedelta(seconds=59)
    status, _ = http("POST", f"{url}/jobs/claim", {"worker_id": "t", "queues": [queue], "wait": 0})
    assert status == 204  # not due for a minute
    # Due again now (a second job of the queue), then failed for good with retry false.
    other = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue, max_attempts=3)
    entry = _claim(jobs_server, queue)
    assert entry["id"] == other
    status, job = http(
        "POST",
        f"{url}/jobs/{other}/fail",
        {"lease_token": entry["lease_token"], "error": {"code": "broken"}, "retry": False},
    )
    assert status == 200 and job["state"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["code"] == "broken" and job["finished_at"] is not None


def test_release_mark_cancelled_and_cancel_requested_heartbeats(
    jobs_server: ServerProcess, queue: str
) -> None:
    url = jobs_server.url
    job_id = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue)
    entry = _claim(jobs_server, queue)
    token = entry["lease_token"]
    # No cancellation was requested: a worker cannot declare the job cancelled.
    status, body = http("POST", f"{url}/jobs/{job_id}/mark-cancelled", {"lease_token": token})
    assert status == 409 and body["error"]["code"] == "failed_precondition", body
    assert job_state(jobs_server, job_id)["state"] == "running"
    status, beat = http("POST", f"{url}/jobs/{job_id}/heartbeat", {"lease_token": token})
    assert status == 200 and beat == {"cancel_requested": False}
    # Handed back: queued again at once, the attempt not counted, the lease ended.
    status, job = http("POST", f"{url}/jobs/{job_id}/release", {"lease_token": token})
    assert status == 200 and job["state"] == "queued" and job["attempts"] == 0, job
    status, body = http("POST", f"{url}/jobs/{job_id}/heartbeat", {"lease_token": token})
    assert status == 409 and body["error"]["type"] == "LeaseLost"
    # Claimed again, cancelled while running: the heartbeat says so, the worker acknowledges.
    entry = _claim(jobs_server, queue)
    assert entry["id"] == job_id and entry["attempts"] == 1
    token = entry["lease_token"]
    status, job = http("POST", f"{url}/jobs/{job_id}/cancel")
    assert status == 200 and job["state"] == "running" and job["cancel_requested"] is True
    status, beat = http(
        "POST", f"{url}/jobs/{job_id}/heartbeat", {"lease_token": token, "progress": 0.25}
    )
    assert status == 200 and beat == {"cancel_requested": True}
    status, job = http("POST", f"{url}/jobs/{job_id}/mark-cancelled", {"lease_token": token})
    assert status == 200 and job["state"] == "cancelled", job
    assert job["progress"] == 0.25 and job["finished_at"] is not None


def test_idempotency_key_header_and_run_at(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    key = f"key-{queue}"

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        return http("POST", f"{url}/jobs", body, headers={"Idempotency-Key": key})

    first_status, first = post({"type": "raw.echo", "parameters": {"reply": {}}, "queue": queue})
    again_status, again = post({"type": "raw.echo", "parameters": {"reply": {}}, "queue": queue})
    assert first_status == 201 and again_status == 201
    assert again["id"] == first["id"] and first["idempotency_key"] == key
    status, body = post({"type": "raw.echo", "parameters": {"reply": {"x": 1}}, "queue": queue})
    assert status == 409 and body["error"]["code"] == "already_exists"
    # run_at: an ISO 8601 time with a zone; the job is not claimable before it.
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = submit(
        jobs_server, "raw.echo", {"reply": {}}, queue=f"{queue}-later", run_at=later.isoformat()
    )
    job = job_state(jobs_server, job_id)
    assert abs(datetime.fromisoformat(job["scheduled_at"]) - later) < timedelta(seconds=1)
    status, _ = http(
        "POST", f"{url}/jobs/claim", {"worker_id": "t", "queues": [f"{queue}-later"], "wait": 0}
    )
    assert status == 204
    status, body = http(
        "POST",
        f"{url}/jobs",
        {"type": "raw.echo", "parameters": {"reply": {}}, "run_at": "tomorrow"},
    )
    assert status == 400 and body["error"]["code"] == "invalid_argument"


def test_bad_worker_inputs_answer_400(jobs_server: ServerProcess, queue: str) -> None:
    url = jobs_server.url
    claim = {"worker_id": "t", "queues": [queue], "wait": 0}
    for lease in (1e16, 0, -1, "long"):
        status, body = http("POST", f"{url}/jobs/claim", {**claim, "lease_seconds": lease})
        assert status == 400 and body["error"]["code"] == "invalid_argument", (lease, body)
    status, body = http(
        "POST",
        f"{url}/jobs",
        {"type": "raw.echo", "parameters": {"reply": {}}, "queue": queue, "delay": 1e16},
    )
    assert status == 400 and "delay" in body["error"]["message"]
    job_id = submit(jobs_server, "raw.echo", {"reply": {}}, queue=queue)
    token = _claim(jobs_server, queue)["lease_token"]
    for extra in ({"retry": "false"}, {"retry": 0}, {"retry_delay": 1e16}, {"retry_delay": -1}):
        status, body = http(
            "POST",
            f"{url}/jobs/{job_id}/fail",
            {"lease_token": token, "error": {"code": "x"}, **extra},
        )
        assert status == 400 and body["error"]["code"] == "invalid_argument", (extra, body)
    status, body = http(
        "POST", f"{url}/jobs/{job_id}/heartbeat", {"lease_token": token, "lease_seconds": 1e16}
    )
    assert status == 400 and body["error"]["code"] == "invalid_argument"
    # None of that touched the job: still running on its lease.
    job = job_state(jobs_server, job_id)
    assert job["state"] == "running" and job["attempts"] == 1 and job["error"] is None
