"""A new patient index built beside the live one and swapped in at once.

``IndexBuild`` stages every source record in a table of its own
(``index_staging``), fills new tables (``persons_build``,
``person_links_build``, ``match_review_build``, ``record_fields_build``) by bulk
loading (PostgreSQL ``COPY``, batched ``executemany`` on SQLite), makes their indexes once the
rows are in, then, in one transaction, drops the old tables and renames the
new ones into their place: readers see the old index or the new, never half.

Nothing here holds more than one batch of rows: the build reads the staged
records back as a stream.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import sqlalchemy as sa

from carelink.errors import IndexError_
from carelink.storage.database import Database
from carelink.storage.tables import (
    BIRTH_DATE_LENGTH,
    GENDER_LENGTH,
    LOCAL_ID_LENGTH,
    NAME_LENGTH,
    POSTCODE_LENGTH,
    SOURCE_LENGTH,
    links,
    persons,
    record_fields,
    review,
)

STAGING = "index_staging"
#: the scratch table of the records the live index linked when the build began
#: (``IndexBuild.remember_live``)
LIVE_BEFORE = "index_live_before"
#: the staged record's columns, in the order ``stage`` takes them
STAGED_COLUMNS = (
    "source",
    "local_id",
    "nhs",
    "grp",
    "method",
    "score",
    "given",
    "family",
    "birth_date",
    "gender",
    "postcode",
    "patient",
    "part",
)
_LIVE = (persons, links, review, record_fields)
#: a live table a SQLite swap set aside is named ``{table}{GONE}{token}`` until it is cleared
GONE = "_gone_"
#: rows deleted to a write transaction when clearing one (``IndexBuild.clear_gone``): at
#: the full test range a rebuild cleared 4.0 million rows so in 22.7-31.2 s, no write of the
#: gateway's waiting as long as an index's making (benchmarks/README.md, "The
#: twenty-fifth stop")
GONE_ROWS = 2000
#: (table, name, columns, unique) indexed after the load, named like the live ones;
#: ``{pattern}``: PostgreSQL's pattern operator class (LIKE 'x%' through the index)
_INDEXES = (
    ("persons", "nhs_number", "nhs_number", True),
    ("persons", "birth_family", "birth_date, family_folded", False),
    # PostgreSQL's pattern operators, as tables.py declares them
    ("persons", "family_birth", "family_folded{pattern}, birth_date, given_folded{pattern}", False),
    ("person_links", "person_id", "person_id", False),
    ("person_links", "patient_id", "patient_id", True),
    ("person_links", "local_id", "local_id", False),
    ("record_fields", "day", "day", False),
    ("record_fields", "names_ym", "names_ym", False),
    ("record_fields", "pc", "pc", False),
)


def _copy_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type a column's values take in a binary ``COPY``."""
    kind = column.type
    if isinstance(kind, sa.LargeBinary):
        return "bytea"
    if isinstance(kind, sa.Boolean):
        return "bool"
    if isinstance(kind, sa.Float):
        return "float8"
    if isinstance(kind, sa.Integer):
        return "int4"
    if isinstance(kind, sa.String):  # Text too: varchar and text share the binary form
        return "text"
    raise TypeError(f"no binary COPY type for {column.name}: {kind}")


#: the swap's bookkeeping of retired ids (``IndexBuild.swap``), before the live tables go:
#: ids back in the new index are no longer retired ...
_UNRETIRE = (
    "DELETE FROM person_successors WHERE EXISTS "
    "(SELECT 1 FROM persons_build b WHERE b.id = person_successors.retired_id)"
)
#: ... and each id not in it leads to the new people holding its records (a record nobody
#: holds now leads nowhere), as of ``{mark}``
_RETIRE = (
    "INSERT INTO person_successors (retired_id, successor_id, retired_at) "
    "SELECT DISTINCT o.person_id, n.person_id, {mark} FROM person_links o "
    "JOIN person_links_build n ON n.source = o.source AND n.local_id = o.local_id "
    "WHERE NOT EXISTS (SELECT 1 FROM persons_build b WHERE b.id = o.person_id) "
    "AND NOT EXISTS (SELECT 1 FROM person_successors s "
    "WHERE s.retired_id = o.person_id AND s.successor_id = n.person_id)"
)


def _build_name(table: str) -> str:
    return f"{table}_build"


