"""One long-lived autocommit DBAPI connection for reads on the request path.

The request path pays for every microsecond: a pooled SQLAlchemy connection
costs more than the indexed read itself. Each read sees the latest committed
data (autocommit), so a change made by another process is seen at once. A
broken connection is dropped and the read tried once more on a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from carelink.storage.database import Database


class HotConnection:
    """Fixed-SQL reads on one connection (used from one thread: the event loop's)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.mark = "?" if db.is_sqlite else "%s"
        self._conn: Any = None

    def query(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with bound ``values``."""
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = self.db.engine.raw_connection()
                    driver = self._conn.driver_connection
                    if self.db.is_sqlite:
                        driver.isolation_level = None
                    else:
                        driver.autocommit = True
                cur = self._conn.cursor()
                try:
                    cur.execute(sql, tuple(values))
                    return list(cur.fetchall())
                finally:
                    cur.close()
            except Exception:
                if self._conn is not None:
                    self._conn.invalidate()
                    self._conn = None
                if attempt == 2:
                    raise
        return []  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        """Release the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
