"""The schema's numbered migrations, applied in order by ``Database.migrate`` and recorded
in ``schema_version`` (append only: a migration once released is never changed)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carelink.storage.audit_blocks import index_all
from carelink.storage.feed_tables import create_feed_tables
from carelink.storage.tables import (
    CLAIM_LENGTH,
    audit_events,
    audit_index_blocks,
    audit_lock,
    audit_parts,
    audit_patient_index,
    break_glass,
    client_assertions,
    consent_versions,
    consents,
    export_jobs,
    links,
    metadata,
    opt_outs,
    person_successors,
    persons,
    record_fields,
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


def _linkage_tables(conn: Connection) -> None:
    """Filled by the next build (an index built before has none: the first incremental
    update fills ``record_fields`` from the links, see ``federation.changes``)."""
    record_fields.create(conn, checkfirst=True)
    person_successors.create(conn, checkfirst=True)


def _search_indexes(conn: Connection) -> None:
    if not sa.inspect(conn).has_table("person_links"):
        return  # a database whose index tables are made elsewhere
    # only these: after a SQLite build the older indexes carry the build's names
    new = ("ix_persons_birth_family", "ix_persons_family_birth", "ix_person_links_local_id")
    for index in [*persons.indexes, *links.indexes]:
        if index.name in new:
            index.create(conn, checkfirst=True)


def _name_date_given(conn: Connection) -> None:
    """Drop the persons indexes on ``family_folded`` alone and on ``birth_date`` alone,
    whatever their names (a SQLite build names them with its token): the name-and-date
    indexes of migration 12 begin with each column, so what read one of them reads
    those, and every build and update writes two indexes fewer. ``(family_folded,
    birth_date)`` gains ``given_folded``: a search over a range of dates then tests the
    given name in the index and fetches only the rows that match it."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("persons"):
        return
    old = (["family_folded"], ["birth_date"], ["family_folded", "birth_date"])
    for found in inspector.get_indexes("persons"):
        if found["column_names"] in old and not found["unique"]:
            # a name from the database's own catalogue, quoted
            conn.execute(sa.text(f'DROP INDEX "{found["name"]}"'))
    _create_declared(conn, "ix_persons_family_birth")


def _create_declared(conn: Connection, name: str) -> None:
    """The persons index ``name`` as ``tables.py`` declares it, unless it is there."""
    for index in persons.indexes:
        if index.name == name:
            index.create(conn, checkfirst=True)


def _audit_patient_once(conn: Connection) -> None:
    """Drop the audit trail's index on ``patient_id`` alone: ``(patient_id, seq)`` begins
    with it and serves every search by patient, and each audit commit, on the request
    path, wrote a page of both."""
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_audit_events_patient_id"))


def _audit_patient_blocks(conn: Connection) -> None:
    """The audit trail's patient index as derived data in sorted blocks
    (``storage.audit_blocks``): every event stored so far becomes one block, read in
    order through the old index, which is then dropped (each append wrote one random
    leaf of it per event)."""
    if not sa.inspect(conn).has_table("audit_events"):
        _audit_tables(conn)  # a database whose earlier migrations were applied elsewhere
    audit_patient_index.create(conn, checkfirst=True)
    audit_index_blocks.create(conn, checkfirst=True)
    index_all(conn)
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_audit_events_patient_seq"))
    held = conn.execute(sa.text("SELECT 1 FROM audit_events LIMIT 1")).first() is not None
    if conn.dialect.name == "postgresql" and held:
        # a search scans the rows after the last block by key: with no statistics of
        # the trail yet, PostgreSQL guesses a third of it and reads all of it instead.
        # Never an empty trail: a table analysed empty is planned as empty (a whole-table
        # scan for the append's head) until analysed again, and the plans a connection
        # keeps stay so while the trail grows; a fresh install's gateway slowed by half
        # as its trail filled (benchmarks/README.md, "The twenty-fifth stop")
        conn.execute(sa.text("ANALYZE audit_events, audit_patient_index, audit_index_blocks"))


