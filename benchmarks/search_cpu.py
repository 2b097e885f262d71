"""CPU per Patient search, in process, on a kept index: per form, and by people found.

    PYTHONPATH=src .venv/bin/python benchmarks/search_cpu.py --database DIR/index.db
        [--forms "family+birthdate,year range"] [--requests 2000] [--profile]

``index_bench.py --keep DIR`` builds an index and keeps it; this searches it
again with the gateway app created in this process, every safeguard on
(bearer tokens verified, consent, the durable audit trail in its writer
process, request ids, access lines, metrics), driving the same 2,000 searches
per form that ``index_bench.py`` sends over HTTP through the ASGI interface.

Two passes per form:

- one request at a time: each request's CPU (``time.process_time``, this
  process only), with the number of people it returned, so a tail is seen to
  be a few dear requests or not, and the cost of each person returned is the
  slope of CPU against people (least squares);
- 32 in flight, as wrk drives the server: CPU per request of this process and
  of its children (the audit writer), and each request's time in the loop.

On PostgreSQL each pass also reports the database's own CPU a request
(``backend_cpu.py``: its backends' time on a CPU from ``/proc/<pid>/schedstat``),
for this process's reads and for the others' (the audit writer's appends).

The audit events are written into the index's database, as a gateway on that
database would write them (``--database`` is searched and appended to).

``--instructions`` counts instead the instructions this process executes in the
one-at-a-time pass (``valgrind --tool=callgrind``, counting on only around it, the
audit writer child not counted), which do not move with the machine's load: for an
A/B of two checkouts on a shared machine. The searches are counted in two halves,
those returning the fewest people and the rest, and the difference between the
halves over the difference in people is the cost of a person returned. Before
them, as many other searches run, so the memos are full of other people (at least
300 ``--requests``, for more people than a memo keeps). ~50 times slower: give fewer
``--requests`` (the first N of the same searches).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging.config
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.backend_cpu import Backends
from benchmarks.callgrind import control, counted
from benchmarks.federation_bench import mint, tree_cpu
from benchmarks.lookup_cpu import ROOT, App, one  # lookup_cpu puts src/ on the path
from tests.support.procs import own_files

#: the forms of ``index_bench.HTTP_FORMS``, built the same way (``search_paths``)
FORMS = ("family+birthdate", "+given", "+gender", "+postcode", "family:exact", "year range")


def search_paths(people: list[object], form: str, n: int, seed: int) -> list[str]:
    """``index_bench.search_paths``: imported lazily (it needs the build's imports)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from index_bench import search_paths as paths

    return paths(people, form, n, seed)  # type: ignore[arg-type]


def sample_of(database: str) -> list[object]:
    """The people ``index_bench.measure`` searches for: the first 20,000 with a full
    birth date, in id order (without their Patient, which the paths do not need)."""
    from carelink.storage import Database, IndexStore

    db = Database(database)
    try:
        out = []
        for p in IndexStore(db).each_person(batch=5000):
            if p.birth_date and len(p.birth_date) == 10:
                out.append(replace(p, patient=b""))
                if len(out) >= 20_000:
                    break
        return out
    finally:
        db.dispose()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_at_a_time(app: App, paths: list[str], token: str) -> list[tuple[float, int]]:
    """(CPU seconds, people returned) of each request, one request at a time."""
    out = []
    for path in paths:
        cpu = time.process_time()
        status, body = await one(app, path, token)
        used = time.process_time() - cpu
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:200]!r}")
        out.append((used, people_in(body)))
    return out


def people_in(body: bytes) -> int:
    """The Patients a searchset returned."""
    entries = json.loads(body).get("entry", ())
    return sum(e["resource"]["resourceType"] == "Patient" for e in entries)


async def in_flight(
    app: App, paths: list[str], token: str, n: int, inflight: int = 32
) -> tuple[float, float, list[float]]:
    """(this process's CPU seconds, its children's, each request's seconds in the loop)
    for ``n`` requests over ``paths`` in turn, ``inflight`` at a time."""
    sem = asyncio.Semaphore(inflight)
    took: list[float] = []

    async def task(path: str) -> None:
        async with sem:
            t = time.perf_counter()
            status, _ = await one(app, path, token)
            took.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"{path}: {status}")

    tree = tree_cpu(os.getpid())  # this process and its descendants
    cpu = time.process_time()
    await asyncio.gather(*(task(paths[i % len(paths)]) for i in range(n)))
    own = time.process_time() - cpu
    return own, tree_cpu(os.getpid()) - tree - own, took


