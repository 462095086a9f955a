"""With auth on, the OpenAPI document declares the bearer scheme and each method's scopes."""

from __future__ import annotations

from pathlib import Path

from openapi_spec_validator import validate

from tests.auth.secured_app import make_app


def test_openapi_declares_bearer_and_scopes(tmp_path: Path) -> None:
    app = make_app(job_store=f"sqlite:///{tmp_path / 'jobs.db'}")
    document = app.openapi()
    validate(document)  # still valid OpenAPI 3.1
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    paths = document["paths"]
    assert paths["/rpc/vault/peek"]["post"]["security"] == [{"bearer": ["vault.read"]}]
    assert paths["/rpc/vault/put"]["post"]["security"] == [
        {"bearer": ["vault.read", "vault.write"]}
    ]
    assert "401" in paths["/rpc/vault/put"]["post"]["responses"]


def test_openapi_without_auth_declares_no_security() -> None:
    import tether
    from tests.apps.behaviour import app

    assert isinstance(app, tether.App)
    document = app.openapi()
    assert "security" not in document
    assert "securitySchemes" not in document.get("components", {})
