"""OpenAPI 3.1 document and Swagger UI page, generated from the interfaces."""

from __future__ import annotations

import html
from typing import Any

from pydantic import TypeAdapter

from tether.errors import HTTP_STATUS, StatusCode
from tether.interface import ServiceSpec

_REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [c.value for c in StatusCode]},
                "message": {"type": "string"},
                "details": {},
                "type": {"type": ["string", "null"]},
            },
        }
    },
}


def openapi_document(
    services: dict[str, ServiceSpec], *, title: str, version: str
) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of ``services``.

    Every method becomes ``POST /rpc/{service}/{method}`` taking its arguments
    as a JSON (or msgpack) object and answering its result, with the error
    envelope for 4xx/5xx. Schemas shared between methods are emitted once
    under ``components/schemas``.
    """
    inputs: list[tuple[tuple[str, str], Any, TypeAdapter[Any]]] = []
    for svc in services.values():
        for m in svc.methods.values():
            inputs.append(((m.qualified_name, "params"), "validation", TypeAdapter(m.params_model)))
            inputs.append(((m.qualified_name, "result"), "serialization", m.result_adapter))
    schemas, definitions = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    components: dict[str, Any] = dict(definitions.get("$defs", {}))
    components["Error"] = ERROR_SCHEMA
    paths: dict[str, Any] = {}
    for svc in services.values():
        for m in svc.methods.values():
            params = schemas[((m.qualified_name, "params"), "validation")]
            result = schemas[((m.qualified_name, "result"), "serialization")]
            error_ref = {"$ref": _REF.format(model="Error")}
            responses: dict[str, Any] = {
                "200": {"description": "The result.", "content": _content(result)},
                "default": {"description": "An error envelope.", "content": _content(error_ref)},
            }
            for err in m.errors:
                responses.setdefault(
                    str(HTTP_STATUS[err.code]),
                    {
                        "description": f"{err.error_name} ({err.code.value})",
                        "content": _content(error_ref),
                    },
                )
            paths[f"/rpc/{svc.name}/{m.name}"] = {
                "post": {
                    "operationId": f"{svc.name}.{m.name}",
                    "summary": (m.doc.splitlines() or [m.qualified_name])[0],
                    "description": m.doc,
                    "tags": [svc.name],
                    "requestBody": {"required": False, "content": _content(params)},
                    "responses": responses,
                    "x-tether-idempotent": m.options.idempotent,
                    "x-tether-timeout": m.options.timeout,
                }
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
        "tags": [{"name": s.name, "description": s.doc} for s in services.values()],
    }


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "application/json": {"schema": schema},
        "application/msgpack": {"schema": schema},
    }


def docs_page(title: str, openapi_url: str) -> str:
    """An HTML page that renders ``openapi_url`` with Swagger UI (from a CDN)."""
    t = html.escape(title)
    u = html.escape(openapi_url)
    cdn = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{t}</title>
<link rel="stylesheet" href="{cdn}/swagger-ui.css"></head>
<body><div id="ui"><noscript>The OpenAPI document is at <a href="{u}">{u}</a>.</noscript></div>
<script src="{cdn}/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "{u}", dom_id: "#ui"}});</script>
</body></html>"""