def slope(points: list[tuple[float, int]]) -> float | None:
    """Least-squares CPU seconds per person returned (None: all returned as many)."""
    xs = [float(n) for _, n in points]
    if len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, [c for c, _ in points]).slope


async def count(args: argparse.Namespace, env: dict[str, str], token: str) -> list[tuple[int, int]]:
    """Under callgrind: the first ``--requests`` searches of the form, one at a time, in two
    counted halves (those returning the fewest people, then the rest; each half's counts
    dumped on their own), after a pass that finds how many each returns and one over as
    many other searches. Each half's (searches, people returned)."""
    from carelink.app import create_app
    from carelink.observability.logs import log_config
    from carelink.settings import Settings

    sample = sample_of(args.database)
    logging.config.dictConfig(log_config(args.log_level))
    app = create_app(Settings.from_env(env))
    halves = []
    async with app.router.lifespan_context(app):
        (form,) = args.forms
        every = search_paths(sample, form, 2000, FORMS.index(form))
        paths = every[: args.requests]
        found = await one_at_a_time(app, paths, token)  # how many each returns
        # then as many other searches: the memos are full, and not of these people (as
        # for searches that rarely meet the same people again)
        await one_at_a_time(app, every[args.requests : 2 * args.requests], token)
        order = sorted(range(len(paths)), key=lambda i: found[i][1])
        for half in (order[: len(order) // 2], order[len(order) // 2 :]):
            answers = []
            control("-i", "on")
            for i in half:
                answers.append(await one(app, paths[i], token))
            control("-i", "off")
            control("-d")
            assert all(status == 200 for status, _ in answers)
            # read here, not counted: parsing the answers is the client's work
            halves.append((len(half), sum(people_in(body) for _, body in answers)))
    return halves


def instructions(args: argparse.Namespace, env: dict[str, str], token: str) -> None:
    """Run ``count`` under callgrind, one form at a time; print instructions per request,
    and per person returned (the slope between the two halves)."""
    for form in args.forms:
        people = Path(tempfile.mkdtemp(prefix="carelink-search-ir-")) / "people.json"
        child = [
            "--child",
            f"--database={args.database}",
            f"--forms={form}",
            f"--requests={args.requests}",
        ]
        run_env = {**env, "SEARCH_TOKEN": token, "SEARCH_PEOPLE": str(people)}
        totals = counted(Path(__file__).resolve(), child, run_env, dumps=2)
        if not people.exists():
            sys.exit("the counted searches wrote no people")
        (n1, p1), (n2, p2) = json.loads(people.read_text())
        low, high = totals[0] / n1, totals[1] / n2
        per = (high - low) / (p2 / n2 - p1 / n1)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"{form}: {(totals[0] + totals[1]) / (n1 + n2):,.0f} instructions a request over"
            f" {n1 + n2} searches ({(p1 + p2) / (n1 + n2):.2f} people a search); fewer half"
            f" {low:,.0f} ({p1 / n1:.2f} people), more half {high:,.0f} ({p2 / n2:.2f});"
            f" {per:,.0f} a person returned; load {load}",
            flush=True,
        )


async def measure(args: argparse.Namespace, env: dict[str, str], token: str) -> None:
    from carelink.app import create_app
    from carelink.observability.logs import log_config
    from carelink.settings import Settings

    sample = sample_of(args.database)
    logging.config.dictConfig(log_config(args.log_level))  # as `carelink serve` does
    app = create_app(Settings.from_env(env))
    backends = Backends(args.database) if "://" in args.database else None
    async with app.router.lifespan_context(app):
        for form in args.forms:
            paths = search_paths(sample, form, args.requests, FORMS.index(form))
            await in_flight(app, paths, token, min(len(paths), 500))  # warm
            # CPU time, not wall time: the machine is shared, and waiting is not what is cut
            prof = cProfile.Profile(time.process_time) if args.profile else None
            if prof:
                prof.enable()
            before = backends.cpu() if backends else None
            each = await one_at_a_time(app, paths, token)
            alone = backends.cpu() - before if backends and before else None
            if prof:
                prof.disable()
            us = [c * 1e6 for c, _ in each]
            people = [n for _, n in each]
            per = slope(each)
            by_n: dict[int, list[float]] = {}
            for c, n in each:
                by_n.setdefault(n, []).append(c * 1e6)
            before = backends.cpu() if backends else None
            cpu, children, took = await in_flight(app, paths, token, len(paths))
            together = backends.cpu() - before if backends and before else None
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(
                f"{form}: one at a time: CPU per request mean {statistics.fmean(us):.0f} us,"
                f" p50 {quantile(us, 0.5):.0f}, p99 {quantile(us, 0.99):.0f},"
                f" max {max(us):.0f}; people returned mean {statistics.fmean(people):.2f},"
                f" max {max(people)}; per person returned"
                f" {'-' if per is None else f'{per * 1e6:.0f}'} us",
                flush=True,
            )
            print(
                "  by people returned (n: requests, mean CPU us): "
                + ", ".join(
                    f"{n}: {len(v)}, {statistics.fmean(v):.0f}" for n, v in sorted(by_n.items())
                )
            )
            ms = [t * 1e3 for t in took]
            print(
                f"  32 in flight: CPU per request {cpu / len(paths) * 1e6:.0f} us here +"
                f" {children / len(paths) * 1e6:.0f} us in children (audit writer);"
                f" in the loop p50 {quantile(ms, 0.5):.1f} ms, p99 {quantile(ms, 0.99):.1f} ms;"
                f" load {load}",
                flush=True,
            )
            for label, used in (("one at a time", alone), ("32 in flight", together)):
                if used is not None:
                    print(
                        f"  PostgreSQL backends, {label}: CPU per request"
                        f" {used.own / len(paths) * 1e6:.0f} us for this process's reads +"
                        f" {used.others / len(paths) * 1e6:.0f} us for others (audit writer)",
                        flush=True,
                    )
            if prof:
                pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)


