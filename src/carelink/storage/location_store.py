"""Where each resource the gateway has handed out lives: (type, id) -> person.

Written whenever a person's record is federated, so a later read of
``Observation/acute-123`` knows whose record to ask for it. The first time
seen is kept: the time the gateway learned of the resource.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.dialects import postgresql, sqlite

from carelink.storage.database import Database
from carelink.storage.hot import HotConnection
from carelink.storage.loop_guard import bounds_itself, loop_bounded
from carelink.storage.tables import resource_locations

#: (type, id) pairs this process has written, so a re-read of a record writes nothing
_MEMO_LIMIT = 200_000


@loop_bounded
class LocationStore:
    """Reads and writes of ``resource_locations``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._hot = HotConnection(db)
        mark = self._hot.mark
        # fixed SQL from our own placeholder marks; values are always bound parameters
        where = f"resource_type = {mark} AND resource_id = {mark}"
        self._sql_person = f"SELECT person_id FROM resource_locations WHERE {where}"  # noqa: S608
        self._sql_refs = (
            "SELECT resource_type, resource_id FROM resource_locations "  # noqa: S608
            f"WHERE person_id = {mark}"
        )
        self._sql_seen = (
            "SELECT resource_type, resource_id, first_seen FROM resource_locations "  # noqa: S608
            f"WHERE person_id = {mark}"
        )
        self._written: set[tuple[str, str]] = set()
        #: moves whenever ``_written`` forgets: what a caller learned of it holds till then
        self.generation = 0

    def record(self, person_id: str, resources: Iterable[tuple[str, str]], seen: str) -> int:
        """Note that the person's record holds these (type, id) pairs.

        The first time seen is kept; the person is the latest (a rebuilt index may
        have moved a source's record to another person).

        Returns how many pairs were new to this process (and so sent to the database).
        """
        new = self.unwritten(resources)
        if not new:
            return 0
        rows = [
            {"resource_type": t, "resource_id": i, "person_id": person_id, "first_seen": seen}
            for t, i in new
        ]
        insert = (sqlite.insert if self.db.is_sqlite else postgresql.insert)(resource_locations)
        with self.db.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["resource_type", "resource_id"],
                    set_={"person_id": insert.excluded.person_id},
                ),
                rows,
            )
        if len(self._written) + len(new) > _MEMO_LIMIT:
            self._written.clear()
            self.generation += 1
        self._written.update(new)
        return len(new)

    @bounds_itself
    def unwritten(self, resources: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (type, id) pairs this process has not sent to the database yet (no I/O:
        the caller skips the write, and its hand-off to a thread, when there are none)."""
        return [key for key in dict.fromkeys(resources) if key not in self._written]

    @bounds_itself
    def person_of(self, resource_type: str, resource_id: str) -> str | None:
        """The person whose record held ``resource_type/resource_id``, if ever seen."""
        rows = self._hot.query(self._sql_person, (resource_type, resource_id))
        return str(rows[0][0]) if rows else None

    @bounds_itself
    def refs_of(self, person_id: str) -> frozenset[str]:
        """``Type/id`` of every resource seen in the person's record."""
        rows = self._hot.query(self._sql_refs, (person_id,))
        return frozenset(f"{t}/{i}" for t, i in rows)

    @bounds_itself
    def first_seen_of(self, person_id: str) -> dict[str, str]:
        """``Type/id`` -> when the gateway first learned of it, for the person's record."""
        rows = self._hot.query(self._sql_seen, (person_id,))
        return {f"{t}/{i}": str(seen) for t, i, seen in rows}

    @bounds_itself
    def close(self) -> None:
        """Release the lookup connection."""
        self._hot.close()
