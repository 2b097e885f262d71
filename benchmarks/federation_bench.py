"""Lookup and $everything throughput and latency, each beside its ceilings.

One command, one run (about four minutes on 2 cores):

    .venv/bin/python benchmarks/federation_bench.py [--workers 1] [--duration 15] [--runs 3]
        [--port P]

It starts the four simulators as separate processes with ~20 ms median
latency (log-normal), builds the index in a temporary SQLite file, starts the
gateway with every safeguard on (bearer tokens verified, consent, the durable
audit trail, request ids, access logs and metrics; ``--auth development`` leaves
tokens out), resolves a spread of patients, then drives each endpoint with wrk
at 32 connections: (a) the lookup by NHS number, (b) ``$everything``; each
beside two ceilings serving the very same response bytes with the same worker
count, measured in the same run: a raw ASGI app and a bare FastAPI endpoint
(``benchmarks/bare.py``); and the simulators' own latency measured directly,
after each ``$everything`` run (``--runs`` of them). Targets (issue #13): lookup
>= 50% of the bare FastAPI endpoint's req/s; ``$everything`` p99 <= the
simulators' p99 + 25 ms in every run. Results are printed and written as JSON
(``--out``). Traffic goes to 127.0.0.1 only; every process it starts is stopped
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
math.randomseed(7)
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%f %%f %%f %%f %%d\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.duration))
end
"""


