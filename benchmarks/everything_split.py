"""Where the machine's CPU goes per ``$everything``, process by process, two trees A/B.

    .venv/bin/python benchmarks/everything_split.py --tree A=/tmp/main/src \\
        --tree B=src [--seconds 10] [--rounds 3] [--port 23000]

For each tree (a ``src`` directory: a copy of another commit's tree, or this one)
it starts what ``federation_bench.py`` starts, from that tree: the four simulators
as processes (20 ms median latency), an index, the gateway (one worker, every
safeguard on) and one clinician's token; then drives ``$everything`` with wrk at
32 connections over the same 200 patients, the trees taking turns (A, B, A, B ...),
so both see the same machine. Each run prints req/s, p50 and p99, and CPU per
request (user + system, from ``/proc``) of the gateway (its process and children:
the audit writer), of each simulator and of wrk, with the load average: on a
shared machine, CPU per request is the figure that carries over. Tree ``n`` uses
ports ``--port + 40 n`` (simulators) and ``+ 10`` (gateway).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.federation_bench import LUA, NHS, get, tree_cpu, wait

SOURCES = ("acute", "gp", "community", "social-care")
TICK = os.sysconf("SC_CLK_TCK")


def tree_by_process(pid: int) -> dict[int, tuple[str, float]]:
    """Each living process in ``pid``'s tree: its name (what /proc's comm and cmdline
    say, shortened) and the CPU seconds it has used so far."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(
                    Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    found: dict[int, tuple[str, float]] = {}
    for p in parent:
        q = p
        while q not in (0, 1) and q != pid:
            q = parent.get(q, 0)
        if q != pid:
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[p] = (_short(cmd, p == pid), cpu_of(p))
        except OSError:
            continue
    return found


def _short(cmd: str, top: bool) -> str:
    """A process's role from its command line: serve (the top), audit-writer, worker ..."""
    if "audit" in cmd:
        return "audit-writer"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        return "child"
    return "serve" if top else "worker"


def commits_of(base: str) -> tuple[float, float]:
    """The gateway's audit group commits so far and the events they held (its metrics)."""
    text = get(f"{base}/metrics").decode()
    said = dict(re.findall(r"^carelink_audit_commit_events_(count|sum) ([0-9.e+]+)$", text, re.M))
    return float(said.get("count", 0)), float(said.get("sum", 0))


