"""The feed tables (SQLAlchemy Core), apart from ``tables.py`` so that migration 1's
``create_all`` leaves them to their own migration."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carelink.storage.tables import LOCAL_ID_LENGTH, SOURCE_LENGTH

feed_metadata = sa.MetaData()

#: the longest message control id (MSH-10) the feed holds; a message with a longer one is
#: refused at intake (record keys: ``tables.SOURCE_LENGTH`` and ``LOCAL_ID_LENGTH``)
CONTROL_ID_LENGTH = 200

feed_messages = sa.Table(
    "feed_messages",
    feed_metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(SOURCE_LENGTH), nullable=False),
    sa.Column("control_id", sa.String(CONTROL_ID_LENGTH), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    #: whose record the message belongs to now (a merge moves it to the survivor)
    sa.Column("local_id", sa.String(LOCAL_ID_LENGTH), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.UniqueConstraint("source", "control_id", name="uq_feed_messages_control_id"),
    sa.Index("ix_feed_messages_person", "source", "local_id", "seq"),
)

feed_people = sa.Table(
    "feed_people",
    feed_metadata,
    sa.Column("source", sa.String(SOURCE_LENGTH), primary_key=True),
    sa.Column("local_id", sa.String(LOCAL_ID_LENGTH), primary_key=True),
    #: the latest message carrying the person's demographics (``feed_messages.seq``)
    sa.Column("person_seq", sa.Integer, nullable=True),
    #: when the last message about the person was applied (FHIR instant)
    sa.Column("as_of", sa.String(32), nullable=False),
    #: the seq of that message: changes whenever the person's part changes
    sa.Column("last_seq", sa.Integer, nullable=False),
    #: set when a merge retired this local id: the surviving one
    sa.Column("merged_into", sa.String(LOCAL_ID_LENGTH), nullable=True),
)


def create_feed_tables(conn: Connection) -> None:
    """Migration: the feed tables."""
    feed_metadata.create_all(conn, checkfirst=True)