def _identities_whole(conn: Connection) -> None:
    """Break-glass grants and export jobs hold every claim a verified token can carry
    (``tables.CLAIM_LENGTH``) and full identities as text: a clinician whose
    organisation claim was over 20 characters could not break glass on PostgreSQL, and
    an identity over 1,000 characters could neither break glass nor export. The index
    on the grant's identity goes: a grant is found by its patient, and an identity of
    long multi-byte claims is over PostgreSQL's limit for one index entry. (SQLite holds
    any length already.)"""
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_break_glass_actor"))
    if conn.dialect.name != "postgresql":
        return
    inspector = sa.inspect(conn)  # a table earlier migrations left to others is made whole
    if inspector.has_table("break_glass"):
        conn.execute(
            sa.text(
                f"ALTER TABLE break_glass ALTER COLUMN organisation TYPE varchar({CLAIM_LENGTH}), "
                f"ALTER COLUMN role TYPE varchar({CLAIM_LENGTH}), "
                "ALTER COLUMN actor TYPE text, ALTER COLUMN person TYPE text, "
                "ALTER COLUMN reviewer_identity TYPE text"
            )
        )
    if inspector.has_table("export_jobs"):
        conn.execute(sa.text("ALTER TABLE export_jobs ALTER COLUMN client TYPE text"))


def _audit_agent_whole(conn: Connection) -> None:
    """The audit trail's ``agent`` as text: from chain 3 on it names the issuer beside
    the subject (``audit_store.agent_key``), over the 200 characters it had. Rows stored
    before keep their bare subject and their hashes (see ``verify``). Its index stays:
    a subject is at most ``CLAIM_LENGTH`` characters and issuers are the operator's
    own configuration, well within PostgreSQL's limit for one entry. (SQLite holds any
    length already.)"""
    if conn.dialect.name == "postgresql" and sa.inspect(conn).has_table("audit_events"):
        conn.execute(sa.text("ALTER TABLE audit_events ALTER COLUMN agent TYPE text"))


def _persons_plain(conn: Connection) -> None:
    """``persons.plain`` (``PersonRow.plain``), false for every person already indexed:
    whether a Patient is unmarked is consent's to decide (``consent.policy.unmarked``),
    not the storage's, so it is set as each person is written again (an update, or the
    next build); until then a search decides about the person as before."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("persons"):
        return
    if any(c["name"] == "plain" for c in inspector.get_columns("persons")):
        return  # made by migration 1 from today's tables
    default = "false" if conn.dialect.name == "postgresql" else "0"
    conn.execute(
        sa.text(f"ALTER TABLE persons ADD COLUMN plain BOOLEAN NOT NULL DEFAULT {default}")
    )


def _jobs_finished(conn: Connection) -> None:
    """``export_jobs.finished``: when a job completed or failed, so that its files are kept
    the retention time from then, not from when it was asked for (an extract that took
    longer than the retention time was expired as it finished). Jobs finished before
    have none and count from when they were asked for, as before."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("export_jobs"):
        return
    if any(c["name"] == "finished" for c in inspector.get_columns("export_jobs")):
        return  # made by an earlier migration from today's tables
    kind = "DOUBLE PRECISION" if conn.dialect.name == "postgresql" else "FLOAT"
    conn.execute(sa.text(f"ALTER TABLE export_jobs ADD COLUMN finished {kind}"))


