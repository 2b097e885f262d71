"""Reads and deletes of records named by (source, local id) go through the key.

Invariant attacked: with many records stored, no read or delete of a few named records
(``owners``, ``replace_people``, ``add_fields``) scans a whole table, on SQLite and on
PostgreSQL (with the statistics a build leaves); and they act on exactly the records
named, across sources, whatever their number (more than one chunk). Before, SQLite was
asked for a list of pairs and read every link to find 500 (1.8 s at the full range).
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from carelink.storage import FieldsRow, IndexStore, LinkRow, ReviewRow
from tests.support.people import person_row

SOURCES = ("acute", "gp", "social-care")
KEYED = ("person_links", "record_fields", "match_review")


@pytest.fixture
def store(index_store: IndexStore) -> IndexStore:
    return index_store


def _link(source: str, i: int) -> LinkRow:
    return LinkRow(
        source, f"L{i:06d}", f"p{i:06d}", f"{source}-L{i:06d}", "nhs-number", None, b"{}"
    )


def _review(source: str, i: int) -> ReviewRow:
    return ReviewRow(source, f"L{i:06d}", f"p{i + 1:06d}", 0.8, "names", "{}")


def _fields(source: str, i: int) -> FieldsRow:
    return FieldsRow(
        source, f"L{i:06d}", None, "Ada", "Ng", "1950-01-01", None, None, "d1", "n1", "p1"
    )


def _stored(store: IndexStore, n: int) -> None:
    people = [person_row(f"p{i:06d}") for i in range(n)]
    every = [(s, i) for s in SOURCES for i in range(n)]
    store.replace_all(people, [_link(*k) for k in every], [_review(*k) for k in every])
    store.add_fields([_fields(s, i) for s in SOURCES for i in range(n)])
    if not store.db.is_sqlite:
        with store.db.engine.begin() as conn:
            for table in KEYED:
                conn.exec_driver_sql(f"ANALYZE {table}")


def _scans(store: IndexStore, statements: list[tuple[str, object]]) -> list[str]:
    """The keyed tables read whole by any of ``statements`` (by each database's plan)."""
    out = []
    with store.db.engine.connect() as conn:
        for sql, params in statements:
            if store.db.is_sqlite:
                plan = " ".join(
                    str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
                )
                out += [t for t in KEYED if re.search(rf"\bSCAN {t}\b(?! USING)", plan)]
            else:
                plan = " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
                out += [t for t in KEYED if re.search(rf"Seq Scan on {t}\b", plan)]
    return out


def _recorded(store: IndexStore) -> tuple[list[tuple[str, object]], object]:
    seen: list[tuple[str, object]] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if not executemany and any(t in statement for t in KEYED):
            seen.append((statement.replace("DELETE FROM", "SELECT * FROM"), parameters))

    sa.event.listen(store.db.engine, "before_cursor_execute", note)
    return seen, note


def test_records_named_by_key_are_read_and_deleted_through_the_key(store):
    _stored(store, 4000)
    named = [(s, f"L{i:06d}") for s in SOURCES for i in range(0, 4000, 3)]  # > one chunk
    seen, note = _recorded(store)
    try:
        owners = store.owners(named)
        store.add_fields([_fields("gp", i) for i in range(0, 4000, 7)])
        store.replace_people(["p000001"], [], [], [], [("gp", "L000001"), ("acute", "L000002")])
    finally:
        sa.event.remove(store.db.engine, "before_cursor_execute", note)
    assert owners == {(s, local): "p" + local[1:] for s, local in named}
    assert seen
    assert _scans(store, seen) == []


def test_deleting_records_by_key_deletes_those_and_no_other(store):
    _stored(store, 1200)
    gone = [("gp", f"L{i:06d}") for i in range(0, 1200, 2)] + [("acute", "L000003")]
    store.replace_people([], [], [], [], gone)
    with store.db.engine.connect() as conn:
        left = set(conn.exec_driver_sql("SELECT source, local_id FROM record_fields").all())
    every = {(s, f"L{i:06d}") for s in SOURCES for i in range(1200)}
    assert left == every - set(gone)
