"""The rows the audit writer process is sent: each event's bytes with its columns, stored
as sent; a batch that does not add up is refused and the writer stays up."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from carelink.audit import verify
from carelink.audit.events import columns
from carelink.audit.writer import WriterProcess, WriterSpec, rows_frame
from carelink.errors import AuditError
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.audit.test_trail import event


def _pid(writer: WriterProcess) -> int:
    assert writer._proc is not None
    return writer._proc.pid


def _garbled(whole: bytes) -> list[bytes]:
    """A batch cut short, one with bytes to spare, one cut inside its head, none at all."""
    return [whole[:-1], whole + b"x", whole[:6], b""]


def test_the_writer_stores_the_bytes_sent_with_their_columns_and_refuses_a_garbled_batch(
    database_url,
):
    """Events reach the child serialised with their columns: stored byte for byte as
    the gateway made them; a batch that does not add up is refused (an AuditError for
    its requests), stores nothing, and the same child serves the next one."""
    db = Database(database_url)
    db.migrate()
    writer = WriterProcess(WriterSpec(db.url))
    sent = [event(1), event(2, patient="p9"), event(3, patient="")]

    async def go() -> list[int]:
        await writer.record(sent)
        children = [_pid(writer)]
        for garbled in _garbled(rows_frame([event(4)])):
            with pytest.raises(AuditError, match="unreadable batch"):
                await writer._call(b"R", garbled)
            children.append(_pid(writer))
        await writer.record([event(5)])
        children.append(_pid(writer))
        return children

    children = asyncio.run(go())
    writer.close()
    assert len(set(children)) == 1  # one child served every frame
    rows = list(AuditStore(db).rows())
    stored = [r.event for r in rows]
    expected = [orjson.dumps(e) for e in sent] + [orjson.dumps(event(5))]
    assert stored == expected
    beside = [(r.recorded, r.patient_id, r.outcome, r.agent) for r in rows[:3]]
    assert beside == list(map(columns, sent))
    assert rows[2].patient_id is None
    assert verify(AuditStore(db).rows()) == []
    db.dispose()