def _new_tables(md: sa.MetaData, sqlite: bool) -> list[sa.Table]:
    """The live tables' columns under build names, with no index but, on PostgreSQL,
    their primary keys. On SQLite a primary key on text columns is an index kept in
    key order row by row: loading 909,091 people in random key order cost 48 s of CPU
    against 19 s for the table alone and the index made afterwards (``_KEYS``, at the
    swap), so the build's tables there have none while they fill."""
    out = []
    for table in _LIVE:
        columns = []
        for c in table.columns:
            fk = [sa.ForeignKey(_build_name("persons") + ".id")] if c.foreign_keys else []
            key = c.primary_key and not sqlite
            columns.append(sa.Column(c.name, c.type, *fk, primary_key=key, nullable=c.nullable))
        out.append(sa.Table(_build_name(table.name), md, *columns))
    return out


#: (table, its primary key's columns): on SQLite the unique index that stands for the
#: key, made at the swap once the rows are in
_KEYS = tuple((t.name, ", ".join(c.name for c in t.primary_key.columns)) for t in _LIVE)


def _staging_table(md: sa.MetaData, sqlite: bool) -> sa.Table:
    """The staging table: scratch that a crash may lose, as the next build remakes it, so
    on PostgreSQL it is UNLOGGED (no write-ahead log for every record's Patient: half
    the server's work in a full-range build). On SQLite it lives in a scratch file of
    its own (``staging_file``) with neither journal nor sync."""
    return sa.Table(
        STAGING,
        md,
        sa.Column("source", sa.String(SOURCE_LENGTH), primary_key=True),
        sa.Column("local_id", sa.String(LOCAL_ID_LENGTH), primary_key=True),
        sa.Column("nhs", sa.String(10), nullable=True),
        sa.Column("grp", sa.String(200), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("given", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("family", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("birth_date", sa.String(BIRTH_DATE_LENGTH), nullable=True),
        sa.Column("gender", sa.String(GENDER_LENGTH), nullable=True),
        sa.Column("postcode", sa.String(POSTCODE_LENGTH), nullable=True),
        sa.Column("patient", sa.LargeBinary, nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        schema="staging" if sqlite else None,
        prefixes=[] if sqlite else ["UNLOGGED"],
    )


def staging_file(db: Database) -> str:
    """Where a SQLite build stages its records: a scratch file beside the database (a
    table of every record inside it would leave gigabytes of free pages behind, and
    dropping it costs a walk over all of them), or memory for an in-memory database."""
    where = sa.engine.make_url(db.url).database
    return f"{where}.staging" if where and where != ":memory:" else ":memory:"


class IndexBuild:
    """One build: staging, bulk load into new tables, the swap. Use from one thread.

    Staged records carry a ``part`` (0 .. parts-1, the same for every record of a
    group), so several processes can each write the people of one part: each
    ``attach``es to the build the first one made.
    """

    def __init__(
        self,
        db: Database,
        batch: int = 5000,
        *,
        attach: bool = False,
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        self.db = db
        self.batch = batch
        # held around each SQLite write transaction: processes writing one file take
        # turns at once instead of sleeping in SQLite's busy handler
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.token = secrets.token_hex(4)
        self.attached = attach
        md = sa.MetaData()
        self.staging = _staging_table(md, db.is_sqlite)
        #: the staging table's name in SQL
        self.staged = f"staging.{STAGING}" if db.is_sqlite else STAGING
        self.tables = _new_tables(md, db.is_sqlite)
        #: per table (SQL name) and column, the type its values take in a binary COPY
        self._types = {
            (self.staged if t is self.staging else t.name): {
                c.name: _copy_type(c) for c in t.columns
            }
            for t in (self.staging, *self.tables)
        }
        self._raw: Any = db.engine.raw_connection()
        self._conn: Any = cast(Any, self._raw.driver_connection)  # sqlite3 or psycopg
        sqlite = db.is_sqlite
        if sqlite:
            self._conn.isolation_level = None  # explicit BEGIN/COMMIT, DDL included
            self._file = staging_file(db)
            if not attach:
                _remove(self._file)  # what a crashed build left
            # the build's tables have no key while they fill (``_new_tables``), so nothing
            # can check a link's person then; ``swap`` checks every one once keyed (this
            # connection is never used again: ``close``)
            self._execute("PRAGMA foreign_keys=OFF")
            self._execute("ATTACH DATABASE ? AS staging", (self._file,))
            # scratch: a crash loses nothing the next build does not remake
            self._execute("PRAGMA staging.journal_mode=OFF")
            self._execute("PRAGMA staging.synchronous=OFF")
        else:
            # this session's commits need not wait for the disk: nothing it writes is live
            # until the swap, which waits again (``swap``); its indexes sort in memory
            self._execute("SET synchronous_commit = off")
            self._execute("SET maintenance_work_mem = '256MB'")
            self._conn.commit()
        if attach:
            return
        with db.engine.begin() as conn:
            for t in [*([] if sqlite else [self.staging]), *reversed(self.tables)]:
                t.drop(conn, checkfirst=True)  # what a crashed build left
            for t in self.tables:
                t.create(conn)
        self._execute(str(sa.schema.CreateTable(self.staging).compile(dialect=db.engine.dialect)))
        if not sqlite:
            self._conn.commit()

    def _execute(self, sql: str, values: Sequence[Any] = ()) -> None:
        cur = self._conn.cursor()
        try:
            cur.execute(sql, tuple(values))
        finally:
            cur.close()

    def _rows(self, sql: str, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a read on the build's own connection (its own short transaction)."""
        cur = self._conn.cursor()
        try:
            cur.execute(sql, tuple(values))
            rows = [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()
        if not self.db.is_sqlite:
            self._conn.commit()
        return rows

    # -- writing ------------------------------------------------------------------

    def _load(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        cols = ", ".join(columns)
        cur = self._conn.cursor()
        try:
            if self.db.is_sqlite:
                marks = ", ".join("?" for _ in columns)
                # the staging file only is locked by a deferred BEGIN whose first statement
                # writes there: BEGIN IMMEDIATE takes every attached file's write lock, the
                # main one too, so each batch staged kept the gateway's writes (its audit)
                # waiting (benchmarks/README.md, "The twenty-fifth stop")
                begin = "BEGIN" if table.startswith("staging.") else "BEGIN IMMEDIATE"
                with self.lock:
                    cur.execute(begin)  # another process may be writing too
                    cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)  # noqa: S608
                    cur.execute("COMMIT")
            else:
                # binary: a fourth of the text form's work on both sides (no escaping,
                # no hex for the Patients' bytes)
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                    types = self._types[table]
                    copy.set_types([types[c] for c in columns])
                    for row in rows:
                        copy.write_row(row)
                self._conn.commit()
        finally:
            cur.close()

    def stage(self, rows: Sequence[Sequence[Any]]) -> None:
        """Add source records (values in ``STAGED_COLUMNS`` order)."""
        for i in range(0, len(rows), self.batch):
            self._load(self.staged, STAGED_COLUMNS, rows[i : i + self.batch])

    def regroup(
        self, changes: Sequence[tuple[str, str | None, float | None, int, str, str]]
    ) -> None:
        """Set (grp, method, score, part) of staged records, each named by (source, local id)."""
        mark = "?" if self.db.is_sqlite else "%s"
        sql = (
            f"UPDATE {self.staged} SET grp = {mark}, method = {mark}, score = {mark}, "  # noqa: S608
            f"part = {mark} WHERE source = {mark} AND local_id = {mark}"
        )
        cur = self._conn.cursor()
        try:
            if self.db.is_sqlite:
                cur.execute("BEGIN")
            cur.executemany(sql, list(changes))
            if self.db.is_sqlite:
                cur.execute("COMMIT")
            else:
                self._conn.commit()
        finally:
            cur.close()

    def load(self, table: str, rows: Sequence[Any]) -> None:
        """Bulk load index rows (``PersonRow``, ``LinkRow``, ``ReviewRow`` or ``FieldsRow``)
        into the new ``persons``, ``person_links``, ``match_review`` or ``record_fields``."""
        live = {t.name: t for t in _LIVE}[table]
        columns = [c.name for c in live.columns]
        self._load(_build_name(table), columns, [tuple(vars(r).values()) for r in rows])

    # -- reading back -------------------------------------------------------------

    def linking_fields(self) -> Iterator[tuple[Any, ...]]:
        """(nhs, given, family, birth_date, gender, postcode) of every staged record that
        has a valid NHS number, in no particular order, read in batches."""
        mark = "?" if self.db.is_sqlite else "%s"
        columns = "rowid, nhs, given, family, birth_date, gender, postcode"
        key = "rowid"
        if not self.db.is_sqlite:
            columns, key = (
                "source, local_id, " + columns.removeprefix("rowid, "),
                "(source, local_id)",
            )
        after: tuple[Any, ...] = ()
        while True:
            test = f" AND {key} > ({', '.join(mark for _ in after)})" if after else ""
            rows = self._rows(
                f"SELECT {columns} FROM {self.staged} WHERE nhs IS NOT NULL{test} "  # noqa: S608
                f"ORDER BY {key.strip('()')} LIMIT {self.batch}",
                after,
            )
            width = 1 if self.db.is_sqlite else 2
            for r in rows:
                yield r[width:]
            if len(rows) < self.batch:
                return
            after = rows[-1][:width]

    def with_nhs_numbers(self, numbers: Sequence[str]) -> list[tuple[Any, ...]]:
        """(source, local_id, nhs, given, family, birth_date, gender, postcode) of the
        staged records holding any of ``numbers``: their linking fields only."""
        if numbers:
            name = f"ix_{STAGING}_nhs_{self.token}"
            if self.db.is_sqlite:
                name = f"staging.{name}"
            self._execute(f"CREATE INDEX IF NOT EXISTS {name} ON {STAGING} (nhs)")
        mark = "?" if self.db.is_sqlite else "%s"
        slim = "source, local_id, nhs, given, family, birth_date, gender, postcode"
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(numbers), 500):
            part = list(numbers[i : i + 500])
            out.extend(
                self._rows(
                    f"SELECT {slim} FROM {self.staged} "  # noqa: S608
                    f"WHERE nhs IN ({', '.join(mark for _ in part)})",
                    part,
                )
            )
        return out

    def all_staged(self) -> None:
        """Every record is staged: on PostgreSQL, the planner learns the staging table
        (without statistics it may sort the whole table for each batch the build reads
        back: quadratic in the population)."""
        self._analyse()

    def remember_live(self) -> None:
        """Keep the keys of the records the live index links now, before the sources are
        read (a scratch table beside the staging one, filled in key order): ``unlisted``
        asks only about them. A record an update links while the build reads (a person
        registered after the listing passed them) is not one the listing lacked."""
        sqlite = self.db.is_sqlite
        table = f"staging.{LIVE_BEFORE}" if sqlite else LIVE_BEFORE
        self._execute(f"DROP TABLE IF EXISTS {table}")
        kind = "TABLE" if sqlite else "UNLOGGED TABLE"
        self._execute(
            f"CREATE {kind} {table} (source VARCHAR({SOURCE_LENGTH}) NOT NULL, "
            f"local_id VARCHAR({LOCAL_ID_LENGTH}) NOT NULL, PRIMARY KEY (source, local_id))"
        )
        self._execute(
            f"INSERT INTO {table} (source, local_id) "  # noqa: S608
            "SELECT source, local_id FROM person_links ORDER BY source, local_id"
        )
        if not sqlite:
            self._conn.commit()

    def unlisted(self, source: str, after: str = "", limit: int = 1000) -> list[str]:
        """The local ids of ``source`` the live index linked when the build began
        (``remember_live``) and links still, that no staged record holds, in order,
        ``limit`` after ``after``: the records the listing just read lacked (through the
        tables' keys, nothing held in memory)."""
        mark = "?" if self.db.is_sqlite else "%s"
        before = f"staging.{LIVE_BEFORE}" if self.db.is_sqlite else LIVE_BEFORE
        return [
            str(r[0])
            for r in self._rows(
                f"SELECT b.local_id FROM {before} b WHERE b.source = {mark} "  # noqa: S608
                f"AND b.local_id > {mark} AND NOT EXISTS (SELECT 1 FROM {self.staged} s "
                "WHERE s.source = b.source AND s.local_id = b.local_id) "
                "AND EXISTS (SELECT 1 FROM person_links l "
                "WHERE l.source = b.source AND l.local_id = b.local_id) "
                f"ORDER BY b.local_id LIMIT {int(limit)}",
                (source, after),
            )
        ]

    def _analyse(self) -> None:
        if not self.db.is_sqlite:
            self._execute(f"ANALYZE {STAGING}")
            self._conn.commit()

    def index_groups(self) -> None:
        """Index the staged records by part and group, for ``by_group``."""
        name = f"ix_{STAGING}_grp_{self.token}"
        if self.db.is_sqlite:
            name = f"staging.{name}"
        self._execute(f"CREATE INDEX {name} ON {STAGING} (part, grp, source, local_id)")
        if not self.db.is_sqlite:
            self._conn.commit()
        self._analyse()  # the groups as linking left them

    def by_group(self, part: int = 0) -> Iterator[tuple[Any, ...]]:
        """The staged records of one part (``STAGED_COLUMNS``), ordered by group, source
        and local id (after ``index_groups``). Read in batches, each in a short
        transaction of its own: a read held open for the whole build would keep SQLite
        from checkpointing its write-ahead log while the people are written."""
        mark = "?" if self.db.is_sqlite else "%s"
        select = f"SELECT {', '.join(STAGED_COLUMNS)} FROM {self.staged} WHERE part = {mark}"  # noqa: S608
        order = f" ORDER BY grp, source, local_id LIMIT {self.batch}"
        first = select + order
        rest = f"{select} AND (grp, source, local_id) > ({mark}, {mark}, {mark}){order}"
        after: tuple[Any, ...] = ()
        while True:
            rows = self._rows(rest if after else first, (part, *after))
            yield from rows
            if len(rows) < self.batch:
                return
            last = rows[-1]
            after = (last[3], last[0], last[1])

    # -- the swap -----------------------------------------------------------------

    def swap(self, at: str = "") -> tuple[int, float]:
        """Index the new tables, then put them in place of the live ones in one transaction.

        In the same transaction, each person id that goes (in the live index, not in the
        new one) is recorded with the new people its records went to, as of ``at``
        (``person_successors``, as an update records them), and an id that comes back
        is no longer retired: a client holding an id the old index answered with is
        pointed on. Done in SQL, through the tables' primary keys, so it holds nothing
        in memory whatever the population. Returns how many (retired id, successor)
        pairs were recorded, and the seconds that took."""
        sqlite = self.db.is_sqlite
        cur = self._conn.cursor()
        try:
            if sqlite:
                for table, columns in _KEYS:
                    made = f"ix_{table}_key_{self.token}"
                    began = time.perf_counter()
                    cur.execute(f"CREATE UNIQUE INDEX {made} ON {_build_name(table)} ({columns})")
                    _let_writers_in(began)
                # loaded unchecked (``__init__``): every link's person must be there
                for built in self.tables:
                    if cur.execute(f"PRAGMA foreign_key_check({built.name})").fetchone():
                        raise IndexError_(f"{built.name}: a row refers to a person not built")
            for table, name, columns, unique in _INDEXES:
                kind = "UNIQUE INDEX" if unique else "INDEX"
                made = f"ix_{table}_{name}_{self.token}"
                columns = columns.format(pattern="" if sqlite else " varchar_pattern_ops")
                began = time.perf_counter()
                cur.execute(f"CREATE {kind} {made} ON {_build_name(table)} ({columns})")
                if sqlite:
                    _let_writers_in(began)
            if not sqlite:
                # from here this session waits for the disk: this commit flushes the WAL
                # past every row the build wrote (asynchronously committed until now, and a
                # row whose commit is not on disk cannot be marked visible to all), and the
                # swap is durable before ``swap`` returns, as any commit of the gateway
                cur.execute("SET synchronous_commit = on")
                self._conn.commit()
                # VACUUM (ANALYZE) while nobody reads them: the planner knows the new tables
                # before the first lookup, and their hint bits and visibility map are set,
                # so the gateway's first reads dirty no page and autovacuum has no walk
                # over the new index to make while it serves (~5 s at the full test range;
                # benchmarks/README.md, "The twenty-fifth stop"). Outside a transaction.
                self._conn.autocommit = True
                try:
                    for t in self.tables:
                        cur.execute(f"VACUUM (ANALYZE) {t.name}")
                finally:
                    self._conn.autocommit = False
            if sqlite:
                cur.execute("BEGIN IMMEDIATE")
            started = time.perf_counter()
            cur.execute(_UNRETIRE)
            cur.execute(_RETIRE.format(mark="?" if sqlite else "%s"), (at,))
            pairs, took = max(cur.rowcount, 0), round(time.perf_counter() - started, 2)
            for t in reversed(_LIVE):
                # SQLite: set aside, emptied afterwards a little at a time (``clear_gone``);
                # dropped here, it held the write lock while every page was read and zeroed
                # (secure_delete): 60.5 s at the full test range, every gateway write waiting
                if sqlite:
                    cur.execute(f"ALTER TABLE {t.name} RENAME TO {t.name}{GONE}{self.token}")
                else:
                    cur.execute(f"DROP TABLE {t.name}")
            for t in _LIVE:
                cur.execute(f"ALTER TABLE {_build_name(t.name)} RENAME TO {t.name}")
            if not sqlite:
                # the live names, so the schema reads as if made by the migrations
                for table, name, _, _ in _INDEXES:
                    cur.execute(
                        f"ALTER INDEX ix_{table}_{name}_{self.token} RENAME TO ix_{table}_{name}"
                    )
                for t in _LIVE:
                    cur.execute(f"ALTER INDEX {_build_name(t.name)}_pkey RENAME TO {t.name}_pkey")
            cur.execute("COMMIT") if sqlite else self._conn.commit()
        finally:
            cur.close()
        return pairs, took

    def clear_gone(self, rows: int = GONE_ROWS) -> int:
        """Empty and drop the live tables a SQLite swap set aside (this build's, and any a
        build stopped before clearing left), ``rows`` rows to a write transaction after
        their indexes are dropped one by one, so no gateway write waits long for them.
        Returns how many rows went. A no-op on PostgreSQL, whose swap drops them."""
        if not self.db.is_sqlite:
            return 0
        gone = 0
        # any order: the build's connection does not check foreign keys (``__init__``)
        for (table,) in self._rows(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '!'",
            (f"%{GONE.replace('_', '!_')}%",),
        ):
            for (index,) in self._rows(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND name NOT LIKE 'sqlite_autoindex_%'",
                (table,),
            ):
                self._execute(f'DROP INDEX "{index}"')
            cur = self._conn.cursor()
            try:
                while True:
                    cur.execute("BEGIN IMMEDIATE")
                    cur.execute(
                        f'DELETE FROM "{table}" WHERE rowid IN '  # noqa: S608
                        f'(SELECT rowid FROM "{table}" LIMIT {int(rows)})'
                    )
                    done = max(cur.rowcount, 0)
                    cur.execute("COMMIT")
                    gone += done
                    if done < rows:
                        break
            finally:
                cur.close()
            self._execute(f'DROP TABLE "{table}"')
        return gone

    def close(self) -> None:
        """Drop the staging (on SQLite its file) and build tables a failed build left, and
        disconnect (an attached build only disconnects)."""
        try:
            if self.attached:
                return
            if not self.db.is_sqlite:
                self._conn.rollback()
            with self.db.engine.begin() as conn:
                for t in [*([] if self.db.is_sqlite else [self.staging]), *reversed(self.tables)]:
                    t.drop(conn, checkfirst=True)
                if not self.db.is_sqlite:  # on SQLite it goes with the staging file
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {LIVE_BEFORE}")
        finally:
            # Closed, never given back to the pool: it runs without the driver's
            # transactions and foreign keys on SQLite (the staging file attached), and
            # without waiting for the disk on PostgreSQL; a connection handed out like
            # that would commit a transaction's statements one by one, or not durably.
            with contextlib.suppress(Exception):  # already broken: nothing to release
                self._raw.invalidate()
            if self.db.is_sqlite and not self.attached:
                _remove(self._file)


#: seconds a SQLite build leaves the write lock free after an index making that held it
#: longer than ``HELD_LONG``: a writer waiting meanwhile (the gateway's audit) retries at
#: most every 100 ms in SQLite's busy handler, and with no pause the next index began at
#: once, so one write waited through three (4.54 s at the full test range;
#: benchmarks/README.md, "The twenty-fifth stop"). After a short one a waiting writer has
#: not waited long, and a small build pays no pauses.
WRITERS_IN = 0.15
HELD_LONG = 0.1


def _let_writers_in(began: float) -> None:
    """Pause after a statement begun at ``began`` (``time.perf_counter``) if it held the
    write lock long."""
    if time.perf_counter() - began > HELD_LONG:
        time.sleep(WRITERS_IN)


def _remove(path: str) -> None:
    """Delete a staging file (and what SQLite keeps beside it), if there."""
    if path == ":memory:":
        return
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