def search_env(database: str, tmp: Path) -> dict[str, str]:
    """The environment of a gateway that searches ``database`` (a SQLite file or a
    PostgreSQL URL) with every safeguard on; its own keys and files in ``tmp``."""
    return {
        **os.environ,
        "CARELINK_DATABASE_URL": database if "://" in database else str(Path(database).resolve()),
        # the search asks no source; these are never called
        "CARELINK_SOURCES": "acute=http://127.0.0.1:9/a,gp=http://127.0.0.1:9/g,"
        "community=http://127.0.0.1:9/c,social-care=http://127.0.0.1:9/s",
        "CARELINK_AUTH": "jwt",
        "CARELINK_AUDIENCE": "http://127.0.0.1:8000/fhir",
        "CARELINK_PUBLIC_BASE_URL": "http://127.0.0.1:8000/fhir",
        **own_files(tmp),
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--database", required=True, help="a kept index: a SQLite file or a PostgreSQL URL"
    )
    ap.add_argument("--forms", default=",".join(FORMS), help="comma-separated")
    ap.add_argument("--requests", type=int, default=2000, help="searches per form")
    ap.add_argument("--profile", action="store_true", help="cProfile the one-at-a-time pass")
    ap.add_argument("--log-level", default="warning", help="as serve's (access lines at info)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative ...")
    ap.add_argument(
        "--instructions", action="store_true", help="count instructions (callgrind) instead"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.forms = [f for f in args.forms.split(",") if f]
    if args.child:  # under callgrind, in the environment the parent prepared
        halves = asyncio.run(count(args, dict(os.environ), os.environ["SEARCH_TOKEN"]))
        Path(os.environ["SEARCH_PEOPLE"]).write_text(json.dumps(halves))
        return
    tmp = Path(tempfile.mkdtemp(prefix="carelink-search-cpu-"))
    env = search_env(args.database, tmp)
    init = [sys.executable, "-m", "carelink", "init"]
    subprocess.run(init, env=env, check=True, stdout=subprocess.DEVNULL)
    if args.instructions:
        instructions(args, env, mint(env))
    else:
        asyncio.run(measure(args, env, mint(env)))


if __name__ == "__main__":
    main()
