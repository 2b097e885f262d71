"""The audit writer's CPU per event on a large trail (issues 13 and 15).

    PYTHONPATH=src .venv/bin/python benchmarks/audit_writer.py --trail /tmp/me/trail.db \
        [--database postgresql://postgres@127.0.0.1:5432/me_bench] \
        [--drop ix_audit_events_patient_seq]

Makes a trail of ``--rows`` events (patients drawn from ``--people``) once, by
bulk insert with a valid hash chain, and keeps it at ``--trail`` (SQLite; with
``--database`` the trail is made there instead, if it is empty). Each run
copies the SQLite file to a scratch file beside it (the kept one is never
written), so runs start from the same trail. ``--drop INDEX`` drops an index
in the scratch copy first (what that index costs).

Then appends ``--batches`` batches of ``--batch`` fresh AuditEvents (the
gateway's events: a patient each, one of ``--agents`` users) through the
real ``AuditStore.append`` (one durable commit a batch, as the writer child
makes them), and prints the CPU an event: this process's user and system time
and, on PostgreSQL, the server backend's (read from /proc), over the
appends only. The first ``--warm`` batches are not counted.

``--child`` sends the same batches to the real writer child instead
(``audit.writer.WriterProcess``: each batch framed as the gateway frames it,
decoded, appended and answered by the child, the patient index's block
written after the answer when due) and prints the child's CPU an event and a
batch, read from /proc (and, on PostgreSQL, the server backend's, which is
not counted there: the child's backend is not this process's to find).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import time
from pathlib import Path

import orjson

from carelink.audit.events import Access, Who, audit_event, columns
from carelink.storage import Database
from carelink.storage.audit_store import CHAIN, GENESIS, AuditStore, NewEvent, row_hash


def _event(rng: random.Random, people: int, agents: int, n: int) -> NewEvent:
    pid = f"{rng.randrange(people):06d}-gp"
    stamp = f"2026-12-01T{(n // 3600) % 24:02d}:{(n // 60) % 60:02d}:{n % 60:02d}.{n % 999999:06d}Z"
    access = Access(
        "search-type",
        f"/fhir/Patient?birthdate=ge1970-01-01&birthdate=lt1971-01-01&_count=20&n={n}",
        f"req-{n}",
        stamp,
        "http://127.0.0.1:8000/fhir",
    )
    who = Who(f"user-{rng.randrange(agents)}", "R8000", "RXX01", "TREAT", "https://idp.example")
    e = audit_event(access, who, pid, "0")
    return NewEvent(*columns(e), orjson.dumps(e))


def scratch_copy(trail: Path, tag: str) -> Path:
    """A fresh copy of the kept ``trail`` beside it, named with ``tag`` (runs write it,
    never the kept one)."""
    scratch = trail.with_name(f"{trail.name}.{tag}")
    remove(scratch)
    shutil.copyfile(trail, scratch)
    return scratch


def remove(scratch: Path) -> None:
    """A scratch copy and its WAL files, gone."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)


def build(db: Database, rows: int, people: int, agents: int, seed: int) -> None:
    """``rows`` events appended in bulk (a valid chain), indexes made after."""
    db.migrate()
    with db.engine.connect() as conn:
        have = conn.exec_driver_sql("SELECT count(*) FROM audit_events").scalar_one()
    if have:
        print(f"trail has {have} rows already")
        return
    rng = random.Random(seed)
    raw = db.engine.raw_connection()
    cur = raw.cursor()
    mark = "?" if db.is_sqlite else "%s"
    insert = (
        "INSERT INTO audit_events (seq, recorded, patient_id, outcome, event, prev_hash, hash,"  # noqa: S608
        f" agent, chain) VALUES ({', '.join([mark] * 9)})"
    )
    idx = [(r[0], r[1]) for r in _indexes(db)]
    for name, _ in idx:
        cur.execute(f"DROP INDEX {name}")
    prev, seq, started = GENESIS, 0, time.perf_counter()
    while seq < rows:
        chunk = []
        for _ in range(min(20000, rows - seq)):
            seq += 1
            e = _event(rng, people, agents, seq)
            h = row_hash(prev, seq, e.recorded, e.patient_id, e.outcome, e.agent, e.event)
            chunk.append(
                (seq, e.recorded, e.patient_id, e.outcome, e.event, prev, h, e.agent, CHAIN)
            )
            prev = h
        cur.executemany(insert, chunk)
        raw.commit()
    for _, sql in idx:
        cur.execute(sql)
    raw.commit()
    raw.close()
    print(f"built {rows} rows in {time.perf_counter() - started:.1f} s")


