"""A build of the index beside a serving gateway, on SQLite.

The guarantees attacked:

- Staging records never takes the main database file's write lock: a write of
  the gateway's (its audit trail) is never turned away, however many batches
  the build stages meanwhile.
- A rebuild's swap does not drop the old index inside its transaction (the
  drop reads and zeroes every page, a minute at the full test range, every
  gateway write waiting): it sets the old tables aside and empties them after,
  a little at a time. Nothing is left behind: no set-aside table once the build
  ends, even after a build stopped between its swap and the clearing.
- A person the rebuild no longer indexes leaves no byte of their demographics
  in the database file (SQLite's ``secure_delete``, set on every connection).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa

from carelink.federation.build import build_index
from carelink.storage import Database, IndexBuild
from carelink.storage.index_build import GONE, STAGED_COLUMNS
from carelink.storage.tables import links, persons, record_fields, review
from tests.federation.test_build import ListSource, _store
from tests.federation.test_index import _sources


def _staged_rows(n: int) -> list[tuple[object, ...]]:
    row = dict.fromkeys(STAGED_COLUMNS, "x")
    out = []
    for i in range(n):
        row.update(source="gp", local_id=f"p{i}", nhs=None, grp=f"r:gp:p{i}", score=None)
        row.update(patient=b"{}" * 200, part=0)
        out.append(tuple(row[c] for c in STAGED_COLUMNS))
    return out


def test_staging_never_takes_the_main_files_write_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "carelink.db")
    db = Database(path)
    db.migrate()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE probe (n INTEGER)")
    build = IndexBuild(db, batch=250)
    rows = _staged_rows(60_000)  # 240 write transactions on the build's connection
    done = threading.Event()

    def stage() -> None:
        try:
            build.stage(rows)
        finally:
            done.set()

    stager = threading.Thread(target=stage)
    # a writer that waits for nothing: any lock on the main file turns it away
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    refused = written = 0
    said: set[str] = set()
    stager.start()
    try:
        while not done.is_set():
            try:
                writer.execute("BEGIN IMMEDIATE")
                writer.execute("INSERT INTO probe VALUES (1)")
                writer.execute("COMMIT")
                written += 1
            except sqlite3.OperationalError as exc:
                refused += 1
                said.add(str(exc))
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
    finally:
        stager.join()
        writer.close()
        build.close()
        db.dispose()
    assert written > 10, written  # the writer ran while the build staged
    assert refused == 0, f"{refused} of {refused + written} writes turned away: {said}"


def _build(store, by_source) -> object:
    sources = [ListSource(name, records) for name, records in by_source.items()]
    return asyncio.run(build_index(sources, store, writers=1))


def _tables(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _rows_in(db: Database) -> int:
    with db.engine.connect() as conn:
        return sum(
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (persons, links, review, record_fields)
        )


def test_a_rebuild_sets_the_old_index_aside_and_clears_it(tmp_path: Path) -> None:
    store = _store(str(tmp_path / "carelink.db"))
    by, _ = _sources(600, seed=3)
    _build(store, by)
    before = store.counts()
    rows = _rows_in(store.db)
    report = _build(store, by)
    # every row of the old persons, links, reviews and record fields went
    assert report.cleared == rows > 0
    assert "clearing" in report.seconds
    assert not {t for t in _tables(store.db) if GONE in t}
    assert store.counts() == before
    store.close()


def test_a_build_stopped_after_its_swap_leaves_tables_the_next_build_clears(
    tmp_path: Path,
) -> None:
    """The old tables of a build that stopped between its swap and the clearing (a
    killed process) stay in the file until the next build, which clears them too."""
    store = _store(str(tmp_path / "carelink.db"))
    by, _ = _sources(300, seed=5)
    _build(store, by)
    build = IndexBuild(store.db)
    build.swap("2026-12-04T00:00:00Z")  # empty new tables in, the old ones set aside
    build.close()  # no clear_gone: as if the process died here
    aside = {t for t in _tables(store.db) if GONE in t}
    assert len(aside) == 4, aside
    assert store.counts()["persons"] == 0
    report = _build(store, by)
    assert not {t for t in _tables(store.db) if GONE in t}
    assert report.cleared > 0
    assert store.counts()["persons"] == report.persons > 0
    store.close()


def test_a_person_the_rebuild_drops_leaves_no_trace_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "carelink.db"
    store = _store(str(path))
    by, _ = _sources(400, seed=9)
    marked = "Quixotewhelkian"
    gp = list(by["gp"])
    first = gp[0]
    gp[0] = replace(
        first,
        family=marked,
        patient={**first.patient, "name": [{"family": marked, "given": [first.given]}]},
    )
    _build(store, {**by, "gp": gp})

    def in_file() -> bool:
        with store.db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        data = path.read_bytes() + (
            Path(f"{path}-wal").read_bytes() if Path(f"{path}-wal").exists() else b""
        )
        return marked.encode() in data or marked.lower().encode() in data

    assert in_file()  # the check can see the name where it is
    _build(store, {**by, "gp": gp[1:]})
    assert not in_file()
    store.close()
