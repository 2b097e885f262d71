"""A whole extract, end to end, and the memory it takes as it grows.

Starts the four simulators (as separate processes, ``--latency-ms`` each),
builds the patient index in a temporary SQLite file, then runs
``carelink extract`` (the pipeline ``$export`` runs: cohort, opt-outs,
federation of every person's record from the four sources, consent for
secondary use, de-identification, NDJSON, Parquet tables, data dictionary)
as a child process, sampling its resident memory every 0.25 s. Reports the
resources written, resources per second, the peak RSS (from ``wait4``) and
the RSS at each tenth of the run, so a flat line shows memory bounded while
the extract grows.

    .venv/bin/python benchmarks/extract_bench.py --people 1000 [--profile pseudonymised]

About 100 resources a person: ``--people 10000`` is a ~1,000,000-resource
extract. Traffic goes to 127.0.0.1 only; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from federation_bench import simulators

ROOT = Path(__file__).resolve().parents[1]


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    samples: list[tuple[float, int]] = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        kb = rss_kb(proc.pid)
        if kb is not None:
            samples.append((time.monotonic() - start, kb))
        time.sleep(0.25)
    wall = time.monotonic() - start
    output = proc.stdout.read().decode() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"extract failed:\n{output}")
    tenths = []
    for i in range(1, 11):
        upto = [kb for t, kb in samples if t <= wall * i / 10]
        tenths.append(round(max(upto) / 1024, 1) if upto else None)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "rss_mb_by_tenth": tenths,
        "output": output,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--people", type=int, default=1000, help="population size")
    p.add_argument("--profile", default="pseudonymised", choices=["pseudonymised", "anonymised"])
    p.add_argument("--latency-ms", type=float, default=1.0)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="carelink-extract-bench-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    carelink = [sys.executable, "-m", "carelink"]
    try:
        with ExitStack() as stack:
            urls = simulators(stack, args.people, args.latency_ms)
            env["CARELINK_SOURCES"] = ",".join(f"{k}={v}" for k, v in urls.items())
            env["CARELINK_DATABASE_URL"] = str(tmp / "bench.db")
            subprocess.run(
                [*carelink, "index", "build"], env=env, check=True, stdout=subprocess.DEVNULL
            )
            out = tmp / "extract"
            print(f"extracting {args.people:,} people ({args.profile}) ...", flush=True)
            result = measure(
                [
                    *carelink,
                    "extract",
                    "--project",
                    "bench",
                    "--profile",
                    args.profile,
                    "--out",
                    str(out),
                ],
                env,
            )
            manifest = json.loads((out / "manifest.json").read_text())
            counts = manifest["counts"]
            total = sum(counts.values())
            on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {
        "machine": {"cores": os.cpu_count()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "people": args.people,
        "resources": total,
        "by_type": counts,
        "resources_per_s": round(total / result["wall_s"]),
        "bytes_written": on_disk,
        **{k: v for k, v in result.items() if k != "output"},
    }
    print(
        f"{total:,} resources from {args.people:,} people in {result['wall_s']} s "
        f"({results['resources_per_s']:,} resources/s, {result['cpu_s']} s CPU in the extract)"
    )
    print(f"peak RSS {result['peak_rss_mb']} MB; by tenth of the run: {result['rss_mb_by_tenth']}")
    print(f"written {on_disk / 1e6:.0f} MB (NDJSON + Parquet + dictionary)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
