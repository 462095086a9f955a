"""enable_wal: several connections switching a new file to WAL at once all succeed."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from tether.sqlite_wal import enable_wal


def test_concurrent_switches_to_wal_all_succeed(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    for round_ in range(40):  # without the retries, a few of these rounds fail
        path = tmp_path / f"{round_}.db"
        barrier = threading.Barrier(4)

        def open_one(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            conn = sqlite3.connect(path, timeout=5, isolation_level=None)
            try:
                barrier.wait()
                enable_wal(conn, 5.0)
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                assert mode == "wal"
            except BaseException as exc:
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()
    try:
        enable_wal(conn, 5.0)
    except sqlite3.ProgrammingError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("a closed connection was accepted")
