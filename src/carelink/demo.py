"""``carelink demo``: the whole system on one machine.

Starts the four simulated sources as separate processes, builds the patient
index in the embedded SQLite database, then serves the gateway, printing the
URLs and example requests to paste.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from carelink.auth.local_issuer import LocalIssuer
from carelink.errors import ConfigError
from carelink.settings import Settings
from carelink.simulators.population import SOURCES


def _die_with_parent() -> None:
    """Ask Linux to stop a simulator when the demo process dies, however it dies
    (uvicorn re-raises SIGTERM after shutting down, so a ``finally`` may never run)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_simulators(
    size: int, seed: int, first_port: int, latency_ms: float
) -> tuple[dict[str, str], list[subprocess.Popen[bytes]]]:
    """Launch one process per simulator and wait until each answers its health check."""
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    for offset, name in enumerate(SOURCES):
        port = first_port + offset
        procs.append(
            subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "carelink",
                    "simulate",
                    name,
                    "--port",
                    str(port),
                    "--size",
                    str(size),
                    "--seed",
                    str(seed),
                    "--latency-ms",
                    str(latency_ms),
                ],
                preexec_fn=_die_with_parent,  # only os-level calls; no threads yet
            )
        )
        urls[name] = f"http://127.0.0.1:{port}"
    for name, url in urls.items():
        wait_healthy(f"{url}/_admin/health", name, procs)
    return urls, procs


def wait_healthy(
    url: str, name: str, procs: list[subprocess.Popen[bytes]], timeout: float = 120.0
) -> None:
    """Poll ``url`` until it answers 200, or fail naming the simulator."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"simulator {name} exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"simulator {name} did not become healthy within {timeout:.0f} s")


def check_ports_free(ports: dict[int, str]) -> None:
    """``ConfigError`` naming the first port (and what it was for) that something else
    already listens on: the demo would otherwise talk to someone else's servers."""
    for port, what in ports.items():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise ConfigError(
                    f"port {port} ({what}) is already in use: stop what listens there, or "
                    "choose --port / --source-port"
                ) from None


def run_demo(
    *, size: int, seed: int, port: int, source_port: int, latency_ms: float, database: str
) -> int:
    """Run everything until interrupted."""
    import uvicorn

    from carelink.app import create_app
    from carelink.offline import build_index_from
    from carelink.simulators.population import people
    from carelink.storage import Database, IndexStore

    check_ports_free(
        {port: "gateway"} | {source_port + i: f"simulator {name}" for i, name in enumerate(SOURCES)}
    )
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    print(f"starting four simulated sources for {size:,} people (seed {seed}) ...", flush=True)
    urls, procs = start_simulators(size, seed, source_port, latency_ms)
    try:
        keys = Path(database).parent / "issuer"
        issuer = LocalIssuer(keys)
        base = f"http://127.0.0.1:{port}/fhir"
        settings = replace(
            Settings.from_env(),
            database_url=database,
            sources=urls,
            auth="jwt",
            audience=base,
            issuer_keys=str(keys),
        )
        db = Database(database)
        db.migrate()
        store = IndexStore(db)
        report = asyncio.run(build_index_from(settings, store))
        example = max(people(seed, size), key=lambda p: len(p.sources))
        row = store.person_by_nhs(example.nhs_number)
        pid = row.id if row else "<id>"
        store.close()
        db.dispose()
        print(
            f"index built: {report.persons:,} people, {report.by_nhs_number:,} records linked "
            f"by NHS number, {report.by_demographics:,} by demographics",
            flush=True,
        )
        token = issuer.mint(
            base,
            {
                "sub": "demo-clinician",
                "role": "R8000",
                "organisation": "RXX01",
                "purpose_of_use": "TREAT",
                "scope": "user/*.rs",
            },
            lifetime=8 * 3600,
        )
        for name, url in urls.items():
            print(f"  source {name:12} {url}")
        auth = '-H "Authorization: Bearer $TOKEN"'
        print(
            f"\ngateway: {base}  (a development token for 8 hours; "
            "`carelink token mint --help` makes others)\n\n"
            f"export TOKEN={token}\n\ntry:\n"
            f"  curl '{base}/metadata'\n"
            f"  curl {auth} '{base}/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|"
            f"{example.nhs_number}'\n"
            f"  curl {auth} '{base}/Patient/{pid}/$everything'\n"
            f"  curl {auth} '{base}/Observation?patient={pid}&category=vital-signs'\n",
            flush=True,
        )
        os.environ["CARELINK_DATABASE_URL"] = database
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    return 0
