"""A whole carelink system for the integration and adversarial tests: four simulators as
separate processes, a patient index in a real SQLite file, and the gateway under uvicorn.

``system`` asks the community trust live over HTTP (the fault tests drive its
simulator); ``feed_system`` takes the community trust's HL7 v2 feed instead: a
``carelink feed listen`` process, the simulator pushing its population to it over
MLLP, and the gateway serving the community part from what was stored."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from carelink.simulators.population import SOURCES, Person, people
from tests.support.procs import carelink, env, free_port, running

SIZE = 300
SEED = 7


@dataclass(frozen=True)
class System:
    """Where everything is listening."""

    base: str  # gateway FHIR base
    sources: dict[str, str]
    env: dict[str, str]
    population: list[Person]

    def faults(self, source: str, **changes: object) -> None:
        """Change a running simulator's behaviour."""
        req = urllib.request.Request(
            f"{self.sources[source]}/_admin/faults",
            data=json.dumps(changes).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    def heal(self) -> None:
        """Every simulator back to normal, and every gateway circuit breaker reset."""
        for name in self.sources:
            self.faults(name, error_rate=0.0, hang_rate=0.0, malformed_rate=0.0, down=False)
        time.sleep(0.35)  # CARELINK_BREAKER_RESET: let open circuits half-open again


def _simulators(stack: ExitStack) -> dict[str, str]:
    urls = {}
    for name in SOURCES:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack.enter_context(
            running(
                [
                    "simulate",
                    name,
                    "--port",
                    str(port),
                    "--size",
                    str(SIZE),
                    "--seed",
                    str(SEED),
                    "--latency-ms",
                    "2",
                ],
                f"{url}/_admin/health",
            )
        )
        urls[name] = url
    return urls


def _gateway(stack: ExitStack, urls: dict[str, str], tmp: Path, feeds: str = "") -> System:
    sources = {**urls, **({"community": feeds} if feeds else {})}
    env = {
        "CARELINK_DATABASE_URL": str(tmp / "index.db"),
        "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in sources.items()),
        "CARELINK_BUDGET": "0.5",
        "CARELINK_BREAKER_RESET": "0.3",
        "CARELINK_AUTH": "development",  # token mode has its own tests (test_auth, ...)
    }
    if feeds:
        _, _, port = feeds.rpartition(":")
        stack.enter_context(feed_listener(int(port), env))
        pushed = carelink(
            [
                *("simulate", "community", "--feed-to", f"127.0.0.1:{port}"),
                *("--size", str(SIZE), "--seed", str(SEED)),
            ]
        )
        assert pushed.returncode == 0, pushed.stderr
        assert " 0 refused" in pushed.stdout, pushed.stdout
    built = carelink(["index", "build"], env)
    assert built.returncode == 0, built.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    stack.enter_context(running(["serve", "--port", str(port)], f"{base}/metadata", env))
    return System(base, urls, env, list(people(SEED, SIZE)))


@contextmanager
def feed_listener(port: int, extra_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``carelink feed listen`` as a process, once it accepts connections on ``port``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "carelink", "feed", "listen"],
        env=env(extra_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"feed listener exited ({proc.returncode})"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "feed listener not listening"
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp: Path = tmp_path_factory.mktemp("system")
    with ExitStack() as stack:
        yield _gateway(stack, _simulators(stack), tmp)


@pytest.fixture(scope="module")
def feed_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The whole system with the community trust pushing its HL7 v2 feed over MLLP."""
    tmp: Path = tmp_path_factory.mktemp("feed-system")
    with ExitStack() as stack:
        urls = _simulators(stack)
        yield _gateway(stack, urls, tmp, feeds=f"mllp://127.0.0.1:{free_port()}")
