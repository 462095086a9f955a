"""The jobs API in the App's OpenAPI 3.1 document, with each job type's schemas."""

from __future__ import annotations

import copy
import re
from typing import Any

from tether.jobs.model import JobState
from tether.jobs.types import JobType, JobTypeRegistry

_COMPONENT = "#/components/schemas/{name}"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _component_name(*parts: str) -> str:
    return ".".join(_SAFE.sub("_", p) for p in parts)


def _lift(schema: dict[str, Any], prefix: str, components: dict[str, Any]) -> dict[str, Any]:
    """Move ``$defs`` of ``schema`` into ``components`` under ``prefix.NAME`` and rewrite
    the ``#/$defs/NAME`` references; return the rewritten schema."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})
    schema.pop("$schema", None)

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                    out[key] = _COMPONENT.format(
                        name=_component_name(prefix, value[len("#/$defs/") :])
                    )
                else:
                    out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, definition in defs.items():
        components[_component_name(prefix, name)] = rewrite(definition)
    rewritten: dict[str, Any] = rewrite(schema)
    return rewritten


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _COMPONENT.format(name=name)}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A job as the API shows it (times are ISO 8601, UTC).",
    "required": ["id", "type", "queue", "parameters", "state", "attempts", "version"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "queue": {"type": "string"},
        "parameters": {"type": "object"},
        "state": {"type": "string", "enum": [s.value for s in JobState]},
        "priority": {"type": "integer"},
        "attempts": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "scheduled_at": {"type": "string", "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
        "lease_expires_at": _NULLABLE_TIME,
        "worker_id": _NULLABLE_STR,
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "progress_message": _NULLABLE_STR,
        "result": {"type": ["object", "null"]},
        "error": {
            "type": ["object", "null"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        },
        "idempotency_key": _NULLABLE_STR,
        "cancel_requested": {"type": "boolean"},
        "version": {"type": "integer"},
    },
}

CLAIMED_JOB_SCHEMA: dict[str, Any] = {
    "allOf": [
        _ref("tether.jobs.Job"),
        {
            "type": "object",
            "required": ["lease_token"],
            "properties": {
                "lease_token": {"type": "string"},
                "timeout": {"type": ["number", "null"], "description": "seconds per attempt"},
            },
        },
    ]
}


def _lease_body(extra: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> Any:
    return {
        "type": "object",
        "required": ["lease_token", *required],
        "properties": {"lease_token": {"type": "string"}, **(extra or {})},
    }


def _op(
    op_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    error = {"description": "An error envelope.", "content": _content(_ref("Error"))}
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["jobs"],
        "responses": {**responses, "default": error},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _content(body)}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _query(name: str, schema: dict[str, Any], doc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": doc}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _job_response(text: str) -> dict[str, Any]:
    return {"description": text, "content": _content(_ref("tether.jobs.Job"))}


def add_jobs_openapi(
    document: dict[str, Any], registry: JobTypeRegistry, prefix: str = "/jobs"
) -> None:
    """Add the jobs API's paths and each job type's schemas to an OpenAPI document, in place.

    Components: ``tether.jobs.Job``, and per job type ``job.NAME.parameters``,
    ``job.NAME.result`` and ``job.NAME.submit`` (the submit body with
    ``type`` fixed to NAME); the submit body is ``oneOf`` these, by ``type``.
    """
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    components["tether.jobs.Job"] = JOB_SCHEMA
    submit_bodies: list[dict[str, Any]] = []
    mapping: dict[str, str] = {}
    paths: dict[str, Any] = document.setdefault("paths", {})
    for job_type in registry:
        names = _type_components(job_type, components)
        submit_bodies.append(_ref(names["submit"]))
        mapping[job_type.name] = _COMPONENT.format(name=names["submit"])
        paths[f"{prefix}/types/{job_type.name}/validate"] = {
            "post": _op(
                f"jobs.types.{job_type.name}.validate",
                f"Check parameters and/or a result against the {job_type.name!r} schemas",
                {
                    "200": {
                        "description": "valid, with the problems found",
                        "content": _content(_VALIDATION),
                    }
                },
                body={
                    "type": "object",
                    "properties": {
                        "parameters": _ref(names["parameters"]),
                        "result": _ref(names["result"]),
                    },
                },
            )
        }
    submit_schema: dict[str, Any] = (
        {"oneOf": submit_bodies, "discriminator": {"propertyName": "type", "mapping": mapping}}
        if submit_bodies
        else {"type": "object"}
    )
    paths[prefix] = {
        "post": _op(
            "jobs.submit",
            "Submit a job (its parameters are validated; 422 and nothing stored when invalid)",
            {"201": _job_response("The job (the existing one for a reused idempotency key).")},
            body=submit_schema,
        ),
        "get": _op(
            "jobs.list",
            "List jobs, newest first",
            {
                "200": {
                    "description": "One page",
                    "content": _content(
                        {
                            "type": "object",
                            "properties": {
                                "jobs": {"type": "array", "items": _ref("tether.jobs.Job")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        }
                    ),
                }
            },
            parameters=[
                _query("type", {"type": "string"}, "only this job type"),
                _query(
                    "state",
                    {"type": "string", "enum": [s.value for s in JobState]},
                    "only this state",
                ),
                _query("queue", {"type": "string"}, "only this queue"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
            ],
        ),
    }
    paths[f"{prefix}/types"] = {
        "get": _op(
            "jobs.types",
            "The job types and their schemas",
            {"200": {"description": "job types", "content": _content({"type": "object"})}},
        )
    }
    paths[f"{prefix}/{{id}}"] = {
        "get": _op("jobs.get", "A job", {"200": _job_response("The job.")}, parameters=[_ID])
    }
    paths[f"{prefix}/{{id}}/cancel"] = {
        "post": _op(
            "jobs.cancel",
            "Cancel a job (a running one learns it at its next heartbeat)",
            {"200": _job_response("The job.")},
            parameters=[_ID],
        )
    }
    paths[f"{prefix}/{{id}}/wait"] = {
        "get": _op(
            "jobs.wait",
            "Long poll: until the job is finished (or changed from since_version)",
            {"200": _job_response("The job, finished or as it is at the timeout.")},
            parameters=[
                _ID,
                _query("timeout", {"type": "number", "maximum": 300}, "seconds (default 30)"),
                _query("since_version", {"type": "integer"}, "return on any change from it"),
            ],
        )
    }
    paths[f"{prefix}/claim"] = {
        "post": _op(
            "jobs.claim",
            "Claim jobs with a lease (long poll up to `wait` seconds)",
            {
                "200": {
                    "description": "Claimed jobs",
                    "content": _content(
                        {
                            "type": "object",
                            "properties": {"jobs": {"type": "array", "items": CLAIMED_JOB_SCHEMA}},
                        }
                    ),
                },
                "204": {"description": "Nothing to do."},
            },
            body={
                "type": "object",
                "required": ["worker_id"],
                "properties": {
                    "worker_id": {"type": "string"},
                    "queues": {"type": "array", "items": {"type": "string"}},
                    "types": {"type": ["array", "null"], "items": {"type": "string"}},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "lease_seconds": {"type": "number", "exclusiveMinimum": 0},
                    "wait": {"type": "number", "minimum": 0, "maximum": 300},
                },
            },
        )
    }
    lease_ops = {
        "heartbeat": (
            "Renew the lease and report progress; answers whether cancellation was requested",
            _lease_body(
                {
                    "lease_seconds": {"type": "number"},
                    "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                    "message": {"type": ["string", "null"]},
                }
            ),
            {
                "200": {
                    "description": "Renewed",
                    "content": _content(
                        {
                            "type": "object",
                            "properties": {"cancel_requested": {"type": "boolean"}},
                        }
                    ),
                }
            },
        ),
        "complete": (
            "Finish a job with its result (422 and processing_error when it does not validate)",
            _lease_body({"result": {"type": "object"}}, ("result",)),
            {"200": _job_response("The succeeded job.")},
        ),
        "fail": (
            "Record a failed attempt; retried after the job type's backoff unless retry is false",
            _lease_body(
                {
                    "error": {"type": "object"},
                    "retry": {"type": "boolean"},
                    "retry_delay": {"type": ["number", "null"], "minimum": 0},
                }
            ),
            {"200": _job_response("The job, queued again or failed.")},
        ),
        "release": (
            "Hand a job back unfinished (not counted as an attempt)",
            _lease_body(),
            {"200": _job_response("The job, queued again.")},
        ),
        "mark-cancelled": (
            "Acknowledge a requested cancellation: the job becomes cancelled "
            "(409 failed_precondition when none was requested)",
            _lease_body(),
            {"200": _job_response("The cancelled job.")},
        ),
    }
    for action, (summary, body, responses) in lease_ops.items():
        paths[f"{prefix}/{{id}}/{action}"] = {
            "post": _op(
                f"jobs.{action}",
                summary,
                {
                    **responses,
                    "409": {
                        "description": "The lease was lost (aborted).",
                        "content": _content(_ref("Error")),
                    },
                },
                body=body,
                parameters=[_ID],
            )
        }
    tags = document.setdefault("tags", [])
    listed = ", ".join(registry.names) or "none"
    tags.append({"name": "jobs", "description": f"Jobs. Job types: {listed}"})
    document["x-tether-job-types"] = [
        {k: v for k, v in t.describe().items() if k not in ("parameters", "result")}
        for t in registry
    ]


_VALIDATION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "valid": {"type": "boolean"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def _type_components(job_type: JobType, components: dict[str, Any]) -> dict[str, str]:
    base = _component_name("job", job_type.name)
    names = {side: f"{base}.{side}" for side in ("parameters", "result", "submit")}
    components[names["parameters"]] = _lift(job_type.parameters_schema, base, components)
    components[names["result"]] = _lift(job_type.result_schema, base, components)
    components[names["submit"]] = {
        "type": "object",
        "required": ["type", "parameters"],
        "description": job_type.doc or f"Submit a {job_type.name} job.",
        "properties": {
            "type": {"const": job_type.name},
            "parameters": _ref(names["parameters"]),
            "queue": {"type": "string", "default": job_type.options.queue},
            "priority": {"type": "integer", "default": job_type.options.priority},
            "max_attempts": {
                "type": "integer",
                "minimum": 1,
                "default": job_type.options.max_attempts,
            },
            "run_at": {"type": "string", "format": "date-time"},
            "delay": {"type": "number", "minimum": 0},
            "idempotency_key": {"type": "string"},
        },
    }
    return names
