"""De-identification throughput and memory on a large streamed extract.

Streams N resources (the shared Synthea export, repeated with fresh ids)
NDJSON line -> orjson parse -> de-identify (a shipped profile) -> serialise
-> file, and in the same run the same N lines through plain orjson parse +
serialise. Reports resources per second for both and the process's peak RSS,
which stays flat however large N is (nothing is held but one resource).

    .venv/bin/python benchmarks/deid_bench.py --resources 1000000 [--profile pseudonymised]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.rules import load

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "tests" / "data" / "synthea-bulk-10"


def lines(n: int) -> Iterator[bytes]:
    base = [
        line
        for f in sorted(SYNTHEA.glob("*.ndjson"))
        for line in f.read_bytes().splitlines()
        if line.strip()
    ]
    i = 0
    while i < n:
        for line in base:
            if i >= n:
                return
            # A fresh id per copy, without parsing (the parse is what is measured).
            yield line.replace(b'"id":"', f'"id":"c{i}-'.encode(), 1)
            i += 1


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resources", type=int, default=100_000)
    # The rules files under consent/deid/ (the anonymised profile is a release, not rules:
    # benchmarks/extract_bench.py --profile anonymised measures it).
    rules = sorted(f.stem for f in (ROOT / "consent" / "deid").glob("*.json"))
    p.add_argument("--profile", default="pseudonymised", choices=rules)
    args = p.parse_args()
    engine = Anonymiser(
        load(ROOT / "consent" / "deid" / f"{args.profile}.json"),
        ProjectKeys.for_project(b"k" * 32, "bench"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.ndjson"
        start_rss = rss_mb()
        t = time.perf_counter()
        with out.open("wb") as f:
            for line in lines(args.resources):
                f.write(orjson.dumps(orjson.loads(line)) + b"\n")
        plain = args.resources / (time.perf_counter() - t)
        t = time.perf_counter()
        marks = []
        with out.open("wb") as f:
            for i, line in enumerate(lines(args.resources)):
                r = orjson.loads(line)
                f.write(orjson.dumps(engine.apply(r, person=str(i % 5000))) + b"\n")
                if i % (args.resources // 10 or 1) == 0:
                    marks.append(round(rss_mb()))
        deid = args.resources / (time.perf_counter() - t)
    print(f"resources: {args.resources:,} ({args.profile})")
    print(f"orjson parse + serialise: {plain:,.0f} resources/s")
    print(f"parse + de-identify + serialise: {deid:,.0f} resources/s ({plain / deid:.0f}x slower)")
    print(f"peak RSS: {rss_mb():.0f} MB (at start {start_rss:.0f} MB; every 10%: {marks})")


if __name__ == "__main__":
    main()
