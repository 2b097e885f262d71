"""What an operator asks of the database: does it answer, and how many export jobs are
in each state. Read by the readiness probe and the metrics scrape, never on the
request path."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from carelink.storage.database import Database
from carelink.storage.tables import export_jobs

#: every state an export job can be in (``storage.export_store.JobRow.status``)
JOB_STATES = ("accepted", "running", "complete", "error", "cancelled", "expired")


class Health:
    """Checks on ``db``.

    With SQLite each check opens its own connection (read-write, never creating the
    file): the pooled connections keep their file open, and would go on answering for
    a database file that can no longer be opened. With PostgreSQL the pool is used
    (it pings a connection before handing it out).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._own: Engine | None = None
        if db.is_sqlite:
            path = sa.engine.make_url(db.url).database or ""
            self._own = sa.create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(
                    f"file:{path}?mode=rw", uri=True, timeout=1.0, check_same_thread=False
                ),
                poolclass=NullPool,
            )

    def ping(self) -> None:
        """Return when the database answers a trivial query; raise whatever it raised."""
        engine = self._own or self.db.engine
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar_one()

    def jobs_by_state(self) -> dict[str, int]:
        """How many export jobs are in each state (states without jobs left out)."""
        query = sa.select(export_jobs.c.status, sa.func.count()).group_by(export_jobs.c.status)
        with self.db.engine.connect() as conn:
            return {str(state): int(count) for state, count in conn.execute(query)}

    def close(self) -> None:
        """Release the checks' own engine, if any."""
        if self._own is not None:
            self._own.dispose()
