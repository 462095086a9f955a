"""Tether's preferences, read by pydantic-settings.

Sources, highest first: values passed to :class:`Settings` in code,
``TETHER_*`` environment variables, a ``tether.toml`` file (the path in
``TETHER_CONFIG``, else ``./tether.toml``), then the defaults below. A
Client or App takes a ``settings=`` argument to override them per
instance; nothing here ever writes to the process environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tether"


def config_file() -> Path:
    """The ``tether.toml`` read: ``$TETHER_CONFIG`` or ``./tether.toml``."""
    return Path(os.environ.get("TETHER_CONFIG", "tether.toml"))


class Settings(BaseSettings):
    """Tether's preferences; every field is also ``TETHER_<NAME>`` in the environment.

    Attributes:
        state_dir: where embedded state lives (SQLite registry and job store).
        registry_url: ``sqlite:///path``, ``nats://host:port`` or ``memory://``;
            default: a SQLite file in ``state_dir``.
        job_store_url: ``sqlite:///path`` or ``postgresql://...``; default: a
            SQLite file in ``state_dir``.
        url: the default Tether server URL for commands and ``client.jobs``
            (``TETHER_URL``), e.g. ``http://127.0.0.1:8000``; None: none.
        default_timeout: seconds per call when the caller gives none.
        credentials_path: the client's credentials file (mode 0600); default
            ``credentials.json`` in ``state_dir``.
        tls_ca_bundle: CA bundle (PEM) clients verify servers with.
        tls_cert, tls_key: the client's certificate and key (PEM) for mutual
            TLS (``tether serve`` takes its own with ``--tls-cert``/``--tls-key``).
        tls_pin_sha256: accept only the server certificate with this SHA-256
            fingerprint (hex), as ``connect(pin_sha256=...)`` does.
        auth_store_path: the server's users, API keys and sessions (SQLite);
            default ``auth.db`` in ``state_dir``.
        token_refresh_margin: seconds before an access token expires at which
            the client renews it (default 60).
        nats_user, nats_password: NATS user and password (the relay, a NATS
            registry); ``nats://user:password@host`` in the URL works too.
        nats_token: NATS authorization token.
        nats_nkey_seed_file: file holding an NKey user seed (``SU...``).
        nats_creds_file: a NATS ``.creds`` file (user JWT and NKey seed).
        nats_tls_ca_bundle: CA bundle (PEM) to verify the NATS server with;
            setting it (or ``nats_tls_cert``) turns TLS on, as ``tls://`` does.
        nats_tls_cert, nats_tls_key: client certificate and key (PEM) for NATS.
            With ``tls://`` and none of the three set, ``tls_ca_bundle``,
            ``tls_cert`` and ``tls_key`` are used.
        log_level: ``debug``, ``info``, ``warning`` or ``error``: the default
            of ``tether serve --log-level`` and ``tether worker --log-level``.
    """

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir)
    registry_url: str | None = None
    job_store_url: str | None = None
    url: str | None = None
    default_timeout: float = Field(30.0, gt=0)
    credentials_path: Path | None = None
    tls_ca_bundle: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_pin_sha256: str | None = None
    auth_store_path: Path | None = None
    token_refresh_margin: float = Field(60.0, ge=0)
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_nkey_seed_file: Path | None = None
    nats_creds_file: Path | None = None
    nats_tls_ca_bundle: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _from_code: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._from_code = frozenset(values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
        )

    @property
    def effective_registry_url(self) -> str:
        """``registry_url``, or the SQLite file in the state directory (made
        absolute, so that a relative ``TETHER_STATE_DIR`` stays relative to the
        working directory rather than to ``/``)."""
        return self.registry_url or f"sqlite:///{self._absolute_state_dir() / 'registry.db'}"

    @property
    def effective_job_store_url(self) -> str:
        """``job_store_url``, or the SQLite file in the (absolute) state directory."""
        return self.job_store_url or f"sqlite:///{self._absolute_state_dir() / 'jobs.db'}"

    def _absolute_state_dir(self) -> Path:
        # sqlite:/// + an absolute path is understood by the registry and the job store alike.
        return self.state_dir.expanduser().absolute()

    def require_url(self) -> str:
        """``url``, the default Tether server (``TETHER_URL``).

        Raises:
            ValueError: none is set (the message says how to set one).
        """
        if not self.url:
            raise ValueError(
                "no default Tether server: set TETHER_URL (or url in tether.toml, or "
                "Settings(url=...)), or use client.connect(url).jobs"
            )
        return self.url

    @property
    def effective_credentials_path(self) -> Path:
        """``credentials_path``, or ``credentials.json`` in the state directory."""
        return self.credentials_path or self.state_dir / "credentials.json"

    @property
    def effective_auth_store_path(self) -> Path:
        """``auth_store_path``, or ``auth.db`` in the state directory."""
        return self.auth_store_path or self.state_dir / "auth.db"

    def sources(self) -> dict[str, str]:
        """Where each field's value came from: ``code``, ``env``, ``file`` or ``default``."""
        # pydantic-settings reads environment names regardless of case.
        present_env = {k.upper() for k in os.environ if k.upper().startswith("TETHER_")}
        file_values: dict[str, Any] = TomlConfigSettingsSource(
            type(self), toml_file=config_file()
        )()
        origin: dict[str, str] = {}
        for name in type(self).model_fields:
            if name in self._from_code:
                origin[name] = "code"
            elif f"TETHER_{name.upper()}" in present_env:
                origin[name] = "env"
            elif name in file_values:
                origin[name] = f"file ({config_file()})"
            else:
                origin[name] = "default"
        return origin


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once and cached.

    Tests and programs that need other values pass ``Settings(...)``
    explicitly instead of changing this one.
    """
    return Settings()
