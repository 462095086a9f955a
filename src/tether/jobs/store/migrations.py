"""Numbered schema migrations of the job stores, one SQL dialect per backend.

Each store applies, on ``open()``, every migration whose version is not yet in
``tether_schema_version``, inside one transaction that first takes a lock
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL): processes
opening the same database at once apply each migration exactly once.
Append new migrations; never edit an applied one.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Key of the PostgreSQL advisory lock held while migrating.
POSTGRES_MIGRATION_LOCK = 0x7465746865720001

VERSION_TABLE = "tether_schema_version"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``version`` (1, 2, ...), a ``name`` and its statements per dialect."""

    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# The transition rule shared by both triggers; it mirrors model.TRANSITIONS.
_LEGAL = (
    "(OLD.state = 'queued' AND NEW.state IN ('running', 'cancelled'))"
    " OR (OLD.state = 'running' AND NEW.state IN ('queued', 'succeeded', 'failed', 'cancelled'))"
)
_STATES = "('queued', 'running', 'succeeded', 'failed', 'cancelled')"

_V1_SQLITE = (
    f"""
    CREATE TABLE tether_jobs (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        queue TEXT NOT NULL,
        parameters TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN {_STATES}),
        priority INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
        scheduled_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        lease_token TEXT,
        lease_expires_at INTEGER,
        worker_id TEXT,
        progress REAL,
        progress_message TEXT,
        result TEXT,
        error TEXT,
        idempotency_key TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 1
    )
    """,
    "CREATE UNIQUE INDEX tether_jobs_idempotency ON tether_jobs (idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX tether_jobs_claim ON tether_jobs (queue, priority DESC, scheduled_at, id)"
    " WHERE state = 'queued'",
    "CREATE INDEX tether_jobs_lease ON tether_jobs (lease_expires_at) WHERE state = 'running'",
    "CREATE INDEX tether_jobs_by_state ON tether_jobs (state, id)",
    "CREATE INDEX tether_jobs_by_type ON tether_jobs (type, id)",
    f"""
    CREATE TRIGGER tether_jobs_transition BEFORE UPDATE OF state ON tether_jobs
    WHEN OLD.state <> NEW.state AND NOT ({_LEGAL})
    BEGIN
        SELECT RAISE(ABORT, 'tether: illegal job state transition');
    END
    """,
)

_V1_POSTGRES = (
    f"""
    CREATE TABLE tether_jobs (
        id text COLLATE "C" PRIMARY KEY,
        type text NOT NULL,
        queue text NOT NULL,
        parameters jsonb NOT NULL,
        state text NOT NULL CHECK (state IN {_STATES}),
        priority integer NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL CHECK (max_attempts >= 1),
        scheduled_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL,
        started_at timestamptz,
        finished_at timestamptz,
        lease_token text,
        lease_expires_at timestamptz,
        worker_id text,
        progress double precision,
        progress_message text,
        result jsonb,
        error jsonb,
        idempotency_key text,
        cancel_requested boolean NOT NULL DEFAULT false,
        version bigint NOT NULL DEFAULT 1
    )
    """,
    "CREATE UNIQUE INDEX tether_jobs_idempotency ON tether_jobs (idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX tether_jobs_claim ON tether_jobs (queue, priority DESC, scheduled_at, id)"
    " WHERE state = 'queued'",
    "CREATE INDEX tether_jobs_lease ON tether_jobs (lease_expires_at) WHERE state = 'running'",
    "CREATE INDEX tether_jobs_by_state ON tether_jobs (state, id)",
    "CREATE INDEX tether_jobs_by_type ON tether_jobs (type, id)",
    f"""
    CREATE FUNCTION tether_jobs_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT ({_LEGAL}) THEN
            RAISE EXCEPTION 'tether: illegal job state transition % -> %', OLD.state, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER tether_jobs_transition BEFORE UPDATE OF state ON tether_jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION tether_jobs_check_transition()
    """,
    # Wake LISTENing workers whenever a job becomes queued, from any writer.
    """
    CREATE FUNCTION tether_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('tether_jobs', NEW.queue);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER tether_jobs_notify_insert AFTER INSERT ON tether_jobs
    FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION tether_jobs_notify()
    """,
    """
    CREATE TRIGGER tether_jobs_notify_update AFTER UPDATE OF state ON tether_jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND OLD.state <> 'queued')
    EXECUTE FUNCTION tether_jobs_notify()
    """,
)

#: All migrations, in order.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs table, indexes, transition and notify triggers", _V1_SQLITE, _V1_POSTGRES),
)

#: The version a fully migrated database reports.
LATEST_VERSION = MIGRATIONS[-1].version

#: The PostgreSQL channel the notify trigger uses; the payload is the queue name.
POSTGRES_CHANNEL = "tether_jobs"
