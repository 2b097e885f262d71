"""CPU per request at each simulator, as the gateway's ``$everything`` asks them.

    PYTHONPATH=src .venv/bin/python benchmarks/simulator_cpu.py [--requests 6000] [--port P]
        [--runs 3] [--only gp,acute] [--profile DIR]

Each simulator runs as ``carelink simulate NAME --size 2000 --seed 42 --latency-ms 0``
(as ``everything_cpu.py`` runs them) and is sent the requests the gateway's source
adapters send for a record, over 32 kept-alive HTTP/1.1 connections: the GP the
structured record ``POST`` with the Spine headers and JWT the GP Connect adapter
makes, the acute trust ``$everything?_count=1000``, the community trust
``/hl7/record?pid=``, the council ``/persons/{ref}/case``, over 200 people at random.
It prints each simulator's CPU time (from ``/proc``) per request. ``--profile DIR``
runs each simulator under cProfile and leaves ``DIR/NAME.pstats``.

``--listing`` (with ``--size 100000``, say) instead reads each simulator's whole
patient listing through the gateway's own source adapter (``people()``, as the index
build reads it), one simulator at a time, and prints the seconds it took and the
simulator's CPU seconds and the adapter's (this process), ``--runs`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
NAMES = ("gp", "acute", "community", "social-care")
PROFILED = (
    "import cProfile, sys, signal, time; from carelink.cli import main;"
    " p = cProfile.Profile(time.process_time);"
    " signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()));"
    " p.enable()\ntry: main(sys.argv[2:])\nexcept KeyboardInterrupt: pass\n"
    "finally: p.disable(); p.dump_stats(sys.argv[1])"
)


def cpu_of(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def requests_for(name: str, port: int, size: int) -> list[bytes]:
    """Whole HTTP/1.1 requests, as the gateway's adapter for ``name`` sends them."""
    from carelink.simulators.population import local_id, people
    from carelink.sources.gpconnect import GPConnectSource

    rng = random.Random(1)
    chosen = [p for p in rng.sample(list(people(42, size)), 200) if name in p.sources]
    host = f"127.0.0.1:{port}"
    out = []
    for p in chosen:
        body = b""
        if name == "gp":
            url, hdrs, body = GPConnectSource(None, f"http://{host}").request(  # type: ignore[arg-type]
                p.nhs_number, None
            )
            method, target = "POST", url.removeprefix(f"http://{host}")
        elif name == "acute":
            method = "GET"
            target = f"/fhir/Patient/{local_id('acute', p.index)}/$everything?_count=1000"
            hdrs = {"Accept": "application/fhir+json"}
        elif name == "community":
            method, target = "GET", f"/hl7/record?pid={local_id('community', p.index)}"
            hdrs = {}
        else:
            method, target = "GET", f"/api/v2/persons/{local_id('social-care', p.index)}/case"
            hdrs = {"Accept": "application/json"}
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {host}",
            *(f"{k}: {v}" for k, v in hdrs.items()),
        ]
        head.append(f"Content-Length: {len(body)}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


async def connection(port: int, queue: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while queue:
        writer.write(queue.pop())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(status)
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
    writer.close()


async def drive(port: int, requests: list[bytes], n: int) -> None:
    rng = random.Random(7)
    queue = [rng.choice(requests) for _ in range(n)]
    await asyncio.gather(*(connection(port, queue) for _ in range(32)))


async def listing(name: str, port: int) -> int:
    """Everyone in ``name``'s listing, read as the index build reads it; how many."""
    import aiohttp

    from carelink.assembly import ADAPTERS

    async with aiohttp.ClientSession() as session:
        source = ADAPTERS[name](session, f"http://127.0.0.1:{port}", name)
        return sum([1 async for _ in source.people()])


def wait_up(port: int) -> None:
    import urllib.request

    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_admin/health", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no simulator on {port}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--port", type=int, default=32500)
    ap.add_argument("--only", default=",".join(NAMES))
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--listing", action="store_true", help="read the patient listings")
    args = ap.parse_args()
    names = args.only.split(",")
    procs = {}
    for i, name in enumerate(names):
        port = args.port + i
        argv = [
            "simulate",
            name,
            "--port",
            str(port),
            "--size",
            str(args.size),
            "--seed",
            "42",
            "--latency-ms",
            "0",
        ]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-c", PROFILED, str(args.profile / f"{name}.pstats"), *argv]
        else:
            cmd = [sys.executable, "-m", "carelink", *argv]
        procs[name] = (port, subprocess.Popen(cmd))
    try:
        for port, _ in procs.values():
            wait_up(port)
        for name, (port, proc) in procs.items():
            if args.listing:
                for _ in range(args.runs):
                    before, wall, mine = cpu_of(proc.pid), time.perf_counter(), time.process_time()
                    people = asyncio.run(listing(name, port))
                    wall = time.perf_counter() - wall
                    mine = time.process_time() - mine
                    cpu = cpu_of(proc.pid) - before
                    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                    print(
                        f"{name}: {people:,} people listed in {wall:.2f} s, the simulator's"
                        f" CPU {cpu:.2f} s, the adapter's {mine:.2f} s; load {load}",
                        flush=True,
                    )
                continue
            reqs = requests_for(name, port, args.size)
            asyncio.run(drive(port, reqs, len(reqs) * 2))  # warm: every request once
            took = []
            for _ in range(args.runs):
                before = cpu_of(proc.pid)
                asyncio.run(drive(port, reqs, args.requests))
                took.append((cpu_of(proc.pid) - before) / args.requests * 1e6)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            runs = ", ".join(f"{t:.0f}" for t in took)
            print(
                f"{name}: {min(took):.0f} us CPU per request (runs: {runs}); load {load}",
                flush=True,
            )
    finally:
        for _, proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in procs.values():
            proc.wait(30)


if __name__ == "__main__":
    main()
