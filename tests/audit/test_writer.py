"""The audit writer process: what group commit sends it is committed, chained and
checkpointed as on a thread; a writer that dies fails its batch closed and is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import sqlalchemy as sa

from carelink.audit import GroupCommit, load_or_make_key, verify
from carelink.audit.checkpoints import latest, read
from carelink.audit.writer import WriterProcess, WriterSpec
from carelink.errors import AuditError
from carelink.storage.audit_store import AuditStore
from tests.audit.test_trail import event


def test_concurrent_requests_are_committed_in_batches_and_the_chain_verifies(db):
    heard: list[int] = []
    group = GroupCommit(WriterProcess(WriterSpec(db.url)), lambda s, n: heard.append(n))

    async def requests() -> None:
        await asyncio.gather(*(group.record([event(i)]) for i in range(6)))
        await group.record([event(7), event(8)])

    asyncio.run(requests())
    group.close()
    store = AuditStore(db)
    assert store.head()[0] == 8
    assert verify(store.rows()) == []
    assert sum(heard) == 8
    assert len(heard) < 8


def test_a_writer_that_died_is_replaced_before_the_next_batch(db):
    writer = WriterProcess(WriterSpec(db.url))

    async def go() -> int:
        await writer.record([event(1)])
        first = writer._proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        await writer.record([event(2)])
        assert writer._proc is not None
        return writer._proc.pid

    assert asyncio.run(go()) is not None
    writer.close()
    store = AuditStore(db)
    assert store.head()[0] == 2
    assert verify(store.rows()) == []


def test_a_writer_that_cannot_open_the_trail_fails_every_batch_closed(tmp_path: Path):
    writer = WriterProcess(WriterSpec(str(tmp_path / "no-such-folder" / "audit.db")))

    async def go() -> None:
        for i in range(2):
            with pytest.raises(AuditError):
                await writer.record([event(i)])

    asyncio.run(go())
    writer.close()


def test_an_unwritable_trail_is_an_audit_error_from_a_writer_that_stays_up(db):
    writer = WriterProcess(WriterSpec(db.url))

    async def go() -> tuple[int, int]:
        await writer.record([event(1)])
        assert writer._proc is not None
        before = writer._proc.pid
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit_events"))
        with pytest.raises(AuditError, match="audit trail unavailable"):
            await writer.record([event(2)])
        assert writer._proc is not None
        return before, writer._proc.pid

    before, after = asyncio.run(go())
    writer.close()
    assert before == after


def test_the_writer_writes_checkpoints_with_the_gateways_key(db, tmp_path: Path):
    keys, points = tmp_path / "keys", tmp_path / "points"
    key = load_or_make_key(keys)
    spec = WriterSpec(db.url, keys=str(keys), checkpoints=str(points), checkpoint_every=3)
    writer = WriterProcess(spec)

    async def go() -> None:
        for i in range(4):
            await writer.record([event(i)])

    asyncio.run(go())
    writer.close()
    newest = latest(points)
    assert newest is not None
    checkpoint = read(newest)
    assert checkpoint["seq"] == 3
    store = AuditStore(db)
    assert verify(store.rows(), checkpoint, key.public_key()) == []


def test_closing_stops_the_child(db):
    writer = WriterProcess(WriterSpec(db.url))
    asyncio.run(writer.start())
    proc = writer._proc
    assert proc is not None
    assert proc.poll() is None
    writer.close()
    assert proc.poll() is not None


def test_closed_on_the_servers_event_loop_the_child_ends_by_itself(db):
    """The gateway closes the writer while uvicorn's event loop (uvloop) still runs, and
    that loop's transport holds the socket: the child must still see the end and exit
    on its own, not wait to be terminated."""
    uvloop = pytest.importorskip("uvloop")
    writer = WriterProcess(WriterSpec(db.url))

    async def serve_then_stop() -> None:
        await writer.record([event(1)])  # the child is up and serving
        proc = writer._proc
        assert proc is not None
        writer.close()
        assert proc.returncode == 0

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve_then_stop())
