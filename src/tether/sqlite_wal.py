"""Switching a shared SQLite file to write-ahead logging, safely under concurrency.

Changing the journal mode needs an exclusive lock, and when several
processes open a new file at once SQLite can answer ``database is locked``
at once instead of waiting for its busy timeout. :func:`enable_wal` retries
with short pauses until the timeout; once the file is in WAL mode (which
is persistent) the pragma succeeds at once.
"""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Put ``conn``'s database in WAL mode, retrying while another connection locks it.

    Args:
        conn: an open connection to a file database.
        timeout: seconds to keep retrying.

    Raises:
        sqlite3.OperationalError: still locked after ``timeout`` seconds, or
            another error from SQLite.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
