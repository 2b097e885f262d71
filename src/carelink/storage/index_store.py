"""Persistence of the patient index: persons, their links to sources, the review list."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.hot import HotConnection
from carelink.storage.loop_guard import bounds_itself, loop_bounded
from carelink.storage.person_query import PersonQuery, seekable_sql
from carelink.storage.tables import (
    links,
    person_successors,
    persons,
    record_fields,
    review,
    settings_table,
)


@dataclass(frozen=True)
class PersonRow:
    """One person in the index; ``patient`` is the merged Patient as JSON bytes."""

    id: str
    nhs_number: str | None
    family: str
    given: str
    family_folded: str
    given_folded: str
    birth_date: str | None
    gender: str | None
    postcode: str | None
    patient: bytes
    version: str


@dataclass(frozen=True)
class LinkRow:
    """A person's record at one source; ``patient`` is that source's Patient as JSON bytes."""

    source: str
    local_id: str
    person_id: str
    patient_id: str
    method: str  # "nhs-number" | "demographic" | "unmatched"
    score: float | None
    patient: bytes


@dataclass(frozen=True)
class ReviewRow:
    """A near miss: a record scored between the review and match thresholds."""

    source: str
    local_id: str
    candidate_id: str | None
    score: float
    explanation: str
    demographics: str


@dataclass(frozen=True)
class FieldsRow:
    """A linked record's linking fields and the values it is looked up by (``record_fields``)."""

    source: str
    local_id: str
    nhs: str | None  # the valid NHS number, if any
    given: str
    family: str
    birth_date: str | None
    gender: str | None
    postcode: str | None
    day: str
    names_ym: str
    pc: str


_PERSON_COLUMNS = ", ".join(c.name for c in persons.c)
_LINK_COLUMNS = ", ".join(c.name for c in links.c)
_PERSON_COLUMNS_OF_P = ", ".join(f"p.{c.name}" for c in persons.c)


