"""Instructions per lookup, counted by callgrind: the gateway's own work, whatever the load.

    PYTHONPATH=src .venv/bin/python benchmarks/lookup_instructions.py [--requests 1000]
        [--port P] [--bare | --everything]

``lookup_cpu.py`` counts CPU time, which on two shared cores moves by a third from
one run to the next with what else runs (the same code measured 189 and 298 us).
This counts the instructions the gateway process executes instead, which do not
depend on the load: it prepares what ``lookup_cpu.py`` prepares (the simulators,
an index, keys, a clinician's token), then runs the gateway in a process of its
own under ``valgrind --tool=callgrind`` with counting off, drives the NHS number
lookup through the ASGI interface (warm-up first), and counts only the measured
requests (``callgrind_control`` turns counting on and off around them). The
audit writer child is not counted (it is another process). ``--bare`` drives the
bare FastAPI endpoint serving the same bytes instead. Instructions are not time,
but for the same interpreter running the same kind of code they move with it:
an A/B between two checkouts is what this is for.

``--everything`` counts ``GET /fhir/Patient/{id}/$everything`` instead, over the
spread of patients ``federation_bench.py`` uses (50 known to all four sources, 150
at random), each found by the lookup first, four requests in flight (not 32). The
sources' budget is raised to 30 s (``CARELINK_BUDGET``) so that no source times out
while the gateway runs ~50 times slower under callgrind; GP Connect's JWT, made once
per requester and second, is made more often per request than at full speed (the
same in both trees).

``--rate R`` paces the measured requests at R a second (still at most four or 32 in
flight): whatever the gateway does once a second or once per instant (a source's as-of
that is the time it answered, a GP Connect JWT) is then the same share of every
request in both trees, however fast each runs beside the other; unpaced, the tree that
runs faster under callgrind also does less of that work a request (main's own count
moved 2.39-2.78M between pairs with the load). It prints the rate it kept.

``--loop uvloop`` (the default) runs the gateway on uvloop's event loop, as ``carelink
serve`` does (uvicorn's ``loop="auto"``); ``--loop asyncio`` on the standard library's,
as this tool did before 2026-12-02 (its handles are Python objects: ~10 ``Handle``
``__init__``s a ``$everything`` that the served gateway does not run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.callgrind import control, counted  # noqa: E402


async def _paced(
    app: Any, paths: list[str], token: str | None, n: int, inflight: int, rate: float
) -> float:
    """``n`` requests over ``inflight`` connections, request ``i`` sent no earlier than
    ``i / rate`` seconds after the first; the rate kept."""
    from benchmarks.lookup_cpu import one

    rng = random.Random(7)
    queue = iter(enumerate([rng.choice(paths) for _ in range(n)]))
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def connection() -> None:
        for i, path in queue:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            status, _ = await one(app, path, token)
            if status != 200:
                raise RuntimeError(f"{path}: {status}")

    await asyncio.gather(*(connection() for _ in range(inflight)))
    return n / (loop.time() - start)


async def _measure(
    requests: int,
    bare: bool,
    paths: list[str],
    token: str,
    everything: bool = False,
    rate: float = 0.0,
) -> None:
    import importlib
    import logging.config

    from benchmarks.lookup_cpu import drive, one

    from carelink.app import create_app
    from carelink.observability.logs import log_config
    from carelink.settings import Settings

    logging.config.dictConfig(log_config("info"))  # as `carelink serve` does
    app = create_app(Settings.from_env(dict(os.environ)))
    async with app.router.lifespan_context(app):
        if everything:  # each person's record, by the id the lookup gives
            records = []
            for path in paths:
                status, body = await one(app, path, token)
                assert status == 200, (status, body[:300])
                found = orjson.loads(body)["entry"][0]["resource"]["id"]
                records.append(f"/fhir/Patient/{found}/$everything")
            paths = records
        status, body = await one(app, paths[0], token)
        assert status == 200, (status, body[:300])
        with open(os.environ["BARE_BODY"], "wb") as f:  # noqa: ASYNC230 - set-up
            f.write(body)
        target = importlib.import_module("benchmarks.bare").fastapi_app if bare else app
        given = None if bare else token
        # $everything four at a time: at 32 a request would wait ~2 s under callgrind for
        # the others, past the gateway's own time limits (GP Connect's, the audit's)
        inflight = 4 if everything else 32
        await drive(target, paths, given, 500, inflight)  # warm: memos, caches, the writer
        if rate > 0:
            control("-i", "on")
            kept = await _paced(target, paths, given, requests, inflight, rate)
            control("-i", "off")
            with open(os.environ["BARE_BODY"] + ".rate", "w") as f:  # noqa: ASYNC230 - after
                f.write(f"{kept:.2f}")
        else:
            control("-i", "on")
            await drive(target, paths, given, requests, inflight)
            control("-i", "off")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000, help="people at the simulators")
    ap.add_argument("--port", type=int, default=33000 + random.Random().randrange(800))
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--bare", action="store_true", help="the bare FastAPI endpoint instead")
    what.add_argument("--everything", action="store_true", help="$everything instead")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--rate", type=float, default=0.0, help="measured requests a second")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from benchmarks.lookup_cpu import NHS, gateway_env

    from carelink.simulators.population import people

    if args.everything:  # federation_bench.py's spread of patients
        population = list(people(42, args.size))
        everyone = [p for p in population if len(p.sources) == 4]
        rng = random.Random(1)
        sample = everyone[:50] + rng.sample(population, 200 - min(50, len(everyone)))
    else:
        sample = list(people(42, 200))
    paths = [f"/fhir/Patient?identifier={NHS}|{p.nhs_number}" for p in sample]
    if args.child:  # under callgrind, in the environment the parent prepared
        token = os.environ["LOOKUP_TOKEN"]
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_measure(args.requests, args.bare, paths, token, args.everything, args.rate))
        return
    with gateway_env(args.size, args.port) as prep:
        env = {
            **prep.env,
            "BARE_BODY": str(prep.tmp / "body.json"),
            "LOOKUP_TOKEN": prep.token,
            "PYTHONPATH": prep.env["PYTHONPATH"],
        }
        if args.everything:
            env["CARELINK_BUDGET"] = "30"
        child = [
            "--child",
            f"--requests={args.requests}",
            *(["--bare"] if args.bare else []),
            *(["--everything"] if args.everything else []),
            f"--size={args.size}",
            f"--loop={args.loop}",
            f"--rate={args.rate}",
        ]
        total = counted(Path(__file__).resolve(), child, env)[-1]
        what = "bare FastAPI" if args.bare else "gateway"
        what += ", $everything" if args.everything else ""
        kept = prep.tmp / "body.json.rate"
        paced = f" (paced: {kept.read_text()} a second)" if kept.exists() else ""
        print(f"{what}: {total / args.requests:,.0f} instructions per request{paced}")


if __name__ == "__main__":
    main()