def cpu_of(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Stack:
    """One tree's simulators, index and gateway, started on ``port`` and after."""

    def __init__(self, name: str, src: str, port: int, stack: ExitStack, args: Any) -> None:
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"carelink-split-{name}-"))
        env = {**os.environ, "PYTHONPATH": src}
        carelink = [sys.executable, "-m", "carelink"]
        started = []
        for i, source in enumerate(SOURCES):
            args_ = ["simulate", source, "--port", str(port + i), "--size", str(args.size)]
            args_ += ["--seed", "42", "--latency-ms", str(args.latency_ms)]
            started.append((source, self._start([*carelink, *args_], env, stack)))
        self.simulators = {}
        urls = {}
        for i, (source, proc) in enumerate(started):
            urls[source] = f"http://127.0.0.1:{port + i}"
            wait(f"{urls[source]}/_admin/health", proc)
            self.simulators[source] = proc.pid
        self.base = f"http://127.0.0.1:{port + 10}"
        env["CARELINK_SOURCES"] = ",".join(f"{k}={v}" for k, v in urls.items())
        env["CARELINK_DATABASE_URL"] = str(self.tmp / "bench.db")
        env["CARELINK_AUTH"] = "jwt"
        env["CARELINK_AUDIENCE"] = f"{self.base}/fhir"
        env["CARELINK_ISSUER_KEYS"] = str(self.tmp / "issuer")
        quiet = {"env": env, "check": True, "cwd": self.tmp}
        subprocess.run([*carelink, "index", "build"], stdout=subprocess.DEVNULL, **quiet)
        serve = [*carelink, "serve", "--port", str(port + 10), "--workers", "1"]
        gateway = self._start(serve, env, stack)
        wait(f"{self.base}/fhir/metadata", gateway)
        self.gateway = gateway.pid
        mint = [*carelink, "token", "mint", "--minutes", "240"]
        self.token = subprocess.run(mint, capture_output=True, text=True, **quiet).stdout.strip()

    def _start(self, cmd: list[str], env: dict[str, str], stack: ExitStack) -> Any:
        proc = subprocess.Popen(
            cmd, env=env, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        return proc

    def prepare(self, nhs_numbers: list[str]) -> None:
        """Each person's gateway id by the lookup, then every record asked for once."""
        paths = []
        for nhs in nhs_numbers:
            found = json.loads(get(f"{self.base}/fhir/Patient?identifier={NHS}|{nhs}", self.token))
            paths.append(f"/fhir/Patient/{found['entry'][0]['resource']['id']}/$everything")
        for path in paths:
            get(self.base + path, self.token)
        (self.tmp / "paths.txt").write_text("\n".join(paths) + "\n")
        (self.tmp / "script.lua").write_text(LUA % (self.tmp / "paths.txt"))

    def run(self, seconds: int, connections: int) -> dict[str, Any]:
        """One wrk run: latency, and CPU per request of each process."""
        load = os.getloadavg()[0]
        sims = {s: cpu_of(p) for s, p in self.simulators.items()}
        gateway = tree_cpu(self.gateway)
        split = tree_by_process(self.gateway)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        commits = commits_of(self.base)
        auth = f"Authorization: Bearer {self.token}"
        script = str(self.tmp / "script.lua")
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", auth, "-s", script]
        out = subprocess.run([*cmd, self.base], capture_output=True, text=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", out)
        if m is None:
            raise RuntimeError(f"wrk printed no result:\n{out}")
        n = int(m[1])
        committed = [b - a for a, b in zip(commits, commits_of(self.base), strict=True)]
        each = {s: (cpu_of(p) - sims[s]) / n * 1e6 for s, p in self.simulators.items()}
        wrk_s = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        r = {
            "tree": self.name,
            "rps": n / (int(m[7]) / 1e6),
            "errors": int(m[2]),
            "p50": float(m[3]),
            "p99": float(m[5]),
            "gateway": (tree_cpu(self.gateway) - gateway) / n * 1e6,
            "simulators": sum(each.values()),
            "each": each,
            "wrk": wrk_s / n * 1e6,
            "load": load,
            "commits": committed[0] / n,
            "events": committed[1] / max(committed[0], 1),
        }
        per = " ".join(f"{s} {us:.0f}" for s, us in each.items())
        now = tree_by_process(self.gateway)
        r["split"] = {
            f"{name}:{p}": (seconds - split.get(p, (name, 0.0))[1]) / n * 1e6
            for p, (name, seconds) in now.items()
        }
        print("  gateway by process, CPU us a request:", r["split"], flush=True)
        print(
            f"{self.name}: {r['rps']:5.0f} req/s, p50 {r['p50']:5.1f} p99 {r['p99']:6.1f} ms,"
            f" errors {r['errors']}; CPU us per request: gateway {r['gateway']:4.0f},"
            f" simulators {r['simulators']:3.0f} ({per}), wrk {r['wrk']:2.0f}; audit commits"
            f" {r['commits']:.2f} a request, {r['events']:.1f} events each; load {load:.2f}",
            flush=True,
        )
        return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=path/to/src")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=23000)
    args = ap.parse_args()
    sys.path.insert(0, args.tree[0].split("=", 1)[1])
    from carelink.simulators.population import people

    population = list(people(42, args.size))
    everyone = [p for p in population if len(p.sources) == 4]
    sample = everyone[:50] + random.Random(1).sample(population, 200 - min(50, len(everyone)))
    results = []
    with ExitStack() as stack:
        stacks = []
        for n, tree in enumerate(args.tree):
            name, src = tree.split("=", 1)
            stacks.append(Stack(name, src, args.port + 40 * n, stack, args))
            stacks[-1].prepare([p.nhs_number for p in sample])
        for _ in range(args.rounds):
            results += [s.run(args.seconds, args.connections) for s in stacks]
    for s in stacks:
        runs = [r for r in results if r["tree"] == s.name]
        median = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in ("gateway", "simulators")}
        print(
            f"{s.name}, median CPU us per request: gateway {median['gateway']:.0f},"
            f" simulators {median['simulators']:.0f}"
        )


if __name__ == "__main__":
    main()
