"""Attack: audit writer processes killed (SIGKILL) at random moments while two of them,
as two gateway workers' writers, append to one trail.

Each worker's appends go through a writer child of its own (``audit.writer``); on SQLite
the children take turns by a lock on a file beside the database (``flock``), on
PostgreSQL by a row lock, each held through a commit. A writer killed mid-commit holds
the turn when it dies. The guarantee: **an append either returns, and then every event
of its batch is stored once, or raises; a batch is never stored in part, never twice;
the chain verifies; the killed writer's turn is not held for ever (the other worker's
appends go on at once), and the killed writer's worker appends again through a new
child.** (A batch whose commit was under way when its writer died may be stored without
its append returning: the request failed closed, and the events are kept once.)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time

from carelink.audit.writer import WriterProcess, WriterSpec
from carelink.errors import AuditError
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.adversarial.test_audit_cut import _batch, whole_batches

#: batches of writer ``w`` are numbered from ``w * SPAN`` on
SPAN = 1_000_000


class Worker:
    """One gateway worker's side: a writer child, appending batches on a loop of its own
    until told to stop; which batches returned and which raised."""

    def __init__(self, w: int, url: str) -> None:
        self.writer = WriterProcess(WriterSpec(url))
        self.first = w * SPAN
        self.returned: list[int] = []
        self.raised: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        n = self.first
        while not self.done.is_set():
            n += 1
            try:
                await self.writer.record(_batch(n))
                self.returned.append(n)
            except AuditError:  # its writer was killed: this batch failed closed
                self.raised.append(n)
                await asyncio.sleep(0.005)
        self.writer.close()

    def child(self) -> int | None:
        proc = self.writer._proc
        return proc.pid if proc is not None and proc.poll() is None else None


def test_writers_killed_mid_append_leave_whole_batches_and_the_others_go_on(database_url):
    db = Database(database_url)
    db.migrate()
    workers = [Worker(w, database_url) for w in (1, 2)]
    for worker in workers:
        worker.thread.start()
    rng = random.Random(20261203)
    killed = 0
    try:
        deadline = time.monotonic() + 30
        while not all(w.returned for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)  # both children started and appending
        for _ in range(16):
            time.sleep(rng.uniform(0.02, 0.12))
            pid = rng.choice(workers).child()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        # after the last kill, each worker must append again (through a new child for the
        # one killed last), and neither waits on a turn a dead writer held
        settled = [len(w.returned) for w in workers]
        deadline = time.monotonic() + 20
        while (
            any(len(w.returned) <= s for w, s in zip(workers, settled, strict=True))
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        after = [len(w.returned) - s for w, s in zip(workers, settled, strict=True)]
    finally:
        for worker in workers:
            worker.done.set()
        for worker in workers:
            worker.thread.join(30)
    assert not any(w.thread.is_alive() for w in workers)
    assert killed >= 8, f"only {killed} writers were running to be killed"
    assert sum(len(w.raised) for w in workers), "no kill came mid-append: no attack happened"
    assert all(n > 0 for n in after), f"appends after the last kill, per worker: {after}"

    reader = AuditStore(db)
    returned = {n for w in workers for n in w.returned}
    raised = {n for w in workers for n in w.raised}
    whole_batches(reader, returned, raised)
    reader.close()
    db.dispose()
