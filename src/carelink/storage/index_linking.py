"""The patient index as the linker writes and reads it: a build's or an update's people
swapped in, the linking fields and lookup values of linked records, retired ids'
successors, the index settings (watermarks, cursors, keys), and a source's merge.

``IndexStore`` takes these methods (``IndexLinking``); the request path's reads are in
``index_store``."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.index_rows import FieldsRow, LinkRow, PersonRow, ReviewRow, link_row
from carelink.storage.loop_guard import loop_bounded
from carelink.storage.tables import (
    links,
    person_successors,
    persons,
    record_fields,
    review,
    settings_table,
)


@loop_bounded
class IndexLinking:
    """The index's writes and the linker's reads, on pooled connections (none is on the
    request path)."""

    db: Database

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
            driver: Any = conn.connection.driver_connection
            driver.unbounded = True  # the turn waited for, however long (``storage.answers``)
            try:
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": applying_key(source)}
                )
            finally:
                driver.unbounded = False
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
                out.extend(link_row(tuple(r)) for r in conn.execute(sa.select(links).where(test)))
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
        return [link_row(tuple(r)) for r in rows]

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


def _insert(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, object]], chunk: int = 5000
) -> None:
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        if part:
            conn.execute(table.insert(), part)