def _given_in_the_index(conn: Connection) -> None:
    """PostgreSQL: the surname-date-given index (migration 13, whatever its name) made
    again as ``tables.py`` declares it, the given name with the pattern operator class
    as the surname. A search by
    a range of dates tests the given name's prefix as ``given_folded ~>=~ 'a' AND
    given_folded ~<~ 'b'`` (``person_query``); with the default operator class no index
    answers those, so PostgreSQL fetched every row of the surname in the range to test
    the given name: at the full test range the year-range search read ~200 rows to
    return ~13, and PostgreSQL's reads cost 1.4-1.9 ms of CPU a search (benchmarks/
    README.md, "The sixteenth stop"). SQLite compares text as bytes and needs nothing."""
    if conn.dialect.name != "postgresql":
        return
    inspector = sa.inspect(conn)
    if not inspector.has_table("persons"):
        return
    for found in inspector.get_indexes("persons"):
        ops = found.get("dialect_options", {}).get("postgresql_ops", {})
        if found["column_names"] == ["family_folded", "birth_date", "given_folded"] and (
            ops.get("given_folded") != "varchar_pattern_ops"
        ):
            # a name from the database's own catalogue, quoted
            conn.execute(sa.text(f'DROP INDEX "{found["name"]}"'))
            _create_declared(conn, "ix_persons_family_birth")


def _audit_events_lz4(conn: Connection) -> None:
    """PostgreSQL: new events compressed with lz4 instead of pglz. An event is ~2 KB, so
    its row is over the 2 KB at which PostgreSQL compresses a row's long values, and
    each insert compressed the event with pglz: ~20 us of the server's CPU an event of
    ~100 (benchmarks/README.md, "PostgreSQL: the year range's audit events"); lz4 costs
    what storing it uncompressed costs and keeps the row at about the same size. The
    bytes read back are the bytes stored whichever way a value was compressed; values
    stored before keep pglz. Nothing changes on a server built without lz4 (it offers
    only pglz) or before PostgreSQL 14 (no per-column compression), nor on SQLite."""
    if conn.dialect.name != "postgresql" or not sa.inspect(conn).has_table("audit_events"):
        return
    if _lz4_offered(conn):
        conn.execute(sa.text("ALTER TABLE audit_events ALTER COLUMN event SET COMPRESSION lz4"))


def _audit_parts(conn: Connection) -> None:
    """The events of one request stored in part: what they share kept once in
    ``audit_parts``, each event's ``part`` naming it (``storage.audit_store``, "Shared
    parts"). Rows stored before stay whole (``part`` empty). On PostgreSQL the shared
    parts are compressed with lz4 where the server offers it, as the events are
    (migration 21)."""
    audit_parts.create(conn, checkfirst=True)
    if not sa.inspect(conn).has_table("audit_events"):
        return
    if "part" not in {c["name"] for c in sa.inspect(conn).get_columns("audit_events")}:
        conn.execute(sa.text("ALTER TABLE audit_events ADD COLUMN part INTEGER"))
    if conn.dialect.name == "postgresql" and _lz4_offered(conn):
        conn.execute(sa.text("ALTER TABLE audit_parts ALTER COLUMN fragments SET COMPRESSION lz4"))


def _lz4_offered(conn: Connection) -> bool:
    """Whether this PostgreSQL server compresses values with lz4 (built with it, 14+)."""
    offered = conn.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return bool(offered and "lz4" in offered)


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
    (11, "linked records' linking fields; retired person ids' successors", _linkage_tables),
    (12, "name-and-date and local-id indexes for Patient search", _search_indexes),
    (
        13,
        "persons: no index on the surname or the birth date alone; surname, date and given",
        _name_date_given,
    ),
    (14, "audit trail: no index on the patient alone", _audit_patient_once),
    (15, "audit trail: the patient index written in sorted blocks", _audit_patient_blocks),
    (16, "break-glass grants, export jobs: every claim and identity held whole", _identities_whole),
    (17, "audit trail: the requesting user's issuer in the agent column", _audit_agent_whole),
    (18, "persons: whether the merged Patient is unmarked (plain)", _persons_plain),
    (19, "export jobs: when each finished (files kept from then)", _jobs_finished),
    (21, "audit trail: events compressed with lz4 on PostgreSQL", _audit_events_lz4),
    (22, "persons: the given name in the surname-date-given index by pattern", _given_in_the_index),
    (23, "audit trail: what a request's events share stored once", _audit_parts),
]