@loop_bounded
class IndexStore:
    """Reads and writes of the patient index tables.

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

    def _query(self, sql: str, value: str) -> list[tuple[Any, ...]]:
        return self._hot.query(sql, (value,))

    @bounds_itself
    def close(self) -> None:
        """Release the lookup connection."""
        self._hot.close()

    def secret(self, name: str = "person-id-key") -> bytes:
        """A random key kept in the database (made on first use), e.g. for person ids."""
        with self.db.engine.begin() as conn:
            row = conn.execute(
                sa.select(settings_table.c.value).where(settings_table.c.key == name)
            ).first()
            if row is not None:
                return bytes.fromhex(row[0])
            value = secrets.token_bytes(32)
            conn.execute(settings_table.insert().values(key=name, value=value.hex()))
            return value

    def setting(self, name: str) -> str | None:
        """A stored index setting (e.g. a source's change watermark), or None."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(settings_table.c.value).where(settings_table.c.key == name)
            ).first()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        """Store an index setting, replacing any earlier value."""
        with self.db.engine.begin() as conn:
            conn.execute(settings_table.delete().where(settings_table.c.key == name))
            conn.execute(settings_table.insert().values(key=name, value=value))

    @contextmanager
    def applying(self, source: str) -> Iterator[None]:
        """Held while one source's changes are listed from its cursor or watermark,
        applied, and the mark moved: on PostgreSQL a transaction-scoped advisory lock per
        source, so two processes never apply one source's changes at once (nor an older
        listing after a newer one); the other waits its turn, however long the first
        takes. SQLite takes one writer at a time already, and holds nothing here."""
        if self.db.is_sqlite:
            yield
            return
        with self.db.engine.connect() as conn, conn.begin():
            conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": applying_key(source)})
            yield

    def replace_all(
        self,
        people: Iterable[PersonRow],
        person_links: Iterable[LinkRow],
        reviews: Iterable[ReviewRow],
    ) -> None:
        """Swap the whole index in one transaction (readers see old or new, never half)."""
        with self.db.engine.begin() as conn:
            conn.execute(review.delete())
            conn.execute(record_fields.delete())  # filled again by the next update
            conn.execute(links.delete())
            conn.execute(persons.delete())
            _insert(conn, persons, [vars(p) for p in people])
            _insert(conn, links, [vars(link) for link in person_links])
            _insert(conn, review, [vars(r) for r in reviews])

    def replace_people(
        self,
        person_ids: Sequence[str],
        people: Sequence[PersonRow],
        person_links: Sequence[LinkRow],
        reviews: Sequence[ReviewRow],
        records: Sequence[tuple[str, str]],
        fields: Sequence[FieldsRow] = (),
        successors: Sequence[tuple[str, str]] = (),
        at: str = "",
    ) -> None:
        """Replace some people in one transaction: ``person_ids`` (and their links) go,
        ``people`` and ``person_links`` come; review entries and linking fields of
        ``records`` are replaced by ``reviews`` and ``fields``. ``successors``: (retired
        id, successor id) of the ids that went, recorded as of ``at``; an id that comes
        back is no longer retired."""
        with self.db.engine.begin() as conn:
            for table in (review, record_fields):
                for test in _records_in(table, records):
                    conn.execute(table.delete().where(test))
            back = [p.id for p in people]
            for i in range(0, len(back), 500):
                conn.execute(
                    person_successors.delete().where(
                        person_successors.c.retired_id.in_(back[i : i + 500])
                    )
                )
            for i in range(0, len(person_ids), 500):
                part_ids = person_ids[i : i + 500]
                conn.execute(links.delete().where(links.c.person_id.in_(part_ids)))
                conn.execute(persons.delete().where(persons.c.id.in_(part_ids)))
            _insert(conn, persons, [vars(p) for p in people])
            _insert(conn, links, [vars(link) for link in person_links])
            _insert(conn, review, [vars(r) for r in reviews])
            _insert(conn, record_fields, [vars(f) for f in fields])
            _insert(
                conn,
                person_successors,
                [{"retired_id": r, "successor_id": s, "retired_at": at} for r, s in successors],
            )

    def near_any(self, values: Iterable[str]) -> list[FieldsRow]:
        """Linked records sharing a lookup value with some record (a superset of those it
        could share a blocking key with). Each value is tagged by its column: ``d`` day,
        ``n`` names and year-month, ``p`` postcode (``"d1950:0304"``)."""
        out: dict[tuple[str, str], FieldsRow] = {}
        with self.db.engine.connect() as conn:
            for _, column, found in _by_column(values):
                for i in range(0, len(found), 500):
                    test = column.in_(found[i : i + 500])
                    for r in conn.execute(sa.select(record_fields).where(test)):
                        out[(r[0], r[1])] = FieldsRow(*r)
        return list(out.values())

    def value_counts(self, values: Iterable[str]) -> dict[str, int]:
        """How many linked records hold each lookup value (tagged as for ``near_any``),
        counted through the columns' indexes; values nobody holds are left out."""
        out: dict[str, int] = {}
        with self.db.engine.connect() as conn:
            for tag, col, found in _by_column(values):
                for i in range(0, len(found), 500):
                    test = col.in_(found[i : i + 500])
                    query = sa.select(col, sa.func.count()).where(test).group_by(col)
                    for value, n in conn.execute(query):
                        out[tag + value] = int(n)
        return out

    def people_by_nhs(self, numbers: Sequence[str]) -> dict[str, str]:
        """NHS number -> person id, of the people holding any of ``numbers``."""
        out: dict[str, str] = {}
        with self.db.engine.connect() as conn:
            for i in range(0, len(numbers), 500):
                test = persons.c.nhs_number.in_(numbers[i : i + 500])
                for nhs, pid in conn.execute(
                    sa.select(persons.c.nhs_number, persons.c.id).where(test)
                ):
                    out[nhs] = pid
        return out

    def owners(self, records: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(source, local id) -> person id, of the linked ones among ``records``."""
        out: dict[tuple[str, str], str] = {}
        c = links.c
        with self.db.engine.connect() as conn:
            for test in _records_in(links, records):
                for source, local, pid in conn.execute(
                    sa.select(c.source, c.local_id, c.person_id).where(test)
                ):
                    out[(source, local)] = pid
        return out

    def links_of_people(self, person_ids: Sequence[str]) -> list[LinkRow]:
        """Every link of any of ``person_ids``."""
        out: list[LinkRow] = []
        with self.db.engine.connect() as conn:
            for i in range(0, len(person_ids), 500):
                test = links.c.person_id.in_(person_ids[i : i + 500])
                out.extend(_link(tuple(r)) for r in conn.execute(sa.select(links).where(test)))
        return out

    def fields_missing(self) -> bool:
        """Does the index link records whose linking fields are not kept (an index built
        before migration 11)?"""
        with self.db.engine.connect() as conn:
            has_links = conn.execute(sa.select(links.c.source).limit(1)).first() is not None
            has_fields = conn.execute(sa.select(record_fields.c.source).limit(1)).first()
        return has_links and has_fields is None

    def add_fields(self, rows: Sequence[FieldsRow]) -> None:
        """Keep linking fields (replacing those of the same records)."""
        with self.db.engine.begin() as conn:
            for test in _records_in(record_fields, [(r.source, r.local_id) for r in rows]):
                conn.execute(record_fields.delete().where(test))
            _insert(conn, record_fields, [vars(r) for r in rows])

    def links_after(self, after: tuple[str, str] = ("", ""), batch: int = 1000) -> list[LinkRow]:
        """Up to ``batch`` links after ``after`` in (source, local id) order: one step of a
        walk over every link."""
        c = links.c
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(links)
                .where(sa.tuple_(c.source, c.local_id) > after)
                .order_by(c.source, c.local_id)
                .limit(batch)
            ).all()
        return [_link(tuple(r)) for r in rows]

    def successors(self, retired_id: str) -> list[str]:
        """The live people a retired person id's records went to, following later
        retirements (empty when the id was never retired, or went nowhere)."""
        out: list[str] = []
        seen = {retired_id}
        todo = [retired_id]
        with self.db.engine.connect() as conn:
            while todo:
                pid = todo.pop()
                rows = conn.execute(
                    sa.select(person_successors.c.successor_id)
                    .where(person_successors.c.retired_id == pid)
                    .order_by(person_successors.c.successor_id)
                ).all()
                for (nxt,) in rows:
                    if nxt in seen:
                        continue
                    seen.add(nxt)
                    live = conn.execute(sa.select(persons.c.id).where(persons.c.id == nxt)).first()
                    if live is not None:
                        out.append(nxt)
                    else:
                        todo.append(nxt)
        return sorted(out)

    def alike(
        self, birth_dates: Sequence[str], postcode: str | None, family_folded: str
    ) -> set[str]:
        """Ids of people born on one of ``birth_dates``, or living at ``postcode`` with
        this folded surname (candidates for a record without an NHS number)."""
        test: sa.ColumnElement[bool] = persons.c.birth_date.in_(list(birth_dates))
        if postcode:
            test = sa.or_(
                test,
                sa.and_(persons.c.postcode == postcode, persons.c.family_folded == family_folded),
            )
        with self.db.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(persons.c.id).where(test))}

    @bounds_itself
    def person_by_nhs(self, nhs_number: str) -> PersonRow | None:
        """The person with this NHS number."""
        rows = self._query(self._sql_by_nhs, nhs_number)
        return _person(rows[0]) if rows else None

    @bounds_itself
    def person_by_nhs_with_consents(
        self, nhs_number: str
    ) -> tuple[PersonRow, list[tuple[str, bytes]]] | None:
        """The person with this NHS number and (id, body) of their active consents, in
        one read (what ``person_by_nhs`` and ``ConsentStore.active`` give, together)."""
        rows = self._query(self._sql_by_nhs_consents, nhs_number)
        return _with_consents(rows, self._sort_consents)

    @bounds_itself
    def person_with_consents(
        self, person_id: str
    ) -> tuple[PersonRow, list[tuple[str, bytes]]] | None:
        """The person with this gateway id and (id, body) of their active consents, in one
        read (what ``person`` and ``ConsentStore.active`` give, together)."""
        rows = self._query(self._sql_by_id_consents, person_id)
        return _with_consents(rows, self._sort_consents)

    @bounds_itself
    def person(self, person_id: str) -> PersonRow | None:
        """The person with this gateway id."""
        rows = self._query(self._sql_by_id, person_id)
        return _person(rows[0]) if rows else None

    @bounds_itself
    def person_and_links(self, person_id: str) -> tuple[PersonRow, list[LinkRow]] | None:
        """A person and every source link."""
        person = self.person(person_id)
        if person is None:
            return None
        return person, self.links_of(person_id)

    @bounds_itself
    def links_of(self, person_id: str) -> list[LinkRow]:
        """Every source link of a person, through the lookup connection (the hot path)."""
        return [_link(r) for r in self._query(self._sql_links, person_id)]

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
        return [_person(r) for r in self._search(sql, values)]

    def find_with_consents(
        self, query: PersonQuery, *, after: str = "", limit: int = 500
    ) -> tuple[list[PersonRow], dict[str, list[tuple[str, bytes]]]]:
        """``find``, and (id, body) of the active consents of each person found who has
        any, in one statement (what ``find`` and ``ConsentStore.active_of`` give, together,
        from one snapshot): a search's page and what consent needs to decide on it, in one
        round trip to the database instead of two."""
        nhs = _only_nhs_number(query)
        if nhs is not None:
            found = self.person_by_nhs_with_consents(nhs)
            if found is None or found[0].id <= after or limit <= 0:
                return [], {}
            return [found[0]], {found[0].id: found[1]} if found[1] else {}
        sql, values = self._find_sql(query, after, limit)
        joined = (
            f"SELECT {_PERSON_COLUMNS_OF_P}, c.id, c.body FROM ({sql}) p "  # noqa: S608 - our SQL
            "LEFT JOIN consents c ON c.patient_id = p.id AND c.status = 'active' "
            "ORDER BY p.id, c.id"
        )
        rows: list[PersonRow] = []
        held: dict[str, list[tuple[str, bytes]]] = {}
        width = len(persons.c)
        for r in self._search(joined, values):
            if not rows or rows[-1].id != r[0]:
                rows.append(_person(r[:width]))
            if r[width] is not None:
                held.setdefault(r[0], []).append((str(r[width]), bytes(r[width + 1])))
        return rows, held

    def _find_sql(self, query: PersonQuery, after: str, limit: int) -> tuple[str, list[Any]]:
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

    def plan(self, query: PersonQuery) -> tuple[str, ...]:
        """How the database would read ``find(query)``'s first page: for each read of a
        table, ``index:<name>`` (a search in that index) or ``scan:<table>`` (every row,
        or every entry of an index walked whole). The SQLite plan comes from
        ``EXPLAIN QUERY PLAN``, PostgreSQL's from ``EXPLAIN (FORMAT JSON)``."""
        sql, values = self._find_sql(query, "", 500)
        if self.db.is_sqlite:
            return tuple(
                access
                for row in self._search(f"EXPLAIN QUERY PLAN {sql}", values)
                if (access := _sqlite_access(str(row[3]))) is not None
            )
        (document,) = self._search(f"EXPLAIN (FORMAT JSON) {sql}", values)[0]
        found = document if isinstance(document, list) else json.loads(document)
        return tuple(_postgres_access(found[0]["Plan"]))

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


def applying_key(source: str) -> int:
    """The advisory lock key of applying ``source``'s changes (a signed 64-bit integer)."""
    digest = hashlib.blake2b(f"carelink:applying:{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def repoint_link(
    conn: sa.Connection, source: str, retired: str, survivor: str, survivor_patient_id: str
) -> None:
    """Apply a source's merge of two of its local records to the index, inside the
    caller's transaction: the retired local id's link goes, and when the surviving id
    has no link yet, the retired one's person takes it over (as ``survivor_patient_id``).
    A person whose only link was the retired one keeps their row (the next build
    drops it)."""
    old = links.c
    row = conn.execute(
        sa.select(old.person_id).where(old.source == source, old.local_id == retired)
    ).first()
    if row is None:
        return
    has_survivor = conn.execute(
        sa.select(old.local_id).where(old.source == source, old.local_id == survivor)
    ).first()
    where = (old.source == source) & (old.local_id == retired)
    kept = (record_fields.c.source == source) & (record_fields.c.local_id == retired)
    if has_survivor is not None:
        conn.execute(links.delete().where(where))
        conn.execute(record_fields.delete().where(kept))
    else:
        conn.execute(
            links.update().where(where).values(local_id=survivor, patient_id=survivor_patient_id)
        )
        conn.execute(record_fields.update().where(kept).values(local_id=survivor))


def _only_nhs_number(query: PersonQuery) -> str | None:
    """The NHS number when ``query`` asks for exactly one NHS number and nothing else."""
    if query != PersonQuery(identifiers=query.identifiers) or len(query.identifiers) != 1:
        return None
    (alternatives,) = query.identifiers
    if len(alternatives) != 1:
        return None
    return alternatives[0].nhs_number


_SQLITE_READ = re.compile(r"(SCAN|SEARCH) (\w+)(?: USING (?:COVERING )?INDEX (\w+)(?: \((.*)\))?)?")


def _sqlite_access(detail: str) -> str | None:
    """One line of SQLite's query plan as ``index:<name>`` or ``scan:<table>`` (None for
    lines that read no table: sorts, unions, subquery headers, rowid seeks)."""
    found = _SQLITE_READ.match(detail)
    if found is None:
        return None
    kind, table, index, test = found.groups()
    if kind == "SEARCH" and test != "id>?":  # only the keyset's id > '': every row in id order
        return f"index:{index}" if index else None  # no index: by rowid or primary key
    return f"scan:{table}"


def _postgres_access(node: dict[str, Any]) -> Iterator[str]:
    """PostgreSQL's plan tree as ``index:<name>`` or ``scan:<table>`` per table read (an
    index walked without a condition is a scan)."""
    kind = node["Node Type"]
    if kind == "Seq Scan":
        yield f"scan:{node['Relation Name']}"
    elif "Index Name" in node:
        test = node.get("Index Cond", "")
        # none, or only the keyset's id > '': every row in id order
        walked = not test or re.fullmatch(r"\(id > '[^']*'::\w+( varying)?\)", test)
        yield f"{'scan' if walked else 'index'}:{node['Index Name']}"
    for child in node.get("Plans", ()):
        yield from _postgres_access(child)


def _records_in(
    table: sa.Table, records: Iterable[tuple[str, str]], chunk: int = 500
) -> Iterator[sa.ColumnElement[bool]]:
    """Conditions that together select the rows of ``records`` ((source, local id) pairs),
    each one source and up to ``chunk`` local ids: read through the (source, local id)
    key. A list of pairs (``(source, local_id) IN (VALUES ...)``) is not: SQLite scans
    the whole table for it (1.8 s for 500 records at the full range)."""
    by: dict[str, list[str]] = {}
    for source, local in records:
        by.setdefault(source, []).append(local)
    for source, locals_ in sorted(by.items()):
        for i in range(0, len(locals_), chunk):
            yield sa.and_(table.c.source == source, table.c.local_id.in_(locals_[i : i + chunk]))


def _by_column(values: Iterable[str]) -> list[tuple[str, sa.Column[Any], list[str]]]:
    """Lookup values tagged by their column (``IndexStore.near_any``): per column, its
    tag, the column and its values, sorted."""
    f = record_fields.c
    wanted: dict[str, list[str]] = {"d": [], "n": [], "p": []}
    for v in values:
        wanted[v[0]].append(v[1:])
    columns = {"d": f.day, "n": f.names_ym, "p": f.pc}
    return [(tag, columns[tag], sorted(found)) for tag, found in wanted.items()]


def _with_consents(
    rows: Sequence[tuple[Any, ...]], sort: bool = False
) -> tuple[PersonRow, list[tuple[str, bytes]]] | None:
    """A person read with their active consents (one row per consent, or one without),
    the consents in id order (``sort``: put in it here; else read in it)."""
    if not rows:
        return None
    width = len(persons.c)
    consents = [(str(r[width]), bytes(r[width + 1])) for r in rows if r[width] is not None]
    if sort and len(consents) > 1:
        consents.sort(key=_first)  # ids are unique: the bodies are never compared
    return _person(rows[0][:width]), consents


def _first(consent: tuple[str, bytes]) -> str:
    return consent[0]


R = TypeVar("R")
_PERSON_FIELDS = tuple(f.name for f in fields(PersonRow))
_LINK_FIELDS = tuple(f.name for f in fields(LinkRow))


def _row(cls: type[R], names: tuple[str, ...], values: list[Any]) -> R:
    """``cls(*values)`` for a frozen dataclass without fields of its own making: its
    attributes set in one step. A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, and the request path makes a row per person and link it
    reads (the equal row: ``tests/storage/test_index_store.py``)."""
    row = object.__new__(cls)
    row.__dict__.update(zip(names, values, strict=True))
    return row


def _person(row: tuple[Any, ...]) -> PersonRow:
    """A ``PersonRow`` of a row of ``persons``, as ``PersonRow(*row)`` makes it, its
    fields set in one step: a frozen dataclass's ``__init__`` sets its eleven fields one
    by one through ``object.__setattr__``, more than twice the time of this."""
    values = list(row)
    values[9] = bytes(values[9])  # sqlite3 and psycopg give bytes / memoryview
    return _row(PersonRow, _PERSON_FIELDS, values)


def _link(row: tuple[Any, ...]) -> LinkRow:
    values = list(row)
    values[6] = bytes(values[6])
    return _row(LinkRow, _LINK_FIELDS, values)


def _insert(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, object]], chunk: int = 5000
) -> None:
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        if part:
            conn.execute(table.insert(), part)
