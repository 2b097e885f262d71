"""Grow a kept index's audit trail by many events, as the writer child appends them.

    PYTHONPATH=src .venv/bin/python benchmarks/trail_grow.py --database DIR/index.db \
        --events 500000 [--batch 400]

For issue 15's question of what grows with the trail (benchmarks/README.md, "SQLite:
the year range's CPU and the growing trail"): ``search_cpu.py`` on the same copy before
and after shows which part of a search's CPU moves with the trail's size. The events
are ``audit_writer.py``'s (~2 KB AuditEvents of a search, a patient each, one user),
appended through the real ``AuditStore.append_rows`` in durable batches of ``--batch``
and the patient index's block written after each batch when due (``settle``), as the
writer child does; the chain continues from the trail's head. Writes ``--database``:
give it a copy, never a kept original.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.audit_writer import _event

from carelink.storage import Database
from carelink.storage.audit_store import AuditStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database", required=True, help="a SQLite file (a copy: it is written)")
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--batch", type=int, default=400)
    p.add_argument("--people", type=int, default=909_091)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--report", type=int, default=100_000, help="print the CPU every N events")
    args = p.parse_args()
    db = Database(str(Path(args.database).resolve()))
    store = AuditStore(db)
    rng = random.Random(args.seed)
    seq0, _ = store.head()
    started, blocks, done = time.perf_counter(), 0, 0
    cpu, counted = (0.0, 0.0), 0
    while done < args.events:
        n = min(args.batch, args.events - done)
        batch = [_event(rng, args.people, 1, seq0 + done + i + 1) for i in range(n)]
        rows = [(e.recorded, e.patient_id, e.outcome, e.agent, e.event) for e in batch]
        before = resource.getrusage(resource.RUSAGE_SELF)
        store.append_rows(rows)
        blocks += store.settle() > 0
        after = resource.getrusage(resource.RUSAGE_SELF)
        # the appends' CPU only, not the making of the events
        cpu = _plus(cpu, after, before)
        done += n
        counted += n
        if counted >= args.report or done == args.events:
            print(
                f"  at {seq0 + done:,} events: appends' CPU {cpu[0] / counted * 1e6:.1f} us user"
                f" + {cpu[1] / counted * 1e6:.1f} us sys an event; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            cpu, counted = (0.0, 0.0), 0
    store.close()
    seq, _ = store.head()
    db.dispose()
    print(
        f"appended {done:,} events ({seq0:,} -> {seq:,}) in {time.perf_counter() - started:.1f} s,"
        f" {blocks} blocks; load {os.getloadavg()[0]:.2f}"
    )


def _plus(
    cpu: tuple[float, float], after: resource.struct_rusage, before: resource.struct_rusage
) -> tuple[float, float]:
    """``cpu`` (user, system seconds) plus what was used between ``before`` and ``after``."""
    return (
        cpu[0] + after.ru_utime - before.ru_utime,
        cpu[1] + after.ru_stime - before.ru_stime,
    )


if __name__ == "__main__":
    main()
