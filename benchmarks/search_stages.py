"""Instructions of each stage of one Patient search, and of the audit writer's append.

    PYTHONPATH=src .venv/bin/python benchmarks/search_stages.py --database DIR/index.db
        [--family holmes --given a --year 1979] [--calls 200]

``search_cpu.py --instructions`` counts whole searches; this counts, under callgrind,
``--calls`` calls of each stage of one year-range search (``family``, ``given``'s
initial, ``birthdate=ge<year>-01-01&birthdate=le<year>-12-31``) on a kept index, in a
gateway app made in this process: reading the parameters, the SQL text, the read with
consents, consent's answer per person, the whole walk (``find_people``), the audit rows
and their frame; and the writer's append of the search's events (one transaction per
search, on a copy of the database). The Patients are parsed once before counting (the
memo's hits): ``search_cpu.py`` counts the parse. Each figure is per call and, divided
by the people the search returns, per person.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.callgrind import control, counted
from benchmarks.search_cpu import search_env

Stages = dict[str, Callable[[], Any]]


def stages(app: Any, args: argparse.Namespace, trail: Path) -> tuple[Stages, int]:
    """The stages to count, and how many people the search returns."""
    from carelink.api import access
    from carelink.api import params as P
    from carelink.api.deps import actor
    from carelink.api.patient_routes import _shown_batch
    from carelink.audit.events import Access, RequestEvents, Who
    from carelink.audit.writer import frame_rows, rows_frame
    from carelink.auth import Principal
    from carelink.federation.patient_search import find_people, patient_params, patient_query
    from carelink.observability.context import new_id
    from carelink.storage import Database
    from carelink.storage.audit_store import AuditStore, NewEvent

    record, guard = app.state.record, app.state.guard
    year = args.year
    asked = {
        "family": [args.family],
        "given": [args.given],
        "birthdate": [f"ge{year}-01-01", f"le{year}-12-31"],
    }
    params, _ = patient_params(asked)
    now = datetime.now(UTC)
    query = patient_query(params, record.fanout.sources, now)
    rows, held = record.index.find_with_consents(query, limit=500)
    caller = Principal(
        subject="dr-1",
        scopes=frozenset({"user/*.rs"}),
        role="R8000",
        organisation="RXX01",
        purpose="TREAT",
        issuer="https://idp.example",
    )
    who = actor(caller)
    patients = [record.index_patient(r) for r in rows]
    people = [(r.id, p) for r, p in zip(rows, patients, strict=True)]
    glass: set[str] = set()
    paging = P.paging(params, params, 50, 1000)
    made = RequestEvents(
        Access("search-type", "/fhir/Patient?x", new_id(), "2026-12-02T05:00:00.000001Z", "b"),
        Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example"),
        "0",
    )
    ids = [r.id for r in rows]

    def audit_rows() -> list[Any]:
        if hasattr(made, "rows"):
            return made.rows(ids, new_id)  # type: ignore[no-any-return]
        return [made.row(i, new_id()) for i in ids]  # a tree before RequestEvents.rows

    frame = rows_frame(audit_rows())
    store = AuditStore(Database(str(trail)))

    def shown(found: Any, consents: Any) -> Any:
        return _shown_batch(record, caller, who, guard, found, glass, consents)

    return {
        "parameters (patient_query)": lambda: patient_query(params, record.fanout.sources, now),
        "SQL text": lambda: record.index._find_sql(query, "", 500),
        "read with consents": lambda: record.index.find_with_consents(query, limit=500),
        "visible (scopes)": lambda: access.visible(caller, patients, "s"),
        "consent (filter_people)": lambda: guard.filter_people(who, people, held, True),
        "shown (_shown_batch)": lambda: _shown_batch(record, caller, who, guard, rows, glass, held),
        "find_people (all above)": lambda: find_people(record.index, query, shown, 0, 50),
        "links": lambda: paging.links("http://127.0.0.1:8000/fhir/Patient", len(rows)),
        "audit rows": audit_rows,
        "audit rows and frame": lambda: rows_frame(audit_rows()),
        "writer: append (child)": lambda: store.append([NewEvent(*r) for r in frame_rows(frame)]),
    }, len(rows)


def child(args: argparse.Namespace) -> None:
    """Under callgrind: each stage counted on its own (a dump each)."""
    from carelink.app import create_app
    from carelink.settings import Settings

    app = create_app(Settings.from_env(dict(os.environ)))
    trail = Path(tempfile.mkdtemp(prefix="carelink-stages-")) / "trail.db"
    shutil.copy(args.database, trail)

    async def run() -> tuple[list[str], int]:
        async with app.router.lifespan_context(app):
            measured, people = stages(app, args, trail)
            for fn in measured.values():
                for _ in range(20):
                    fn()
                control("-i", "on")
                for _ in range(args.calls):
                    fn()
                control("-i", "off")
                control("-d")
            return list(measured), people

    Path(os.environ["STAGES_OUT"]).write_text(json.dumps(asyncio.run(run())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database", required=True, help="a kept SQLite index (copied for the writer)")
    ap.add_argument("--family", default="holmes")
    ap.add_argument("--given", default="a")
    ap.add_argument("--year", default="1979")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="carelink-stages-"))
    env = {**search_env(args.database, tmp), "STAGES_OUT": str(tmp / "stages.json")}
    init = [sys.executable, "-m", "carelink", "init"]
    subprocess.run(init, env=env, check=True, stdout=subprocess.DEVNULL)
    flags = [f"--database={Path(args.database).resolve()}", f"--calls={args.calls}"]
    flags += [f"--family={args.family}", f"--given={args.given}", f"--year={args.year}"]
    totals = counted(Path(__file__).resolve(), ["--child", *flags], env, dumps=11)
    names, people = json.loads((tmp / "stages.json").read_text())
    print(f"a search returning {people} people; instructions a call (a person):")
    for name, total in zip(names, totals, strict=False):
        per = total / args.calls
        print(f"  {name:28s} {per:>11,.0f}  ({per / max(people, 1):,.0f})")


if __name__ == "__main__":
    main()
