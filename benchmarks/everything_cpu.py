"""CPU per ``$everything``, in process: the gateway's own work, and the simulators'.

    PYTHONPATH=src .venv/bin/python benchmarks/everything_cpu.py [--requests 3000] [--port P]
        [--profile]

As ``benchmarks/lookup_cpu.py`` does for the lookup: the four simulators run
as processes on loopback HTTP (no added latency), the gateway app is created
in this process with every safeguard on (bearer tokens verified, consent, the
durable audit trail in its writer process, request ids, access lines,
metrics) and ``GET /fhir/Patient/{id}/$everything`` is driven through the
ASGI interface (on uvloop, as ``carelink serve`` runs; ``--loop asyncio`` for
the standard library's), 32 requests in flight, over the same spread of patients as
``federation_bench.py`` (50 known to all four sources, 150 at random). It
prints the gateway process's CPU time per request and the four simulators'
CPU time per request (from ``/proc``: a bench artefact, as real sources run
elsewhere, but they share the two cores with the gateway under
``federation_bench.py``). ``--profile`` prints cProfile's top functions for
the gateway's first run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging.config
import os
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.lookup_cpu import NHS, App, drive, gateway_env, one

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


async def ids_of(app: App, nhs_numbers: list[str], token: str) -> list[str]:
    """The gateway's Patient id for each NHS number (by the lookup)."""
    out = []
    for nhs in nhs_numbers:
        status, body = await one(app, f"/fhir/Patient?identifier={NHS}|{nhs}", token)
        assert status == 200, (status, body[:300])
        out.append(json.loads(body)["entry"][0]["resource"]["id"])
    return out


async def measure(
    args: argparse.Namespace, env: dict[str, str], token: str, sims: dict[str, int]
) -> None:
    from carelink.app import create_app
    from carelink.observability.logs import log_config
    from carelink.settings import Settings
    from carelink.simulators.population import people

    names, pids = list(sims), list(sims.values())
    population = list(people(42, args.size))
    rng = random.Random(1)
    everyone = [p for p in population if len(p.sources) == 4]
    sample = everyone[:50] + rng.sample(population, args.patients - min(50, len(everyone)))
    logging.config.dictConfig(log_config(args.log_level))  # as `carelink serve` does
    app = create_app(Settings.from_env(env))
    async with app.router.lifespan_context(app):
        pauses = gc_pauses() if args.gc else None
        ids = await ids_of(app, [p.nhs_number for p in sample], token)
        paths = [f"/fhir/Patient/{pid}/$everything" for pid in ids]
        await drive(app, paths, token, len(paths) * 2)  # warm: every path at least once
        gateway, sims = [], []
        for n in range(args.runs):
            prof = cProfile.Profile() if args.profile and n == 0 else None
            if prof:
                prof.enable()
            before = [cpu_of(pid) for pid in pids]
            cpu, wall = await drive(app, paths, token, args.requests)
            each = [cpu_of(pid) - b for pid, b in zip(pids, before, strict=True)]
            sim = sum(each)
            if prof:
                prof.disable()
                if args.profile_out:
                    prof.dump_stats(args.profile_out)
                pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
            gateway.append(cpu / args.requests * 1e6)
            sims.append(sim / args.requests * 1e6)
            print(
                f"run {n + 1}: gateway {gateway[-1]:.0f} us, simulators {sims[-1]:.0f} us CPU"
                f" per $everything; {args.requests / wall:.0f} req/s in process;"
                f" load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
                flush=True,
            )
            us = [c / args.requests * 1e6 for c in each]
            per = [f"{n} {u:.0f} us" for n, u in zip(names, us, strict=True)]
            print(f"  simulators, each: {', '.join(per)}", flush=True)
        if pauses is not None:
            for generation, took in sorted(pauses.items()):
                print(
                    f"gc generation {generation}: {len(took)} collections, longest"
                    f" {max(took) * 1e3:.1f} ms, {sum(took) * 1e3:.0f} ms in all"
                )
        print(
            f"gateway: CPU per $everything {min(gateway):.0f} us"
            f" (runs: {', '.join(f'{x:.0f}' for x in gateway)})"
        )
        print(
            f"simulators: CPU per $everything {min(sims):.0f} us"
            f" (runs: {', '.join(f'{x:.0f}' for x in sims)})"
        )


def gc_pauses() -> dict[int, list[float]]:
    """From now on, how long each of the collector's runs takes, by generation (a
    collection stops every request in the process: a tail-latency cause)."""
    import gc

    took: dict[int, list[float]] = {}
    started = [0.0]

    def heard(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            took.setdefault(info["generation"], []).append(time.perf_counter() - started[0])

    gc.callbacks.append(heard)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=2000, help="people at the simulators")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--port", type=int, default=33000 + random.Random().randrange(800))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--gc", action="store_true", help="report the collector's pauses")
    ap.add_argument("--profile-out", type=Path, help="also write the profile here (pstats)")
    ap.add_argument("--log-level", default="info", help="as serve's (access lines at info)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative ...")
    ap.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop: uvloop's, as carelink serve runs (asyncio: before 2026-12-02)",
    )
    args = ap.parse_args()
    started = time.perf_counter()
    with gateway_env(args.size, args.port) as prep:
        sims = dict(zip(prep.urls, prep.simulator_pids, strict=True))
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(measure(args, prep.env, prep.token, sims))
    print(f"({time.perf_counter() - started:.0f} s in all; files in {prep.tmp})")


if __name__ == "__main__":
    main()
