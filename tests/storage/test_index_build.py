"""The build's tables: loaded without keys on SQLite, keyed and checked at the swap.

Invariants attacked here: whatever the load order, the live index a swap leaves has one
row per key (a second person with the same id is refused, as with a declared key); no link
names a person the build did not make (such a build fails and the live index stays as it
was). That the build's connection is not given back to the pool changed is
tests/storage/test_pool_hygiene.py's.
"""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
import sqlalchemy as sa

from carelink.errors import IndexError_
from carelink.storage import Database, LinkRow, PersonRow
from carelink.storage.index_build import IndexBuild
from carelink.storage.tables import links, persons

#: how a refused build ends: our check on SQLite, the database's own key check on PostgreSQL
REFUSED = (IndexError_, sa.exc.IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)


def _person(pid: str) -> PersonRow:
    return PersonRow(pid, None, "Ng", "Ann", "ng", "ann", "1990-01-01", "female", None, b"{}", "v")


def _link(local: str, person: str) -> LinkRow:
    return LinkRow("gp", local, person, f"gp-{local}", "unmatched", None, b"{}")


def _built(db: Database, people: list[PersonRow], link_rows: list[LinkRow]) -> None:
    build = IndexBuild(db)
    try:
        build.load("persons", people)
        build.load("person_links", link_rows)
        build.swap()
    finally:
        build.close()


def _count(db: Database, table: sa.Table) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_link_to_a_person_not_built_fails_the_build_and_the_live_index_stays(database_url):
    db = Database(database_url)
    db.migrate()
    _built(db, [_person("p1"), _person("p2")], [_link("1", "p1"), _link("2", "p2")])
    with pytest.raises(REFUSED):
        _built(db, [_person("p3")], [_link("3", "p3"), _link("4", "nobody")])
    assert (_count(db, persons), _count(db, links)) == (2, 2)
    with db.engine.connect() as conn:
        ids = {r[0] for r in conn.execute(sa.select(persons.c.id))}
    assert ids == {"p1", "p2"}
    db.dispose()


def test_the_live_tables_refuse_a_second_row_with_the_same_key_after_a_build(database_url):
    db = Database(database_url)
    db.migrate()
    _built(db, [_person("p1")], [_link("1", "p1")])
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(sa.insert(persons).values(**vars(_person("p1"))))
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(sa.insert(links).values(**{**vars(_link("1", "p1")), "patient_id": "x"}))
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:  # checked again
        conn.execute(sa.insert(links).values(**vars(_link("9", "nobody"))))
    db.dispose()


def test_a_build_with_two_rows_of_one_key_fails_and_the_live_index_stays(database_url):
    db = Database(database_url)
    db.migrate()
    _built(db, [_person("p1")], [_link("1", "p1")])
    with pytest.raises(REFUSED):
        _built(db, [_person("p2"), _person("p2")], [_link("2", "p2")])
    assert (_count(db, persons), _count(db, links)) == (1, 1)
    db.dispose()


def test_on_postgresql_the_swapped_in_index_is_vacuumed_before_anyone_reads_it(postgres_url):
    """Every page of the new tables is all-visible at the swap (hint bits and the
    visibility map set by the build's VACUUM): the gateway's first reads dirty no page and
    autovacuum has no walk over the new index to make while it serves."""
    db = Database(postgres_url)
    db.migrate()
    people = [_person(f"p{i:05}") for i in range(3000)]
    _built(db, people, [_link(str(i), p.id) for i, p in enumerate(people)])
    with db.engine.connect() as conn:
        pages = {
            name: (relpages, visible)
            for name, relpages, visible in conn.execute(
                sa.text(
                    "SELECT relname, relpages, relallvisible FROM pg_class "
                    "WHERE relname IN ('persons', 'person_links') "
                    "AND relnamespace = to_regnamespace(current_schema())"
                )
            )
        }
    db.dispose()
    assert set(pages) == {"persons", "person_links"}
    for name, (relpages, visible) in pages.items():
        assert relpages > 0, name
        assert visible == relpages, (name, relpages, visible)
