"""Persistence of the patient index: persons, their links to sources, the review list.

Here the reads of the request path (the lookup, Patient search) and the index's listings;
the linker's writes and reads are ``index_linking.IndexLinking``'s, the rows
``index_rows``'."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.hot import HotConnection
from carelink.storage.index_linking import IndexLinking
from carelink.storage.index_rows import (
    FoundPerson,
    LinkRow,
    PersonRow,
    ReviewRow,
    link_row,
    person_and_consents,
    person_row,
)
from carelink.storage.loop_guard import bounds_itself, loop_bounded
from carelink.storage.person_query import PersonQuery, seekable_branches, seekable_sql
from carelink.storage.search_plan import postgres_access, sqlite_access
from carelink.storage.tables import links, persons, review

_PERSON_COLUMNS = ", ".join(c.name for c in persons.c)
_LINK_COLUMNS = ", ".join(c.name for c in links.c)
_PERSON_COLUMNS_OF_P = ", ".join(f"p.{c.name}" for c in persons.c)
#: a search's rows (person id, Patient, consent id, consent body, plain) in the order of
#: ``find_with_consents``: by person, then consent (a person's consent ids differ, and a
#: person without any has one row, so the ``None`` is never compared)
_PERSON_AND_CONSENT = itemgetter(0, 2)
#: a NamedTuple's fields given in order: ``tuple.__new__(FoundPerson, fields)``
_FOUND = tuple.__new__


@loop_bounded
class IndexStore(IndexLinking):
    """Reads and writes of the patient index tables (the writes: ``IndexLinking``).

    The two reads on the lookup path (person by NHS number, person with
    links) go through one long-lived DBAPI connection in autocommit mode with
    fixed SQL: no pool checkout or statement building per request, and every
    committed rebuild is visible to the next read.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._hot = HotConnection(db)
        # Fixed SQL built once from our own column names; values are always bound parameters.
        mark = "?" if db.is_sqlite else "%s"
        person_sql = f"SELECT {_PERSON_COLUMNS} FROM persons WHERE"  # noqa: S608
        self._sql_by_nhs = f"{person_sql} nhs_number = {mark}"
        # the lookup's one read: the person and their active consents together, one
        # statement, so the two are read from one snapshot
        with_consents = (
            f"SELECT {_PERSON_COLUMNS_OF_P}, c.id, c.body FROM persons p "  # noqa: S608
            "LEFT JOIN consents c ON c.patient_id = p.id AND c.status = 'active' "
        )
        # the consents in id order: on SQLite sorted here (its order for text is the
        # code points', as Python's), sparing the read of one person a sorter of its
        # own for their few rows; PostgreSQL orders by its collation, in the SQL
        order = "" if db.is_sqlite else " ORDER BY c.id"
        self._sort_consents = db.is_sqlite
        self._sql_by_nhs_consents = f"{with_consents}WHERE p.nhs_number = {mark}{order}"
        self._sql_by_id_consents = f"{with_consents}WHERE p.id = {mark}{order}"
        self._sql_by_id = f"{person_sql} id = {mark}"
        self._sql_links = (
            f"SELECT {_LINK_COLUMNS} FROM person_links WHERE person_id = {mark} "  # noqa: S608
            "ORDER BY source, local_id"
        )
        # what a fan-out asks: each record's source and local id, not its Patient (a
        # kilobyte each); on SQLite sorted here, as the consents are (its order for text is
        # the code points', as Python's), sparing the read a sorter of its own
        # $everything's one read on SQLite: the person, their active consents and their
        # records (tagged 0 and 1), one statement, so one snapshot and one read
        # transaction (two reads paid SQLite's lock and cache check twice)
        self._sql_by_id_consents_records = (
            f"SELECT 0, {_PERSON_COLUMNS_OF_P}, c.id, c.body FROM persons p "  # noqa: S608
            "LEFT JOIN consents c ON c.patient_id = p.id AND c.status = 'active' "
            "WHERE p.id = ?1 UNION ALL "
            f"SELECT 1, {', '.join(['NULL'] * len(persons.c))}, source, local_id "
            "FROM person_links WHERE person_id = ?1"
        )
        self._sql_records = (
            "SELECT source, local_id FROM person_links "  # noqa: S608
            f"WHERE person_id = {mark}{'' if db.is_sqlite else ' ORDER BY source, local_id'}"
        )

    def _query(self, sql: str, value: str) -> list[tuple[Any, ...]]:
        return self._hot.query(sql, (value,))

    @bounds_itself
    def close(self) -> None:
        """Release the lookup connection."""
        self._hot.close()

    @bounds_itself
    def person_by_nhs(self, nhs_number: str) -> PersonRow | None:
        """The person with this NHS number."""
        rows = self._query(self._sql_by_nhs, nhs_number)
        return person_row(rows[0]) if rows else None

    @bounds_itself
    def person_by_nhs_with_consents(
        self, nhs_number: str
    ) -> tuple[PersonRow, list[tuple[str, bytes]]] | None:
        """The person with this NHS number and (id, body) of their active consents, in
        one read (what ``person_by_nhs`` and ``ConsentStore.active`` give, together)."""
        rows = self._query(self._sql_by_nhs_consents, nhs_number)
        return person_and_consents(rows, self._sort_consents)

    @bounds_itself
    def person_with_consents(
        self, person_id: str
    ) -> tuple[PersonRow, list[tuple[str, bytes]]] | None:
        """The person with this gateway id and (id, body) of their active consents, in one
        read (what ``person`` and ``ConsentStore.active`` give, together)."""
        rows = self._query(self._sql_by_id_consents, person_id)
        return person_and_consents(rows, self._sort_consents)

    @bounds_itself
    def person(self, person_id: str) -> PersonRow | None:
        """The person with this gateway id."""
        rows = self._query(self._sql_by_id, person_id)
        return person_row(rows[0]) if rows else None

    @bounds_itself
    def links_of(self, person_id: str) -> list[LinkRow]:
        """Every source link of a person, through the lookup connection (the hot path)."""
        return [link_row(r) for r in self._query(self._sql_links, person_id)]

    @bounds_itself
    def records_of(self, person_id: str) -> list[tuple[str, str]]:
        """(source, local id) of each of a person's records, in ``links_of``'s order: what
        ``$everything`` asks the sources, read without each record's Patient."""
        rows = self._query(self._sql_records, person_id)
        if self._sort_consents:  # SQLite: sorted here (see ``__init__``)
            rows.sort()
        return [(str(source), str(local_id)) for source, local_id in rows]

    @bounds_itself
    def person_consents_and_records(
        self, person_id: str
    ) -> tuple[PersonRow, list[tuple[str, bytes]], list[tuple[str, str]]] | None:
        """``person_with_consents`` and ``records_of`` the person together: on SQLite in
        one statement (one snapshot), otherwise in two reads on the same thread."""
        if not self.db.is_sqlite:
            found = self.person_with_consents(person_id)
            return None if found is None else (*found, self.records_of(person_id))
        rows = self._query(self._sql_by_id_consents_records, person_id)
        person = person_and_consents([r[1:] for r in rows if r[0] == 0], sort=True)
        if person is None:
            return None
        records = sorted([(str(r[-2]), str(r[-1])) for r in rows if r[0] == 1])
        return person[0], person[1], records

    @bounds_itself
    def person_and_records(self, person_id: str) -> tuple[PersonRow, list[tuple[str, str]]] | None:
        """A person and ``records_of`` them."""
        person = self.person(person_id)
        if person is None:
            return None
        return person, self.records_of(person_id)

    @staticmethod
    def is_lookup(query: PersonQuery) -> bool:
        """Does ``find`` answer ``query`` with the lookup's one indexed read (one NHS
        number, nothing else)?"""
        return _only_nhs_number(query) is not None

    def find(self, query: PersonQuery, *, after: str = "", limit: int = 500) -> list[PersonRow]:
        """Up to ``limit`` persons matching ``query`` with ids after ``after``, in id order
        (keyset paging: call again with the last id to walk every match, never holding all).

        The lookup by one NHS number, the hot path, reads through the lookup connection.
        """
        nhs = _only_nhs_number(query)
        if nhs is not None:
            row = self.person_by_nhs(nhs)
            return [row] if row is not None and row.id > after and limit > 0 else []
        sql, values = self._find_sql(query, after, limit)
        return [person_row(r) for r in self._search(sql, values)]

    def find_with_consents(
        self, query: PersonQuery, *, after: str = "", limit: int = 500
    ) -> tuple[list[FoundPerson], dict[str, list[tuple[str, bytes]]]]:
        """``find`` (each person's id, Patient and ``plain``: what a search reads of them), and (id,
        body) of the active consents of each person found who has any, in one statement
        (what ``find`` and ``ConsentStore.active_of`` give, together, from one snapshot): a
        search's page and what consent needs to decide on it, in one round trip to the
        database instead of two."""
        nhs = _only_nhs_number(query)
        if nhs is not None:
            found = self.person_by_nhs_with_consents(nhs)
            if found is None or found[0].id <= after or limit <= 0:
                return [], {}
            person = FoundPerson(found[0].id, found[0].patient, found[0].plain)
            return [person], {person.id: found[1]} if found[1] else {}
        read = self._search(*self._with_consents_sql(query, after, limit))
        if self.db.is_sqlite:
            # in id order, and each person's consents in theirs, here: the page's rowids
            # are sorted by id in SQL (small keys), not the rows that carry Patients
            read.sort(key=_PERSON_AND_CONSENT)
        rows: list[FoundPerson] = []
        held: dict[str, list[tuple[str, bytes]]] = {}
        last = None  # the person of the row before (an id is never None)
        for person, patient, consent, body, plain in read:
            if person != last:
                # psycopg may give a memoryview; sqlite3 gives plain as 0 / 1
                # FoundPerson made as its __new__ makes it, without that Python call
                rows.append(_FOUND(FoundPerson, (person, bytes(patient), bool(plain))))
                last = person
            if consent is not None:
                held.setdefault(person, []).append((str(consent), bytes(body)))
        return rows, held

    def _with_consents_sql(
        self, query: PersonQuery, after: str, limit: int
    ) -> tuple[str, list[Any]]:
        """``find_with_consents``'s statement (id, Patient, consent id, consent body, plain).

        On SQLite ``find``'s page as the rowids of its persons (found, ordered by id and
        cut in SQL: only the keys go through the sorter), each person read with their
        active consents, in no order. Sorting the rows themselves in SQL, twice (the
        page, then the join), copied every Patient into a sorter: 300,000 of the 860,000
        instructions of the read for a search returning 13 people. On PostgreSQL the
        server sorts ``find``'s page joined with the consents."""
        if not self.db.is_sqlite:
            sql, values = self._find_sql(query, after, limit)
            joined = (
                f"SELECT p.id, p.patient, c.id, c.body, p.plain FROM ({sql}) p "  # noqa: S608
                "LEFT JOIN consents c ON c.patient_id = p.id AND c.status = 'active' "
                "ORDER BY p.id, c.id"
            )
            return joined, values
        test, values = self._where(query)
        page = f"SELECT rowid FROM persons WHERE {test} AND id > ? ORDER BY id LIMIT ?"  # noqa: S608
        sql = (
            "SELECT p.id, p.patient, c.id, c.body, p.plain FROM persons p "  # noqa: S608
            "LEFT JOIN consents c ON c.patient_id = p.id AND c.status = 'active' "
            f"WHERE p.rowid IN ({page})"
        )
        return sql, [*values, after, limit]

    def _find_sql(self, query: PersonQuery, after: str, limit: int) -> tuple[str, list[Any]]:
        """``find``'s statement (and, on PostgreSQL, the page ``find_with_consents``
        joins with the consents).

        On PostgreSQL, when the query has a first ``family`` list, the page is read from
        ``seekable_branches`` themselves, each reading the person's columns: not their
        ids united and each person then read again by id (a descent of the primary key
        and a second visit to the row, each person found). The parts of one name never
        find the same person, so they are appended (``UNION ALL``); those of several
        names may (``smi`` and ``smith``), so ``UNION`` keeps each row once (a person's
        row is the same whichever part found it). The backend's CPU a year-range search
        at the full test range: 340 us read through the ids, 195 us so
        (benchmarks/README.md, "The eighteenth stop")."""
        if not self.db.is_sqlite and query.family and query.family[0]:
            selects, values = seekable_branches(query, "%s", False, _PERSON_COLUMNS)
            union = (" UNION ALL " if len(query.family[0]) == 1 else " UNION ").join(selects)
            sql = f"SELECT * FROM ({union}) u WHERE id > %s ORDER BY id LIMIT %s"  # noqa: S608
            return sql, [*values, after, limit]
        mark = "?" if self.db.is_sqlite else "%s"
        test, values = self._where(query)
        sql = (
            f"SELECT {_PERSON_COLUMNS} FROM persons WHERE {test} "  # noqa: S608
            f"AND id > {mark} ORDER BY id LIMIT {mark}"
        )
        return sql, [*values, after, limit]

    def _where(self, query: PersonQuery) -> tuple[str, list[Any]]:
        sqlite = self.db.is_sqlite
        return seekable_sql(query, "?" if sqlite else "%s", sqlite)

    def count(self, query: PersonQuery) -> int:
        """How many persons match ``query`` (a SQL COUNT of the same WHERE clause)."""
        test, values = self._where(query)
        sql = f"SELECT count(*) FROM persons WHERE {test}"  # noqa: S608
        return int(self._search(sql, values)[0][0])

    def plan(self, query: PersonQuery, *, search: bool = False) -> tuple[str, ...]:
        """How the database would read ``find(query)``'s first page (``search``: the
        statement ``find_with_consents`` reads it with, a search's): for each read of a
        table, ``index:<name>`` (a search in that index) or ``scan:<table>`` (every row,
        or every entry of an index walked whole). The SQLite plan comes from
        ``EXPLAIN QUERY PLAN``, PostgreSQL's from ``EXPLAIN (FORMAT JSON)``."""
        statement = self._with_consents_sql if search else self._find_sql
        sql, values = statement(query, "", 500)
        if self.db.is_sqlite:
            return tuple(
                access
                for row in self._search(f"EXPLAIN QUERY PLAN {sql}", values)
                if (access := sqlite_access(str(row[3]))) is not None
            )
        (document,) = self._search(f"EXPLAIN (FORMAT JSON) {sql}", values)[0]
        found = document if isinstance(document, list) else json.loads(document)
        return tuple(postgres_access(found[0]["Plan"]))

    def _search(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A search's rows on the driver's own cursor (SQLAlchemy's result set cost more
        than the indexed read, for rows that need no conversion), in autocommit mode on
        PostgreSQL: one statement, no ``BEGIN`` before it and nothing to roll back after.

        On PostgreSQL, the calling thread's lookup connection (``HotConnection.read``,
        bounded by the statement timeout only: a wide search may take longer than the
        lookup's ``HOT_LIMIT``): no pool checkout, and so no ping before each read, which
        cost a search by name and date 75 of its 150 us of CPU; threads beyond the
        database's own read on a pooled connection each time, so a benchmark's 32
        searching threads do not exhaust the pool. On SQLite a pooled connection each
        time, as there the lookup connection waits for a lock at most ``HOT_LIMIT``."""
        if self.db.is_sqlite:
            return self._hot.once(sql, tuple(values))
        return self._hot.read(sql, tuple(values))

    def people_after(self, after: str = "", batch: int = 1000) -> list[PersonRow]:
        """Up to ``batch`` persons with ids after ``after``, in id order: one step of a
        scan of the whole index (``each_person``)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(persons).where(persons.c.id > after).order_by(persons.c.id).limit(batch)
            ).all()
        return [PersonRow(*r) for r in rows]

    def each_person(self, batch: int = 1000) -> Iterator[PersonRow]:
        """Every person, in id order, read ``batch`` rows at a time (a scan of the whole
        index that never holds it all)."""
        after = ""
        while rows := self.people_after(after, batch):
            yield from rows
            after = rows[-1].id

    def link(self, source: str, local_id: str) -> LinkRow | None:
        """The link for one source record."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(links).where(links.c.source == source, links.c.local_id == local_id)
            ).first()
        return LinkRow(*row) if row else None

    def local_ids(self, source: str, after: str = "", limit: int = 1000) -> list[str]:
        """One page of the local ids the index links for ``source``: those after
        ``after``, in order, at most ``limit`` (walk on from the last one)."""
        c = links.c
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.local_id)
                .where(c.source == source, c.local_id > after)
                .order_by(c.local_id)
                .limit(limit)
            )
            return [str(r[0]) for r in rows]

    def link_by_patient_id(self, patient_id: str) -> LinkRow | None:
        """The link whose source Patient has this gateway id."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(links).where(links.c.patient_id == patient_id)).first()
        return LinkRow(*row) if row else None

    def reviews(self) -> list[ReviewRow]:
        """The near-miss review list."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(sa.select(review).order_by(review.c.score.desc()))
            return [ReviewRow(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        """How many persons, links per source, and reviews the index holds."""
        with self.db.engine.connect() as conn:
            out = {
                "persons": conn.execute(
                    sa.select(sa.func.count()).select_from(persons)
                ).scalar_one(),
                "review": conn.execute(sa.select(sa.func.count()).select_from(review)).scalar_one(),
            }
            for source, n in conn.execute(
                sa.select(links.c.source, sa.func.count()).group_by(links.c.source)
            ):
                out[f"links:{source}"] = n
        return out


def _only_nhs_number(query: PersonQuery) -> str | None:
    """The NHS number when ``query`` asks for exactly one NHS number and nothing else."""
    # one identifier list first: a demographic search (none) is told without making and
    # comparing a whole PersonQuery
    if len(query.identifiers) != 1 or query != PersonQuery(identifiers=query.identifiers):
        return None
    (alternatives,) = query.identifiers
    if len(alternatives) != 1:
        return None
    return alternatives[0].nhs_number
