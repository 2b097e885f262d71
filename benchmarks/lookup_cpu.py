"""CPU per lookup, in process: the gateway's own work on one request, without a server.

    PYTHONPATH=src .venv/bin/python benchmarks/lookup_cpu.py [--requests 20000] [--profile]
        [--port P] [--search]

wrk measures what clients see, but on two shared cores its numbers move with
everything else the machine does. This counts the gateway process's CPU time
per request instead: it starts the four simulators, builds an index, then
creates the gateway app in this process (bearer tokens verified, consent, the
durable audit trail in its writer process, request ids, access lines and
metrics: every safeguard as ``carelink serve`` has them) and drives the NHS
number lookup through the ASGI interface directly, 32 requests in flight, as
an HTTP server would call it. Beside it, the bare FastAPI endpoint
(``benchmarks/bare.py``) serving the same bytes, the same way. ``--profile``
prints cProfile's top functions for the gateway's run, timed by CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

NHS = "https://fhir.nhs.uk/Id/nhs-number"
App = Callable[..., Any]


def scope_for(path: str, token: str | None) -> dict[str, Any]:
    raw, _, query = path.partition("?")
    headers = [(b"host", b"127.0.0.1"), (b"accept", b"*/*")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw,
        "raw_path": raw.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def one(app: App, path: str, token: str | None) -> tuple[int, bytes]:
    status = 0
    # the body's parts, joined at the end: one part (the gateway sends its answer whole)
    # is handed back as it is, as a server writes it, not copied twice into a bytearray
    # (~2.6% of the instructions ``lookup_instructions.py --everything`` counted)
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope_for(path, token), receive, send)
    return status, b"".join(body)


async def drive(
    app: App, paths: list[str], token: str | None, n: int, inflight: int = 32
) -> tuple[float, float]:
    """CPU and wall seconds for ``n`` requests over ``inflight`` connections, each sending
    its next request once its answer is complete, as a server's connections are served.
    (Not one task a request, each waiting its turn at a semaphore: then every request
    that waits for something, as the gateway's waits for its audit commit, also paid for
    waiting at the semaphore, which the bare endpoint, never waiting, never did.)"""
    rng = random.Random(7)
    queue = iter([rng.choice(paths) for _ in range(n)])

    async def connection() -> None:
        for path in queue:  # shared: each connection takes the next request
            status, _ = await one(app, path, token)
            if status != 200:
                raise RuntimeError(f"{path}: {status}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(inflight)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(
    args: argparse.Namespace, env: dict[str, str], paths: list[str], token: str
) -> None:
    import importlib
    import logging.config

    from carelink.app import create_app
    from carelink.observability.logs import log_config
    from carelink.settings import Settings

    logging.config.dictConfig(log_config(args.log_level))  # as `carelink serve` does
    app = create_app(Settings.from_env(env))
    async with app.router.lifespan_context(app):
        status, body = await one(app, paths[0], token)
        assert status == 200, (status, body[:300])
        os.environ["BARE_BODY"] = env["BARE_BODY"] + ".lookup"
        with open(os.environ["BARE_BODY"], "wb") as f:  # noqa: ASYNC230 - set-up, not measured
            f.write(body)
        bare_mod = importlib.import_module("benchmarks.bare")  # serves BARE_BODY's bytes
        await drive(app, paths, token, 2000)  # warm
        await drive(bare_mod.fastapi_app, paths, None, 2000)
        results = {}
        for _ in range(args.runs):
            # timed by this thread's CPU clock: on a loaded machine the wall clock also
            # counts the time other processes had the core, wherever it fell
            prof = cProfile.Profile(time.thread_time) if args.profile else None
            if prof:
                prof.enable()
            cpu, _ = await drive(app, paths, token, args.requests)
            if prof:
                prof.disable()
            results.setdefault("gateway", []).append(cpu / args.requests * 1e6)
            cpu, _ = await drive(bare_mod.fastapi_app, paths, None, args.requests)
            results.setdefault("bare_fastapi", []).append(cpu / args.requests * 1e6)
        for k, v in results.items():
            runs = ", ".join(f"{x:.1f}" for x in v)
            print(f"{k}: CPU per request {min(v):.1f} us (runs: {runs})")
        ratio = min(results["bare_fastapi"]) / min(results["gateway"])
        print(f"bare FastAPI / gateway CPU: {ratio:.0%}")
        print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if prof:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
            if os.environ.get("CALLERS"):
                pstats.Stats(prof).print_callers(os.environ["CALLERS"])


@contextmanager
def gateway_env(size: int, port: int, latency_ms: float = 0.0) -> Iterator[Prepared]:
    """The four simulators (stopped at the end), an index of them in a temporary SQLite
    file, `carelink init`'s keys and one clinician's token: what ``create_app`` needs."""
    tmp = Path(tempfile.mkdtemp(prefix="carelink-cpu-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    from carelink.demo import start_simulators

    with ExitStack() as stack:
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # the simulators run this checkout too
        urls, procs = start_simulators(size, 42, port, latency_ms)
        for proc in procs:
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
        env["CARELINK_SOURCES"] = ",".join(f"{k}={v}" for k, v in urls.items())
        env["CARELINK_DATABASE_URL"] = str(tmp / "bench.db")
        env["CARELINK_AUTH"] = "jwt"
        env["CARELINK_AUDIENCE"] = "http://127.0.0.1:8000/fhir"
        env["CARELINK_PUBLIC_BASE_URL"] = "http://127.0.0.1:8000/fhir"
        env["CARELINK_ISSUER_KEYS"] = str(tmp / "issuer")
        os.chdir(tmp)  # the keys and files `carelink init` makes go here
        carelink = [sys.executable, "-m", "carelink"]
        subprocess.run([*carelink, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        build = [*carelink, "index", "build"]
        subprocess.run(build, env=env, check=True, stdout=subprocess.DEVNULL)
        token = subprocess.run(
            [*carelink, "token", "mint", "--minutes", "120"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        os.environ.update(env)
        yield Prepared(env, tmp, token, urls, [p.pid for p in procs])


@dataclass(frozen=True)
class Prepared:
    """What ``gateway_env`` set up."""

    env: dict[str, str]
    tmp: Path
    token: str
    urls: dict[str, str]
    simulator_pids: list[int]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=2000, help="people at the simulators")
    ap.add_argument("--port", type=int, default=33000 + random.Random().randrange(800))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--search", action="store_true", help="drive Patient?family=&birthdate= instead"
    )
    ap.add_argument("--log-level", default="info", help="as serve's (access lines at info)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative ...")
    args = ap.parse_args()
    from carelink.simulators.population import people

    with gateway_env(args.size, args.port) as prep:
        env = {**prep.env, "BARE_BODY": str(prep.tmp / "body.json")}
        population = list(people(42, args.size))
        if args.search:  # the demographic search's one-day form instead of the lookup
            paths = [
                f"/fhir/Patient?family={p.family}&birthdate={p.birth_date.isoformat()}"
                for p in population[:200]
            ]
        else:
            paths = [f"/fhir/Patient?identifier={NHS}|{p.nhs_number}" for p in population[:200]]
        asyncio.run(measure(args, env, paths, prep.token))
        print(json.dumps({"tmp": str(prep.tmp)}))


if __name__ == "__main__":
    main()
