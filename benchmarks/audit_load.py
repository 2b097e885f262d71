"""The audit writer at load: commits, events a commit, its CPU, and what a request waits.

    PYTHONPATH=src .venv/bin/python benchmarks/audit_load.py --trail /tmp/me/trail.db \
        [--workers 2] [--clients 16] [--events 13] [--work-us 1400] [--seconds 8] \
        [--wait-ms 0] [--gather-ms 0] [--gather-events 0]

What the gateway's audit path does under wrk, without the rest of the gateway: the
trail is a copy of one kept by ``audit_writer.py`` (SQLite); ``--workers`` processes
each run what a gateway worker runs for its audit trail (``GroupCommit`` over the
writer child, ``WriterProcess``, on uvloop) and ``--clients`` requests in a closed
loop, each taking ``--work-us`` of CPU on the worker's event loop (the request's own
work, a busy loop, in two halves around a wait of about ``--wait-ms``: its sources'
answers) and then writing ``--events`` AuditEvents (``RequestEvents.rows``:
one user, patients drawn from ``--people``) through ``GroupCommit.record``, answered
when committed. So the two cores are shared as under wrk: the workers' own work and
the writer children's.

Printed for each run: requests a second, the writer children's CPU (user + system,
from /proc) a request and an event, commits a second and events a commit, and the
time a request spends, in all and in ``record`` (p50, p99). ``--gather-ms`` and
``--gather-events`` are handed to ``GroupCommit`` (its gathering window) where the
tree has one (a tree without it refuses them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.audit_writer import remove, scratch_copy

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from carelink.audit.events import Access, RequestEvents, Who
    from carelink.audit.trail import GroupCommit
    from carelink.audit.writer import WriterProcess, WriterSpec
    from carelink.observability.context import instant, new_id

    proc = WriterProcess(WriterSpec(args.scratch))
    await proc.start()
    gather = {}
    if args.gather_ms or args.gather_events:
        gather = {"gather": args.gather_ms / 1000, "gather_events": args.gather_events}
    group = GroupCommit(proc, **gather)  # type: ignore[arg-type]
    who = Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example")
    rng = random.Random(args.seed)
    work, wait = args.work_us / 1e6, args.wait_ms / 1e3
    measuring = False
    totals: list[float] = []
    waits: list[float] = []
    stop = False

    async def client() -> None:
        while not stop:
            started = time.perf_counter()
            await asyncio.sleep(0)  # the request's arrival: a turn of the loop
            _spin(work / 2)
            # what the request waits for mid-way (its sources, a database thread)
            await asyncio.sleep(rng.uniform(0.5, 1.5) * wait if wait else 0)
            _spin(work / 2)
            access = Access("search-type", "/fhir/Patient?x", new_id(), instant(), "b")
            ids = [f"{rng.randrange(args.people):06d}-gp" for _ in range(args.events)]
            rows = RequestEvents(access, who, "0").rows(ids, new_id)
            asked = time.perf_counter()
            await group.record(rows)
            done = time.perf_counter()
            if measuring:
                totals.append(done - started)
                waits.append(done - asked)

    tasks = [asyncio.create_task(client()) for _ in range(args.clients)]
    await asyncio.sleep(args.warm)
    assert proc._proc is not None
    pid = proc._proc.pid
    measuring = True
    c0, n0, t0 = _cpu(pid), group.commits, time.perf_counter()
    await asyncio.sleep(args.seconds)
    measuring = False
    c1, n1, t1 = _cpu(pid), group.commits, time.perf_counter()
    stop = True
    await asyncio.gather(*tasks)
    group.close()
    return {
        "requests": len(totals),
        "cpu": c1 - c0,
        "commits": n1 - n0,
        "seconds": t1 - t0,
        "totals": totals,
        "waits": waits,
    }


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3 if xs else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trail", type=Path, required=True, help="a trail kept by audit_writer.py")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=16, help="requests in flight a worker")
    p.add_argument("--events", type=int, default=13, help="AuditEvents a request")
    p.add_argument("--work-us", type=float, default=1400.0, help="a request's own CPU")
    p.add_argument("--wait-ms", type=float, default=0.0, help="a wait mid-way (sources)")
    p.add_argument("--people", type=int, default=180_000)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warm", type=float, default=2.0)
    p.add_argument("--gather-ms", type=float, default=0.0)
    p.add_argument("--gather-events", type=int, default=0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.scratch:
        import uvloop

        Path(args.out).write_text(json.dumps(uvloop.run(_worker(args))))
        return
    scratch = scratch_copy(args.trail, "load")
    flags = [f"--scratch={scratch}", f"--clients={args.clients}", f"--events={args.events}"]
    flags += [f"--work-us={args.work_us}", f"--people={args.people}", f"--wait-ms={args.wait_ms}"]
    flags += [f"--seconds={args.seconds}", f"--warm={args.warm}"]
    flags += [f"--gather-ms={args.gather_ms}", f"--gather-events={args.gather_events}"]
    try:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    f"--trail={args.trail}",
                    *flags,
                    f"--seed={n}",
                    f"--out={scratch}.{n}.json",
                ]
            )
            for n in range(args.workers)
        ]
        for proc in procs:
            proc.wait()
        results = [json.loads(Path(f"{scratch}.{n}.json").read_text()) for n in range(args.workers)]
    finally:
        for n in range(args.workers):
            Path(f"{scratch}.{n}.json").unlink(missing_ok=True)
        remove(scratch)
    requests = sum(r["requests"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    commits = sum(r["commits"] for r in results)
    seconds = max(r["seconds"] for r in results)
    totals = [t for r in results for t in r["totals"]]
    waits = [t for r in results for t in r["waits"]]
    events = requests * args.events
    print(
        f"workers={args.workers} clients={args.clients} events={args.events} "
        f"work={args.work_us:.0f}us wait={args.wait_ms}ms "
        f"gather={args.gather_ms}ms/{args.gather_events}: "
        f"{requests / seconds:.0f} req/s; writer {cpu / requests * 1e6:.0f} us a request, "
        f"{cpu / events * 1e6:.1f} us an event; {commits / seconds:.0f} commits/s, "
        f"{events / max(commits, 1):.1f} events ({requests / max(commits, 1):.2f} requests) a "
        f"commit; request p50 {_pct(totals, 0.5):.2f} p99 {_pct(totals, 0.99):.2f} ms, "
        f"record p50 {_pct(waits, 0.5):.2f} p99 {_pct(waits, 0.99):.2f} ms; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
