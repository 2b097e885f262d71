"""The NHS-number lookup at two index sizes, the sizes taking turns (issue 15).

Issue 15 asks for the NHS-number lookup's p99 at 909,091 people within 10% of
the 10,000-person figure. Measured one size after the other, a p99 moves with
the machine by far more than 10% between sittings (last stop: 15-232 ms over
HTTP for one size). Here both indexes are measured in one sitting, by turns
(small, full, small, full, ...), so both see the same machine:

    cd benchmarks
    PYTHONPATH=../src ../.venv/bin/python lookup_scale.py \\
        --index small=/work/keep10k/index.db@28500 \\
        --index full=/work/keep909/index.db@27000 [--rounds 10] [--seconds 5]

Each ``--index NAME=URL@PORT`` is a built index (a SQLite file or a PostgreSQL
URL; ``index_bench.py --keep DIR`` leaves one) and the first of the four ports
its running simulators listen on (the gateway names them as its sources).

- **In process**: ``IndexStore.person_by_nhs`` over 20,000 NHS numbers drawn
  uniformly from each whole index, one client, a round per index per turn;
  each round's p50 and p99, and the medians of the rounds.
- **Over HTTP, as clients send it**: one gateway per index (``carelink serve
  --workers 2``, bearer tokens verified, consent and the durable audit trail
  on), ``GET /fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|N``
  for numbers drawn from that index, wrk with ``--connections`` for
  ``--seconds`` a turn; each turn's p50/p99 and req/s, and the medians. Only
  the gateway being measured is asked anything; the other waits idle.

The ratio printed is the full index's median p99 over the small one's; the
target is at most 1.10. Traffic stays on 127.0.0.1; the gateways it starts
are stopped at the end (the simulators are not its own).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation_bench import get, load, mint, process, wrk
from index_bench import lookup_round

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.procs import own_files

from carelink.simulators.population import SOURCES
from carelink.storage import Database, IndexStore

SAMPLE = 20_000
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@dataclass
class Index:
    """One index under test: its store, its numbers, its gateway once started."""

    name: str
    url: str
    sources: dict[str, str]
    store: IndexStore
    numbers: list[str]
    people: int
    base: str = ""
    token: str = ""
    server: int = 0


def parse(spec: str) -> tuple[str, str, int]:
    """``NAME=URL@PORT`` → (name, url, port)."""
    name, _, rest = spec.partition("=")
    url, _, port = rest.rpartition("@")
    if not (name and url and port.isdigit()):
        raise SystemExit(f"--index {spec!r}: expected NAME=URL@PORT")
    return name, url, int(port)


def numbers_of(store: IndexStore, n: int, seed: int) -> tuple[list[str], int]:
    """A uniform sample of ``n`` NHS numbers from the whole index (reservoir), and how
    many people the index holds."""
    rng = random.Random(seed)
    out: list[str] = []
    seen = people = 0
    for p in store.each_person(batch=5000):
        people += 1
        if not p.nhs_number:
            continue
        seen += 1
        if len(out) < n:
            out.append(p.nhs_number)
        elif (k := rng.randrange(seen)) < n:
            out[k] = p.nhs_number
    return out, people


def open_index(spec: str) -> Index:
    name, url, port = parse(spec)
    db = Database(url if "://" in url else str(Path(url).resolve()))
    store = IndexStore(db)
    numbers, people = numbers_of(store, SAMPLE, 3)
    if not numbers:
        raise SystemExit(f"{name}: {url} holds no NHS number")
    sources = {s: f"http://127.0.0.1:{port + k}" for k, s in enumerate(SOURCES)}
    return Index(name, url, sources, store, numbers, people)


def in_process(index: Index, rng: random.Random) -> tuple[float, float]:
    """One round (``index_bench.lookup_round``): (p50, p99) in microseconds."""
    p50, p99 = lookup_round(index.store, index.numbers, rng)
    return p50 * 1e6, p99 * 1e6


def start_gateway(stack: ExitStack, index: Index, port: int, tmp: Path) -> None:
    base = f"http://127.0.0.1:{port}"
    own = tmp / index.name
    own.mkdir()
    env = {
        **os.environ,
        "CARELINK_DATABASE_URL": index.url,
        "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in index.sources.items()),
        "CARELINK_AUTH": "jwt",
        "CARELINK_AUDIENCE": f"{base}/fhir",
        "CARELINK_LOG_LEVEL": "warning",
        **own_files(own),
    }
    carelink = [sys.executable, "-m", "carelink"]
    index.server = stack.enter_context(
        process(
            [*carelink, "serve", "--port", str(port), "--workers", "2"],
            f"{base}/fhir/metadata",
            env,
        )
    )
    index.base = base
    index.token = mint(env)
    found = json.loads(get(f"{base}/fhir/Patient?identifier={NHS}|{index.numbers[0]}", index.token))
    if found.get("total") != 1:
        raise SystemExit(f"{index.name}: the gateway did not find a number its index holds")


def over_http(index: Index, args: argparse.Namespace, tmp: Path, turn: int) -> dict[str, Any]:
    rng = random.Random(turn)
    paths = [f"/fhir/Patient?identifier={NHS}|{n}" for n in rng.sample(index.numbers, 2000)]
    run = tmp / f"{index.name}-wrk"
    run.mkdir(exist_ok=True)
    return wrk(index.base, paths, args.seconds, args.connections, run, index.token, index.server)


def median(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in rows)), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    indexes = [open_index(spec) for spec in args.index]
    small, full = indexes
    out: dict[str, Any] = {
        "people": {i.name: i.people for i in indexes},
        "load_at_start": load(),
    }
    rng = random.Random(5)
    rounds: dict[str, list[tuple[float, float]]] = {i.name: [] for i in indexes}
    for _ in range(args.rounds):
        for index in indexes:
            rounds[index.name].append(in_process(index, rng))
    out["in_process_us"] = {
        name: {
            "p50": round(statistics.median(r[0] for r in rs), 1),
            "p99": round(statistics.median(r[1] for r in rs), 1),
            "p99_each": [round(r[1], 1) for r in rs],
        }
        for name, rs in rounds.items()
    }
    out["in_process_ratio"] = round(
        out["in_process_us"][full.name]["p99"] / out["in_process_us"][small.name]["p99"], 3
    )
    if args.seconds and shutil.which("wrk") is not None:
        tmp = Path(tempfile.mkdtemp(prefix="lookup-scale-"))
        try:
            with ExitStack() as stack:
                for k, index in enumerate(indexes):
                    start_gateway(stack, index, args.port + k, tmp)
                turns: dict[str, list[dict[str, Any]]] = {i.name: [] for i in indexes}
                for turn in range(args.rounds):
                    for index in indexes:
                        turns[index.name].append(over_http(index, args, tmp, turn))
                out["http"] = {
                    name: {
                        "rps": median(ts, "rps"),
                        "p50_ms": median(ts, "p50_ms"),
                        "p99_ms": median(ts, "p99_ms"),
                        "cpu_us": median(ts, "cpu_us"),
                        "p99_each": [t["p99_ms"] for t in ts],
                        "errors": sum(t["errors"] for t in ts),
                    }
                    for name, ts in turns.items()
                }
                out["http_ratio"] = round(
                    out["http"][full.name]["p99_ms"] / out["http"][small.name]["p99_ms"], 3
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["load_at_end"] = load()
    for index in indexes:
        index.store.close()
        index.store.db.dispose()
    return out


def report(r: dict[str, Any]) -> None:
    names = list(r["people"])
    sizes = ", ".join(f"{n} {r['people'][n]:,}" for n in names)
    print(f"people: {sizes}")
    print(f"load {r['load_at_start']} -> {r['load_at_end']}")
    for n in names:
        m = r["in_process_us"][n]
        print(
            f"in process  {n:>6}: p50 {m['p50']:8.1f} us  p99 {m['p99']:8.1f} us"
            f"  rounds {m['p99_each']}"
        )
    verdict = "within" if r["in_process_ratio"] <= 1.10 else "NOT within"
    print(f"in process: p99 ratio {r['in_process_ratio']} ({verdict} 10%)")
    if "http" in r:
        for n in names:
            m = r["http"][n]
            print(
                f"over HTTP   {n:>6}: {m['rps']:8.0f} req/s  p50 {m['p50_ms']:6.2f} ms  "
                f"p99 {m['p99_ms']:6.2f} ms  CPU {m['cpu_us']:6.0f} us/req  errors {m['errors']}"
                f"  turns {m['p99_each']}"
            )
        verdict = "within" if r["http_ratio"] <= 1.10 else "NOT within"
        print(f"over HTTP: p99 ratio {r['http_ratio']} ({verdict} 10%)")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--index", action="append", required=True, help="NAME=URL@PORT, twice: small then full"
    )
    p.add_argument("--rounds", type=int, default=10, help="turns per index (default 10)")
    p.add_argument(
        "--seconds", type=int, default=5, help="wrk seconds a turn; 0: in process only (default 5)"
    )
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--port", type=int, default=27050, help="first gateway port (default 27050)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    if len(args.index) != 2:
        raise SystemExit("give --index twice: the small index, then the full one")
    r = run(args)
    report(r)
    if args.out:
        args.out.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
