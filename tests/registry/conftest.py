"""Fixtures of the registry tests: the anyio backend and one URL per registry backend."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

BACKENDS = ["memory", "sqlite", "nats"]


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


def _with_query(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


@pytest.fixture(params=BACKENDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry URL for an empty registry, for each backend in turn."""
    kind: str = request.param
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/state/registry.db?poll_interval=0.05"
    nats_url: str = request.getfixturevalue("nats_url")
    return _with_query(nats_url, f"bucket=test_{uuid.uuid4().hex}")
