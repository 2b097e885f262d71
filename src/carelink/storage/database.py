"""The database: SQLite by default, PostgreSQL for shared deployments.

One ``Database`` per process, made from a URL in ``create_app`` or the CLI,
never at import time. Schema changes are numbered migrations applied in
order and recorded in ``schema_version``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from carelink.storage.feed_tables import create_feed_tables
from carelink.storage.tables import (
    audit_events,
    audit_lock,
    break_glass,
    client_assertions,
    consent_versions,
    consents,
    export_jobs,
    metadata,
    opt_outs,
    resource_locations,
    result_sets,
)


def _audit_tables(conn: Connection) -> None:
    audit_events.create(conn, checkfirst=True)
    audit_lock.create(conn, checkfirst=True)
    if conn.execute(sa.select(sa.func.count()).select_from(audit_lock)).scalar_one() == 0:
        conn.execute(audit_lock.insert().values(id=1, appends=0))


def _audit_every_column(conn: Connection) -> None:
    """The requesting user as a column, and the hash over every column (chain 2).

    Rows already stored keep their chain-1 hashes (over sequence, previous hash
    and event): rewriting them would launder whatever was done to them before.
    Their ``agent`` stays empty (``AuditEvent?agent=`` does not find them).
    """
    if not sa.inspect(conn).has_table("audit_events"):
        _audit_tables(conn)  # a database whose earlier migrations were applied elsewhere
    have = {c["name"] for c in sa.inspect(conn).get_columns("audit_events")}
    if "agent" not in have:
        conn.execute(sa.text("ALTER TABLE audit_events ADD COLUMN agent VARCHAR(200)"))
    if "chain" not in have:
        conn.execute(
            sa.text("ALTER TABLE audit_events ADD COLUMN chain INTEGER NOT NULL DEFAULT 1")
        )
    for index in audit_events.indexes:
        index.create(conn, checkfirst=True)


def _consent_tables(conn: Connection) -> None:
    consents.create(conn, checkfirst=True)
    break_glass.create(conn, checkfirst=True)


def _export_tables(conn: Connection) -> None:
    opt_outs.create(conn, checkfirst=True)
    export_jobs.create(conn, checkfirst=True)


def _identities_and_history(conn: Connection) -> None:
    """Break-glass grants and reviews bound to full identities; Consent history; export
    jobs bound to the full identity (longer ``client``)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("break_glass")}
    for name, length in (("kind", 20), ("actor", 1000), ("person", 1000)):
        if name not in have:
            conn.execute(sa.text(f"ALTER TABLE break_glass ADD COLUMN {name} VARCHAR({length})"))
    if "reviewer_identity" not in have:
        conn.execute(sa.text("ALTER TABLE break_glass ADD COLUMN reviewer_identity VARCHAR(1000)"))
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("break_glass")}
    if "ix_break_glass_actor" not in indexes:
        conn.execute(sa.text("CREATE INDEX ix_break_glass_actor ON break_glass (actor)"))
    consent_versions.create(conn, checkfirst=True)
    # What was stored before history existed becomes its first known version.
    conn.execute(
        consent_versions.insert().from_select(
            ["id", "version", "patient_id", "status", "last_updated", "body"],
            sa.select(
                consents.c.id,
                consents.c.version,
                consents.c.patient_id,
                consents.c.status,
                consents.c.last_updated,
                consents.c.body,
            ).where(
                ~sa.exists().where(
                    consent_versions.c.id == consents.c.id,
                    consent_versions.c.version == consents.c.version,
                )
            ),
        )
    )
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ALTER TABLE export_jobs ALTER COLUMN client TYPE VARCHAR(1000)"))


#: (number, what it does, the change) — append only
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "patient index tables", lambda conn: metadata.create_all(conn)),
    (
        2,
        "client assertion replay table",
        lambda conn: client_assertions.create(conn, checkfirst=True),
    ),
    (3, "audit trail", _audit_tables),
    (4, "consents and break-glass grants", _consent_tables),
    (5, "opt-outs and export jobs", _export_tables),
    (6, "result sets for paging", lambda conn: result_sets.create(conn, checkfirst=True)),
    (
        7,
        "resource locations",
        lambda conn: resource_locations.create(conn, checkfirst=True),
    ),
    (8, "full identities on grants and jobs; consent history", _identities_and_history),
    (9, "audit trail: agent column, hash over every column", _audit_every_column),
    (10, "HL7 v2 feed messages and the people they are about", create_feed_tables),
]


def normalise_url(url: str) -> str:
    """Accept a plain path for SQLite and ``postgresql://`` for psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    """A SQLAlchemy engine and the migrations that shape its schema."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        kwargs: dict[str, object] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: Engine = sa.create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded default."""
        return self.url.startswith("sqlite")

    def migrate(self) -> int:
        """Apply every migration not yet applied; return the schema version."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                    "description TEXT NOT NULL)"
                )
            )
            done = {row[0] for row in conn.execute(sa.text("SELECT version FROM schema_version"))}
            for number, description, change in MIGRATIONS:
                if number in done:
                    continue
                change(conn)
                conn.execute(
                    sa.text("INSERT INTO schema_version (version, description) VALUES (:v, :d)"),
                    {"v": number, "d": description},
                )
            return int(max([n for n, _, _ in MIGRATIONS] + list(done)))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
