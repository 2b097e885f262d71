"""Stored search results, so that every page of one search is cut from one answer.

A row is an opaque body under a random id, the digest of the caller it belongs
to, and the instant it expires. Expired rows are deleted whenever a new one is
written, so the table never holds more than the last ``ttl`` of searches.

A write is made on the driver's own connection (checked out of the pool, two fixed
statements, one commit): ``$everything`` keeps a result of tens of kilobytes for
every record longer than a page, and SQLAlchemy's statement building and
transaction bookkeeping around the two statements cost the gateway's worker about
as much CPU as SQLite's own write (see ``benchmarks/README.md``, branch h13e).
"""

from __future__ import annotations

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.loop_guard import loop_bounded
from carelink.storage.tables import result_sets


@loop_bounded
class ResultStore:
    """Result sets by id, in the database every gateway process shares."""

    def __init__(self, db: Database) -> None:
        self.db = db
        mark = "?" if db.is_sqlite else "%s"
        # fixed SQL from our own placeholder marks; values are always bound parameters
        self._sql_sweep = f"DELETE FROM result_sets WHERE expires <= {mark}"  # noqa: S608
        self._sql_put = (
            "INSERT INTO result_sets (id, owner, expires, body) "  # noqa: S608
            f"VALUES ({mark}, {mark}, {mark}, {mark})"
        )

    def put(self, set_id: str, owner: str, body: bytes, expires: float, now: float) -> None:
        """Store one result set, sweeping away the expired ones in the same transaction.

        On the driver's connection: its first statement opens the transaction (as under
        SQLAlchemy), the commit ends it; on a failure the connection goes back to the
        pool, which rolls the transaction back."""
        conn = self.db.engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(self._sql_sweep, (now,))
                cur.execute(self._sql_put, (set_id, owner, expires, body))
            finally:
                cur.close()
            conn.commit()
        finally:
            conn.close()

    def get(self, set_id: str, owner: str, now: float) -> bytes | None:
        """The body, if the set exists, has not expired and belongs to ``owner``.

        Which of the three failed is deliberately not said: a caller holding
        someone else's cursor learns nothing from the answer.
        """
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(result_sets.c.body).where(
                    result_sets.c.id == set_id,
                    result_sets.c.owner == owner,
                    result_sets.c.expires > now,
                )
            ).first()
        return bytes(row[0]) if row else None

    def sweep(self, now: float) -> int:
        """Delete expired sets; return how many went."""
        with self.db.engine.begin() as conn:
            return int(
                conn.execute(result_sets.delete().where(result_sets.c.expires <= now)).rowcount
            )
