"""How long an index build keeps the gateway's writes waiting, on SQLite.

Every request the gateway answers appends to the audit trail in the same
database file as the patient index; a request whose write waits longer than
``CARELINK_DB_TIMEOUT`` (5 s) fails with a 503. This runs builds of the index
(the first over an empty index, then rebuilds over it) while a probe process
writes one row every ``--every`` seconds to that file (``BEGIN IMMEDIATE``, an
insert, ``COMMIT``: the audit's own way of writing) and records how long each
write waited. The build's own connection is traced, so each long wait is
printed with the build's statements that ran during it.

    PYTHONPATH=src .venv/bin/python benchmarks/write_stall.py \\
        --sources http://127.0.0.1:27100 --dir /tmp/stall --builds 2

``--sources`` is the first of four simulators' ports in ``population.SOURCES``
order (``carelink simulate``, started by hand with the population wanted).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from carelink.assembly import sources_open
from carelink.federation.build import build_index
from carelink.settings import Settings
from carelink.simulators.population import SOURCES
from carelink.storage import Database, IndexBuild, IndexStore

#: a wait longer than this is listed with what the build ran meanwhile
LISTED = 0.5


def probe(path: str, every: float, out: str, stop: Any) -> None:
    """Write one row every ``every`` seconds until ``stop`` is set; record each wait."""
    conn = sqlite3.connect(path, timeout=600, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS write_probe (at REAL, waited REAL)")
    waits: list[tuple[float, float]] = []
    while not stop.is_set():
        began = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO write_probe VALUES (?, ?)", (began, 0.0))
        conn.execute("COMMIT")
        waits.append((began, time.time() - began))
        time.sleep(max(0.0, every - (time.time() - began)))
    Path(out).write_text(json.dumps(waits))


#: (wall time, statement) of every statement the build's own connection ran
TRACE: list[tuple[float, str]] = []


def _traced(init: Any) -> Any:
    def __init__(self: IndexBuild, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self.db.is_sqlite:
            self._conn.set_trace_callback(lambda sql: TRACE.append((time.time(), sql[:90])))

    return __init__


async def one_build(settings: Settings, store: IndexStore) -> dict[str, float]:
    async with sources_open(settings, store.db) as named:
        report = await build_index(list(named.values()), store, refuse_empty=True, writers=2)
    return {**report.seconds, "cleared rows": report.cleared}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", required=True, help="the first simulator's URL")
    ap.add_argument("--dir", required=True, help="a folder for the database (emptied)")
    ap.add_argument("--builds", type=int, default=2, help="the first build, then rebuilds")
    ap.add_argument("--every", type=float, default=0.05)
    args = ap.parse_args()
    base, port = args.sources.rsplit(":", 1)
    here = Path(args.dir)
    here.mkdir(parents=True, exist_ok=True)
    for f in here.iterdir():
        f.unlink()
    path = str(here / "carelink.db")
    os.environ["CARELINK_DATABASE_URL"] = path
    settings = Settings.from_env()
    sources = {name: f"{base}:{int(port) + n}" for n, name in enumerate(SOURCES)}
    settings = dataclasses.replace(settings, sources=sources, budget=30.0)
    db = Database(path)
    db.migrate()
    store = IndexStore(db)
    IndexBuild.__init__ = _traced(IndexBuild.__init__)  # type: ignore[method-assign]
    for n in range(args.builds):
        TRACE.clear()
        stop = multiprocessing.get_context("spawn").Event()
        out = str(here / f"waits{n}.json")
        writer = multiprocessing.get_context("spawn").Process(
            target=probe, args=(path, args.every, out, stop)
        )
        writer.start()
        time.sleep(1.0)
        began = time.time()
        seconds = asyncio.run(one_build(settings, store))
        ended = time.time()
        time.sleep(1.0)
        stop.set()
        writer.join()
        waits = json.loads(Path(out).read_text())
        during = sorted((w for at, w in waits if began <= at <= ended), reverse=True)
        over = [w for w in during if w > 1.0]
        kind = "first build" if n == 0 else "rebuild"
        print(
            f"{kind}: {ended - began:.1f} s {seconds}; probe writes {len(during)}, "
            f"longest {during[0]:.2f} s, over 1 s: {len(over)}, over 5 s: "
            f"{sum(1 for w in during if w > 5.0)}",
            flush=True,
        )
        for at, w in sorted(waits, key=lambda x: -x[1])[:8]:
            if w <= LISTED:
                break
            ran = [
                sql
                for i, (t, sql) in enumerate(TRACE)
                if at <= t <= at + w or (t < at and (i + 1 == len(TRACE) or TRACE[i + 1][0] > at))
            ]
            print(f"  {w:.2f} s at +{at - began:.1f} s: {ran[:4]}", flush=True)
    db.dispose()


if __name__ == "__main__":
    sys.exit(main())
