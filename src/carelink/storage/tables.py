"""Table definitions (SQLAlchemy Core)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: the longest of each demographic a source sends that the patient index holds (the
#: columns below; PostgreSQL refuses a longer value, so ``SourcePerson`` leaves one out)
NAME_LENGTH = 200  # a name, and its fold (which may be longer: "ß" -> "ss")
BIRTH_DATE_LENGTH = 10
GENDER_LENGTH = 16
POSTCODE_LENGTH = 10
#: the longest record key the index holds: a source's name and a record's id there (a
#: record whose key is longer cannot be indexed: ``SourcePerson.keyable``)
SOURCE_LENGTH = 32
LOCAL_ID_LENGTH = 128
#: the longest token claim the gateway accepts (``auth.tokens`` refuses a longer one):
#: every column holding one holds this much, and a full identity (``Principal.identity``,
#: several claims as JSON) is held as text, never in an index (PostgreSQL's btree limit)
CLAIM_LENGTH = 200

settings_table = sa.Table(
    "index_settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

persons = sa.Table(
    "persons",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("nhs_number", sa.String(10), unique=True, nullable=True),
    sa.Column("family", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("given", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("family_folded", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("given_folded", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("birth_date", sa.String(BIRTH_DATE_LENGTH), nullable=True),
    sa.Column("gender", sa.String(GENDER_LENGTH), nullable=True),
    sa.Column("postcode", sa.String(POSTCODE_LENGTH), nullable=True),
    sa.Column("patient", sa.LargeBinary, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    #: the merged Patient carries nothing a consent policy finds a sensitive category by,
    #: and is the Patient of this id (``PersonRow.plain``; migration 18: false until the
    #: person is written again)
    sa.Column("plain", sa.Boolean, nullable=False, server_default=sa.false()),
)
#: name and birth date together, for demographic search (migration 12): the date first
#: for a day's search (name prefix tested in the index), the name first for a range of dates,
#: with the given name, so a range of dates fetches only the rows whose given name matches
#: (migration 13); each also serves what reads its first column alone (no index on either
#: alone: migration 13)
sa.Index("ix_persons_birth_family", persons.c.birth_date, persons.c.family_folded)
sa.Index(
    "ix_persons_family_birth",
    persons.c.family_folded,
    persons.c.birth_date,
    persons.c.given_folded,
    # PostgreSQL reads LIKE 'smith%' through a btree index only in the C locale or
    # with the pattern operators (which also take =); the given name's too, so a range of
    # dates tests the given name's prefix in the index, not in every row (migration 22)
    postgresql_ops={"family_folded": "varchar_pattern_ops", "given_folded": "varchar_pattern_ops"},
)

links = sa.Table(
    "person_links",
    metadata,
    sa.Column("source", sa.String(SOURCE_LENGTH), primary_key=True),
    sa.Column("local_id", sa.String(LOCAL_ID_LENGTH), primary_key=True),
    sa.Column("person_id", sa.String(64), sa.ForeignKey("persons.id"), nullable=False, index=True),
    sa.Column("patient_id", sa.String(64), nullable=False, unique=True),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("patient", sa.LargeBinary, nullable=False),
)

#: a local id at any source (``identifier`` without a system; migration 12)
sa.Index("ix_person_links_local_id", links.c.local_id)

review = sa.Table(
    "match_review",
    metadata,
    sa.Column("source", sa.String(SOURCE_LENGTH), primary_key=True),
    sa.Column("local_id", sa.String(LOCAL_ID_LENGTH), primary_key=True),
    sa.Column("candidate_id", sa.String(64), nullable=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("explanation", sa.Text, nullable=False),
    sa.Column("demographics", sa.Text, nullable=False),
)

#: client assertion ids seen, so a ``jti`` is never accepted twice per client
#: (shared by every gateway process through the database)
client_assertions = sa.Table(
    "client_assertions",
    metadata,
    sa.Column("client_id", sa.String(200), primary_key=True),
    sa.Column("jti", sa.String(200), primary_key=True),
    sa.Column("expires_at", sa.Integer, nullable=False, index=True),
)

#: the tamper-evident audit trail: each row chained by hash to the one before
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("recorded", sa.String(40), nullable=False),
    #: found through ``audit_patient_index`` (blocks) and a scan of the unindexed tail
    sa.Column("patient_id", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(2), nullable=False),
    sa.Column("event", sa.LargeBinary, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    #: the requesting user (the event's requestor agent), for ``AuditEvent?agent=``: chain 3
    #: subject and issuer (``storage.audit_store.agent_key``), chain 1 and 2 the subject
    sa.Column("agent", sa.Text, nullable=True),
    #: how ``hash`` was made: 1 (before migration 9) sequence, previous hash and event;
    #: 2 every column of the row (see ``storage.audit_store.row_hash``); 3 as 2, with
    #: ``agent`` naming the issuer too; 4 as 3, the row's own columns hashed apart from its
    #: place and linked to it (``storage.audit_store.link``: PostgreSQL chains in SQL)
    sa.Column("chain", sa.Integer, nullable=False, server_default="1"),
    #: when set, the event is stored in part (``storage.audit_store``, "Shared parts"):
    #: ``event`` holds only what is this event's, the rest is the ``audit_parts`` row of
    #: this sequence number, shared by the other events of the same request
    sa.Column("part", sa.Integer, nullable=True),
    sa.Index("ix_audit_events_agent_seq", "agent", "seq"),
)

#: what the events of one request share, stored once (keyed by the first of them's seq)
audit_parts = sa.Table(
    "audit_parts",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("fragments", sa.LargeBinary, nullable=False),
)

#: the audit trail's events by patient, derived from ``audit_events`` and written in
#: sorted blocks (``storage.audit_store.AuditStore.settle``), never one row per append:
#: each block's keys sort after every earlier block's, so its pages are appended at the
#: right edge instead of one random leaf per event
audit_patient_index = sa.Table(
    "audit_patient_index",
    metadata,
    #: the block's last sequence number (``audit_index_blocks.block``)
    sa.Column("block", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("patient_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

#: the blocks of ``audit_patient_index``: events first_seq..block, consecutive from 1;
#: events after the last block (the tail) are found by a scan of their rows
audit_index_blocks = sa.Table(
    "audit_index_blocks",
    metadata,
    sa.Column("block", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("first_seq", sa.Integer, nullable=False),
)

#: one row, updated by every append: the lock that serialises appends across processes
audit_lock = sa.Table(
    "audit_lock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("appends", sa.Integer, nullable=False),
)

#: patients' consents (FHIR Consent JSON); only the current version of each is kept
consents = sa.Table(
    "consents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("patient_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.String(40), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

#: break-glass grants: who, whom, why, until when, and their review
break_glass = sa.Table(
    "break_glass",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(CLAIM_LENGTH), nullable=False),
    sa.Column("organisation", sa.String(CLAIM_LENGTH), nullable=True),
    sa.Column("role", sa.String(CLAIM_LENGTH), nullable=True),
    sa.Column("patient_id", sa.String(64), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("granted", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("review_status", sa.String(20), nullable=False),
    sa.Column("reviewer", sa.String(CLAIM_LENGTH), nullable=True),
    sa.Column("review_outcome", sa.String(20), nullable=True),
    sa.Column("review_note", sa.Text, nullable=True),
    sa.Column("reviewed", sa.Float, nullable=True),
    # migration 8: what is reviewed, and the full identities (not the bare subject)
    sa.Column("kind", sa.String(20), nullable=True),
    sa.Column("actor", sa.Text, nullable=True),
    sa.Column("person", sa.Text, nullable=True),
    sa.Column("reviewer_identity", sa.Text, nullable=True),
)

#: every version of every Consent ever stored (history: nothing is deleted)
consent_versions = sa.Table(
    "consent_versions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("patient_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("last_updated", sa.String(40), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

#: opt-outs from secondary use: national data opt-out (ndop) and GP type 1 (type1)
opt_outs = sa.Table(
    "opt_outs",
    metadata,
    sa.Column("nhs_number", sa.String(10), primary_key=True),
    sa.Column("kind", sa.String(10), primary_key=True),
    sa.Column("recorded", sa.String(40), nullable=False),
)

#: Bulk Data export jobs: they survive a restart; a process holds one by a lease
export_jobs = sa.Table(
    "export_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("client", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("request", sa.LargeBinary, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("progress", sa.String(200), nullable=False),
    sa.Column("manifest", sa.LargeBinary, nullable=True),
    # when it completed or failed: its files are kept the retention time from then
    sa.Column("finished", sa.Float, nullable=True),
)

#: search results kept for paging: every page of one search is cut from one stored answer
#: (already filtered for the caller who asked), shared by every gateway process
result_sets = sa.Table(
    "result_sets",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("expires", sa.Float, nullable=False, index=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)


#: where a resource the gateway has returned lives: (type, id) -> the person whose
#: record holds it, and when the gateway first learned of it
resource_locations = sa.Table(
    "resource_locations",
    metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("resource_id", sa.String(64), primary_key=True),
    sa.Column("person_id", sa.String(64), nullable=False, index=True),
    sa.Column("first_seen", sa.String(40), nullable=False),
)


#: migration 11's tables, apart from ``metadata`` so that migration 1's ``create_all``
#: leaves them to their own migration
linkage_metadata = sa.MetaData()

#: migration 11: each linked record's linking fields, and the three values under which
#: an incremental update looks up the records it could block with (``day``: the birth
#: date with day and month either way round; ``names_ym``: both names' sound-alikes
#: and the birth year and month; ``pc``: the postcode without spaces). The values are
#: made by ``federation.matching.lookup_values``; storage only keeps them.
record_fields = sa.Table(
    "record_fields",
    linkage_metadata,
    sa.Column("source", sa.String(SOURCE_LENGTH), primary_key=True),
    sa.Column("local_id", sa.String(LOCAL_ID_LENGTH), primary_key=True),
    sa.Column("nhs", sa.String(10), nullable=True),
    sa.Column("given", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("family", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("birth_date", sa.String(BIRTH_DATE_LENGTH), nullable=True),
    sa.Column("gender", sa.String(GENDER_LENGTH), nullable=True),
    sa.Column("postcode", sa.String(POSTCODE_LENGTH), nullable=True),
    sa.Column("day", sa.String(20), nullable=False, index=True),
    sa.Column("names_ym", sa.String(40), nullable=False, index=True),
    sa.Column("pc", sa.String(10), nullable=False, index=True),
)

#: migration 11: a person id retired by a merge or a split, and the people its records
#: went to (so a client holding the old id is pointed on, not told 404)
person_successors = sa.Table(
    "person_successors",
    linkage_metadata,
    sa.Column("retired_id", sa.String(64), primary_key=True),
    sa.Column("successor_id", sa.String(64), primary_key=True),
    sa.Column("retired_at", sa.String(40), nullable=False),
)
