"""The client's credentials file: tokens and TLS choices per server.

A JSON object ``{"servers": {server: entry}}``, where ``server`` is the
normalised base URL and an entry holds what ``tether login`` or a
password login through ``client.connect`` left: ``username``,
``access_token``, ``expires_at`` (Unix s), ``refresh_token``, ``scope``,
or an ``api_key``; and ``ca``, ``pin_sha256``, ``cert``, ``key`` paths.

Writes are atomic and serialised (DESIGN.md, "Lessons"): under a
``filelock`` lock file next to it (portable: ``fcntl`` or ``msvcrt``), the
file is re-read, changed, written to a temporary file in the same
directory with mode 0600, flushed to disk and moved over the old one with
``os.replace``. Readers never see a half-written file, and two processes
refreshing at once take turns (the second sees the first's new tokens).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from filelock import FileLock

log = logging.getLogger("tether.client")

Entry = dict[str, Any]


def server_key(url: str) -> str:
    """The key a server's entry is stored under: ``scheme://host:port/prefix``.

    Raises:
        ValueError: not an http(s) URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


class CredentialsFile:
    """One credentials file (``settings.effective_credentials_path``).

    Args:
        path: the JSON file; its directory is made (mode 0700) on first write.
        lock_timeout: seconds to wait for another process's lock.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)

    def __repr__(self) -> str:
        return f"<CredentialsFile {self.path}>"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's lock (re-entrant within this object and thread)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            yield

    def read(self) -> dict[str, Entry]:
        """Every server's entry; an absent or unreadable file reads as empty."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "ignoring unreadable credentials file %s: %s", self.path, type(exc).__name__
            )
            return {}
        servers = data.get("servers") if isinstance(data, dict) else None
        return {k: v for k, v in (servers or {}).items() if isinstance(v, dict)}

    def get(self, url: str) -> Entry | None:
        """The entry of the server at ``url``, or None."""
        return self.read().get(server_key(url))

    def update(self, url: str, change: Callable[[Entry | None], Entry | None]) -> Entry | None:
        """Re-read, change and write one server's entry under the lock.

        Args:
            change: takes the current entry (or None), returns the new one
                (None removes it).

        Returns:
            The new entry.

        Raises:
            filelock.Timeout: another process held the lock for longer than
                ``lock_timeout`` seconds.
            OSError: the directory or file cannot be written.
            ValueError: ``url`` is not an http(s) URL (see :func:`server_key`).
        """
        key = server_key(url)
        with self.locked():
            servers = self.read()
            new = change(servers.get(key))
            if new is None:
                servers.pop(key, None)
            else:
                servers[key] = new
            self._write(servers)
        return new

    def put(self, url: str, entry: Entry) -> None:
        """Store ``entry`` for the server at ``url`` (replacing the old one).

        Raises:
            filelock.Timeout, OSError, ValueError: as :meth:`update`.
        """
        self.update(url, lambda _: entry)

    def remove(self, url: str) -> bool:
        """Forget the server at ``url``; True if it had an entry.

        Raises:
            filelock.Timeout, OSError, ValueError: as :meth:`update`.
        """
        had: list[bool] = []

        def drop(old: Entry | None) -> None:
            had.append(old is not None)
            return None

        self.update(url, drop)
        return had[0]

    def _write(self, servers: dict[str, Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".credentials-", suffix=".tmp", dir=self.path.parent)
        try:
            if hasattr(os, "fchmod"):  # mkstemp makes it 0600 already on POSIX
                os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"servers": servers}, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