class Ports:
    """The ports the bench listens on: from ``first`` on when given (the simulators
    ``first`` to ``first + 3``, then one each for the gateway and the ceilings), else
    each one the OS says is free (the simulators four in a row from one such port, which
    another process may hold: give ``--port`` on a busy machine)."""

    def __init__(self, first: int | None) -> None:
        self.next = first

    def simulators(self) -> int:
        """The first of the four simulators' ports."""
        if self.next is None:
            return free_port()
        first = self.next
        self.next += 4
        return first

    def one(self) -> int:
        """A port for one more server."""
        if self.next is None:
            return free_port()
        self.next += 1
        return self.next - 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited")  # type: ignore[arg-type]
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and every living
    descendant (the server's workers, the audit writer): what the machine spends on it
    whatever else runs beside it."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total = 0.0
    for p, seconds in used.items():
        q = p
        while q not in (0, 1) and q != pid:
            q = parent.get(q, 0)
        if q == pid:
            total += seconds
    return total


@contextmanager
def process(args: list[str], ready: str, env: dict[str, str]) -> Iterator[int]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(ready, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def simulators(stack: ExitStack, size: int, latency_ms: float, first: int) -> dict[str, str]:
    """The four simulators on ``first`` and the next three ports, started as the demo
    starts them, stopped with ``stack``."""
    from carelink.demo import start_simulators

    urls, procs = start_simulators(size, 42, first, latency_ms)
    for proc in procs:
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
    return urls


def get(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
        return bytes(resp.read())


def mint(env: dict[str, str]) -> str:
    """One clinician's bearer token for the gateway ``env`` configures (two hours)."""
    return subprocess.run(
        [sys.executable, "-m", "carelink", "token", "mint", "--minutes", "120"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def load() -> str:
    """The machine's load averages (1, 5, 15 min) now."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wrk(
    url_base: str,
    paths: list[str],
    seconds: int,
    connections: int,
    tmp: Path,
    token: str | None = None,
    server: int | None = None,
) -> dict[str, Any]:
    """Run wrk over ``paths`` (chosen at random per request); req/s and latency in ms,
    and with ``server`` (a pid) that server's CPU per request in microseconds."""
    (tmp / "paths.txt").write_text("\n".join(paths) + "\n")
    (tmp / "script.lua").write_text(LUA % (tmp / "paths.txt"))
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    before = load()
    cpu = tree_cpu(server) if server is not None else 0.0
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            *auth,
            "-s",
            str(tmp / "script.lua"),
            url_base,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    n, errors, p50, p95, p99, top, micros = m.groups()
    cpu_us = None if server is None else (tree_cpu(server) - cpu) / int(n) * 1e6
    return {
        "cpu_us": cpu_us,
        "rps": int(n) / (int(micros) / 1e6),
        "errors": int(errors),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(top),
        "load_before": before,
        "load_after": load(),
    }


def ceiling(
    body: bytes,
    paths: list[str],
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    app: str = "benchmarks.bare:app",
) -> dict[str, Any]:
    """The same bytes from a bare app (``app``) with the gateway's worker count."""
    (tmp / "body.json").write_bytes(body)
    port = args.ports.one()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with process(
        cmd,
        f"http://127.0.0.1:{port}/",
        {**env, "BARE_BODY": str(tmp / "body.json"), "PYTHONPATH": str(ROOT)},
    ) as pid:
        time.sleep(1)
        return wrk(f"http://127.0.0.1:{port}", paths, args.duration, 32, tmp, server=pid)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="carelink-bench-"))
    # every process runs this tree's code (the simulators too, which the demo starts with
    # this process's environment), whichever checkout the interpreter was installed from
    os.environ["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, str(ROOT / "src"))
    env = dict(os.environ)
    carelink = [sys.executable, "-m", "carelink"]
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "args": vars(args)}
    with ExitStack() as stack:
        urls = simulators(stack, args.size, args.latency_ms, args.ports.simulators())
        env["CARELINK_SOURCES"] = ",".join(f"{k}={v}" for k, v in urls.items())
        env["CARELINK_DATABASE_URL"] = str(tmp / "bench.db")
        port = args.ports.one()
        base = f"http://127.0.0.1:{port}"
        env["CARELINK_AUTH"] = args.auth
        env["CARELINK_AUDIENCE"] = f"{base}/fhir"
        env["CARELINK_ISSUER_KEYS"] = str(tmp / "issuer")
        subprocess.run(
            [*carelink, "index", "build"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        gateway = stack.enter_context(
            process(
                [*carelink, "serve", "--port", str(port), "--workers", str(args.workers)],
                f"{base}/fhir/metadata",
                env,
            )
        )
        token = None
        if args.auth == "jwt":  # one clinician's token, reused as a client would
            token = mint(env)
        from carelink.simulators.population import local_id, people

        population = list(people(42, args.size))
        rng = random.Random(1)
        everyone = [p for p in population if len(p.sources) == 4]
        sample = everyone[:50] + rng.sample(population, args.patients - min(50, len(everyone)))
        lookups = [f"/fhir/Patient?identifier={NHS}|{p.nhs_number}" for p in sample]
        ids = [
            json.loads(get(base + path, token))["entry"][0]["resource"]["id"] for path in lookups
        ]
        records = [f"/fhir/Patient/{pid}/$everything" for pid in ids]
        for path in records:  # warm: sources' first renders, adapters' first mappings
            get(base + path, token)
        acute = [
            f"/fhir/Patient/{local_id('acute', p.index)}/$everything"
            for p in sample
            if "acute" in p.sources
        ]
        print("measuring the lookup ...", flush=True)
        results["lookup"] = wrk(base, lookups, args.duration, 32, tmp, token, gateway)
        body = get(base + lookups[0], token)
        results["lookup_ceiling"] = ceiling(body, lookups, args, env, tmp)
        results["lookup_fastapi"] = ceiling(
            body, lookups, args, env, tmp, "benchmarks.bare:fastapi_app"
        )
        results["everything_runs"] = []
        if args.lookup_only:
            args.runs = 0
        for n in range(args.runs):
            print(f"measuring $everything ({n + 1} of {args.runs}) ...", flush=True)
            run_ = {
                "everything": wrk(
                    base, records, args.duration, args.connections, tmp, token, gateway
                ),
                "simulator": wrk(urls["acute"], acute, max(5, args.duration // 2), 8, tmp),
            }
            run_["budget_ms"] = run_["simulator"]["p99_ms"] + 25
            run_["ok"] = run_["everything"]["p99_ms"] <= run_["budget_ms"]
            results["everything_runs"].append(run_)
        if not args.lookup_only:
            results["everything"] = results["everything_runs"][0]["everything"]
            results["simulator"] = results["everything_runs"][0]["simulator"]
            full = max(records, key=lambda p: len(get(base + p, token)))
            body = get(base + full, token)
            results["everything_ceiling"] = ceiling(body, records, args, env, tmp)
            results["everything_fastapi"] = ceiling(
                body, records, args, env, tmp, "benchmarks.bare:fastapi_app"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    lk, lf = results["lookup"], results["lookup_fastapi"]
    runs = results["everything_runs"]
    results["targets"] = {
        "lookup_ratio_fastapi": lk["rps"] / lf["rps"],
        "lookup_ratio_raw": lk["rps"] / results["lookup_ceiling"]["rps"],
        "lookup_ok": lk["rps"] >= 0.5 * lf["rps"],
        "everything_ok_runs": sum(r["ok"] for r in runs),
        "everything_ok": bool(runs) and all(r["ok"] for r in runs),
    }
    return results


def _row(name: str, m: dict[str, Any]) -> None:
    print(
        f"{name:24}{m['rps']:9.0f}{m['p50_ms']:9.1f}{m['p95_ms']:9.1f}{m['p99_ms']:9.1f}"
        f"{m['max_ms']:9.1f}{m['errors']:8d}"
        + (f"{m['cpu_us']:10.0f}" if m.get("cpu_us") is not None else f"{'-':>10}")
        + f"   {m['load_before']}"
    )


def report(r: dict[str, Any]) -> None:
    print(
        f"\n{'':24}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
        f"{'CPU us/req':>10}   load (1, 5, 15 min) at start"
    )
    for key in (
        "lookup",
        "lookup_fastapi",
        "lookup_ceiling",
        "everything_fastapi",
        "everything_ceiling",
    ):
        if key in r:
            _row(key, r[key])
    for n, run_ in enumerate(r["everything_runs"], 1):
        _row(f"everything run {n}", run_["everything"])
        _row(f"simulator run {n}", run_["simulator"])
    t = r["targets"]
    print(
        f"\nlookup: {t['lookup_ratio_fastapi']:.0%} of the bare FastAPI endpoint (target >= 50%),"
        f" {t['lookup_ratio_raw']:.0%} of raw ASGI: {'MET' if t['lookup_ok'] else 'MISSED'}"
    )
    lk, lf = r["lookup"], r["lookup_fastapi"]
    if lk.get("cpu_us") and lf.get("cpu_us"):
        print(
            f"  by CPU per request (server process and its children, whatever the load): "
            f"bare FastAPI {lf['cpu_us']:.0f} us / lookup {lk['cpu_us']:.0f} us = "
            f"{lf['cpu_us'] / lk['cpu_us']:.0%}"
        )
    for n, run_ in enumerate(r["everything_runs"], 1):
        print(
            f"$everything run {n} ({r['args']['connections']} connections): p99 "
            f"{run_['everything']['p99_ms']:.1f} ms vs budget "
            f"{run_['budget_ms']:.1f} ms (simulators' p99 + 25): "
            f"{'met' if run_['ok'] else 'missed'}"
        )
    runs = len(r["everything_runs"])
    print(
        f"$everything: within budget in {t['everything_ok_runs']} of {runs} runs: "
        f"{'MET' if t['everything_ok'] else 'MISSED'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--runs", type=int, default=3, help="$everything runs (each with its budget)")
    p.add_argument(
        "--connections",
        type=int,
        default=32,
        help="$everything's concurrent connections (the simulators' own p99 is measured at 8)",
    )
    p.add_argument(
        "--auth",
        choices=("jwt", "development"),
        default="jwt",
        help="jwt: every request carries a bearer token the gateway verifies (default)",
    )
    p.add_argument("--lookup-only", action="store_true", help="measure the lookup alone")
    p.add_argument(
        "--port",
        type=int,
        help="listen from this port on (the simulators on it and the next three, the gateway"
        " and each ceiling on one more each: 9 in all); default: ports the OS says are free",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = p.parse_args()
    args.ports = Ports(args.port)
    results = run(args)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
