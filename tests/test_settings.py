"""Settings: environment, tether.toml and code, with their sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tether.settings import Settings


def test_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "tether.toml"
    toml.write_text('default_timeout = 12.5\nlog_level = "warning"\n')
    monkeypatch.setenv("TETHER_CONFIG", str(toml))
    monkeypatch.setenv("TETHER_LOG_LEVEL", "debug")
    settings = Settings(state_dir=tmp_path)
    assert settings.default_timeout == 12.5
    assert settings.log_level == "debug"  # the environment beats the file
    sources = settings.sources()
    assert sources["default_timeout"].startswith("file")
    assert sources["log_level"] == "env"
    assert sources["state_dir"] == "code"
    assert sources["registry_url"] == "default"
    assert settings.effective_job_store_url == f"sqlite:///{tmp_path / 'jobs.db'}"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_DEFAULT_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="default_timeout"):
        Settings()


def test_a_client_takes_its_own_settings() -> None:
    client = tether.Client(settings=Settings(default_timeout=3))
    assert client.timeout == 3
    client.close()


def test_config_show(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"TETHER_DEFAULT_TIMEOUT": "7", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    import json

    shown = json.loads(result.stdout)
    assert shown["default_timeout"] == {"value": 7.0, "source": "env"}


def test_environment_names_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("tether_default_timeout", "4.5")
    settings = Settings()
    assert settings.default_timeout == 4.5
    assert settings.sources()["default_timeout"] == "env"


def test_an_app_takes_its_own_settings(tmp_path: Path) -> None:
    """The default job store and auth store follow the App's settings, not the process's."""
    import asyncio

    from tether.auth import AuthConfig

    app = tether.App(auth=AuthConfig(), settings=Settings(state_dir=tmp_path / "mine"))

    @app.job("noop")
    def noop(parameters: dict[str, int]) -> dict[str, int]:
        return parameters

    async def cycle() -> None:
        await app.startup()
        await app.shutdown()

    asyncio.run(cycle())
    assert app.auth is not None
    assert app.auth.store.path == str(tmp_path / "mine" / "auth.db")
    assert (tmp_path / "mine" / "jobs.db").exists()
    assert (tmp_path / "mine" / "auth.db").exists()