def _indexes(db: Database) -> list[tuple[str, str]]:
    """Name and CREATE statement of each index on the events besides the key."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            q = (
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'audit_events' AND sql IS NOT NULL"
            )
        else:
            q = (
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_events' "
                "AND right(indexname, 4) <> 'pkey'"
            )
        return [(str(r[0]), str(r[1])) for r in conn.exec_driver_sql(q)]


def _backend_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    # nanoseconds on a CPU (``stat``'s ticks of 10 ms were too coarse for a backend's
    # few milliseconds a run)
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def run(db: Database, args: argparse.Namespace) -> None:
    store = AuditStore(db)
    rng = random.Random(args.seed + 1)
    n0 = args.rows + 1
    batches = [
        [_event(rng, args.people, args.agents, n0 + b * args.batch + i) for i in range(args.batch)]
        for b in range(args.batches + args.warm)
    ]
    # the writer child writes the patient index's next block after each answer, where
    # the tree has one (``AuditStore.settle``): counted with the appends
    settle = getattr(store, "settle", lambda: 0)
    for b in batches[: args.warm]:
        store.append(b)
        settle()
    backend = None
    if not db.is_sqlite:
        backend = int(store._conn.driver_connection.info.backend_pid)
    r0, b0, t0 = (
        resource.getrusage(resource.RUSAGE_SELF),
        _backend_cpu(backend),
        time.perf_counter(),
    )
    took, settled = [], []
    for b in batches[args.warm :]:
        t = time.perf_counter()
        store.append(b)
        mid = time.perf_counter()
        if settle():
            settled.append(time.perf_counter() - mid)
        took.append(time.perf_counter() - t)
    r1, b1, t1 = (
        resource.getrusage(resource.RUSAGE_SELF),
        _backend_cpu(backend),
        time.perf_counter(),
    )
    store.close()
    events = args.batches * args.batch
    user = (r1.ru_utime - r0.ru_utime) / events * 1e6
    system = (r1.ru_stime - r0.ru_stime) / events * 1e6
    server = (b1 - b0) / events * 1e6
    print(
        f"{'sqlite' if db.is_sqlite else 'postgresql'} drop={','.join(args.drop) or '-'} "
        f"batch={args.batch} events={events}: {user + system + server:.1f} us CPU an event "
        f"(user {user:.1f}, sys {system:.1f}, server {server:.1f}), "
        f"{(t1 - t0) / args.batches * 1e3:.2f} ms a commit, load {os.getloadavg()[0]:.2f}"
    )
    took.sort()
    print(
        f"  a batch (append, then settle when due): p50 {took[len(took) // 2] * 1e3:.2f}, "
        f"p99 {took[int(len(took) * 0.99)] * 1e3:.2f}, max {took[-1] * 1e3:.2f} ms; "
        f"{len(settled)} blocks written, "
        f"{(sum(settled) / len(settled) * 1e3) if settled else 0:.1f} ms each on average"
    )


def run_child(url: str, args: argparse.Namespace) -> None:
    """The batches through the real writer child; its CPU an event and a batch."""
    from carelink.audit.writer import WriterProcess, WriterSpec

    rng = random.Random(args.seed + 1)
    n0 = args.rows + 1
    batches = [
        [
            (e.recorded, e.patient_id, e.outcome, e.agent, e.event)
            for e in (
                _event(rng, args.people, args.agents, n0 + b * args.batch + i)
                for i in range(args.batch)
            )
        ]
        for b in range(args.batches + args.warm)
    ]

    async def go() -> tuple[float, float]:
        proc = WriterProcess(WriterSpec(url))
        await proc.start()
        try:
            for b in batches[: args.warm]:
                await proc.record(b)
            assert proc._proc is not None
            pid = proc._proc.pid
            c0, t0 = _backend_cpu(pid), time.perf_counter()
            for b in batches[args.warm :]:
                await proc.record(b)
            return _backend_cpu(pid) - c0, time.perf_counter() - t0
        finally:
            proc.close()

    cpu, wall = asyncio.run(go())
    events = args.batches * args.batch
    print(
        f"child {'postgresql' if url.startswith('postgresql') else 'sqlite'} batch={args.batch} "
        f"events={events}: {cpu / events * 1e6:.1f} us CPU an event (child, user + sys), "
        f"{cpu / args.batches * 1e6:.0f} us a batch, {wall / args.batches * 1e3:.2f} ms a "
        f"batch's wall, load {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trail", type=Path, required=True, help="the kept SQLite trail")
    p.add_argument("--database", help="a PostgreSQL URL instead of SQLite")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--people", type=int, default=900_000)
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--batches", type=int, default=1500)
    p.add_argument("--warm", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--drop", action="append", default=[], help="an index to drop first")
    p.add_argument("--child", action="store_true", help="through the real writer child")
    args = p.parse_args()
    if args.database:
        db = Database(args.database)
        build(db, args.rows, args.people, args.agents, args.seed)
        for name in args.drop:
            with db.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        if args.child:
            db.dispose()
            run_child(args.database, args)
        else:
            run(db, args)
        db.dispose()
        return
    if not args.trail.exists():
        db = Database(str(args.trail))
        build(db, args.rows, args.people, args.agents, args.seed)
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db.dispose()
    scratch = scratch_copy(args.trail, "run")
    db = Database(str(scratch))
    db.migrate()
    for name in args.drop:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    if args.child:
        db.dispose()
        run_child(str(scratch), args)
    else:
        run(db, args)
    db.dispose()
    remove(scratch)


if __name__ == "__main__":
    main()
