"""The audit appenders' turn on SQLite (``AuditStore``): each append, block and WAL
checkpoint first takes the lock file beside the database, so two writer children (one a
gateway worker) take turns instead of racing SQLite's sleeping retries for its write lock,
where one committing back to back kept the other waiting for hundreds of commits.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import threading

import orjson
import pytest

from carelink.audit import Access, Who, audit_event
from carelink.audit.events import columns
from carelink.storage import Database
from carelink.storage.audit_blocks import index_all, index_problems
from carelink.storage.audit_store import AuditStore, NewEvent


def _event(n: int) -> NewEvent:
    recorded = f"2026-01-01T00:00:00.{n % 1_000_000:06d}Z"
    access = Access("read", f"/fhir/Patient/p{n}", f"req-{n}", recorded, "b")
    e = audit_event(access, Who("user", "R8000", "RXX01", "TREAT"), f"p{n % 7}", "0")
    return NewEvent(*columns(e), orjson.dumps(e))


@pytest.fixture
def stores(tmp_path):
    """Two appenders on one SQLite file, as two workers' writer children are."""
    url = str(tmp_path / "trail.db")
    db = Database(url)
    db.migrate()
    a, b = AuditStore(Database(url)), AuditStore(Database(url))
    yield a, b, tmp_path / "trail.db-audit-turn"
    for s in (a, b):
        s.close()
        s.db.dispose()
    db.dispose()


def test_an_append_waits_for_the_turn_and_goes_on_once_it_is_let_go(stores):
    """While another holds the turn, an append neither commits nor returns; once the turn is
    let go it commits, and the turn is free again afterwards."""
    a, _, turn = stores
    a.append([_event(0)])
    held = os.open(turn, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    done = threading.Event()
    appender = threading.Thread(target=lambda: (a.append([_event(1)]), done.set()))
    appender.start()
    try:
        assert not done.wait(0.5)  # not a time limit: only how long it is given to go wrong
        assert [r.seq for r in a.rows()] == [1]
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        appender.join(30)
    assert done.is_set()
    assert [r.seq for r in a.rows()] == [1, 2]
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if an appender kept it
    os.close(held)


def test_an_appender_committing_back_to_back_does_not_starve_another(stores):
    """One appender commits without pause; another's appends each get in within a few of
    its commits (SQLite's own retries, sleeping 1, 2, 5, 10 ... ms, let it wait for as many
    as the first could make meanwhile: dozens to thousands). Judged by the median of five
    appends, each tried afresh, so that one unlucky turn of the scheduler on a loaded
    machine neither fails the fix nor lets the starvation pass."""
    a, b, _ = stores
    b.append([_event(0)])
    stop = threading.Event()
    commits = [0]

    def busy() -> None:
        n = 1
        while not stop.is_set():
            a.append([_event(n)])
            n += 1
            commits[0] += 1

    runner = threading.Thread(target=busy)
    runner.start()
    try:
        during = []
        for k in range(5):
            # each try starts afresh: the first appender alone, committing back to back
            # (after a wait it is the one sleeping in SQLite's retries)
            alone = commits[0] + 5
            while commits[0] < alone:
                stop.wait(0.001)
            before = commits[0]
            b.append([_event(10**6 + k)])
            during.append(commits[0] - before)
    finally:
        stop.set()
        runner.join(30)
    assert statistics.median(during) <= 25, f"the other appender committed {during} times"


def test_a_block_written_while_an_appender_waits_for_the_turn_is_not_written_again(stores):
    """``settle`` reads the tail's rows before taking the turn, then checks under it that
    the last block is still the one it read: a block another wrote meanwhile (here the
    migration's ``index_all``) is left as it is, and the index still matches the rows."""
    a, _, turn = stores
    a.block = 5
    a.append([_event(n) for n in range(1, 8)])  # 7 events: a block is due
    held = os.open(turn, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    covered: list[int] = []
    settler = threading.Thread(target=lambda: covered.append(a.settle()))
    settler.start()
    try:
        settler.join(0.5)  # time for the read before the turn
        with a.db.engine.begin() as conn:
            assert index_all(conn) == 7
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
        settler.join(30)
    assert covered == [0]
    with a.db.engine.connect() as conn:
        blocks = conn.exec_driver_sql("SELECT block, first_seq FROM audit_index_blocks").all()
        assert [tuple(b) for b in blocks] == [(7, 1)]
        assert index_problems(conn) == []
