"""A whole carelink system for the integration and adversarial tests: four simulators as
separate processes, a patient index in a real SQLite file, and the gateway under uvicorn."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from carelink.simulators.population import SOURCES, Person, people
from tests.support.procs import carelink, free_port, running

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


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp: Path = tmp_path_factory.mktemp("system")
    with ExitStack() as stack:
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
        env = {
            "CARELINK_DATABASE_URL": str(tmp / "index.db"),
            "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in urls.items()),
            "CARELINK_BUDGET": "0.5",
            "CARELINK_BREAKER_RESET": "0.3",
            "CARELINK_AUTH": "development",  # token mode has its own tests (test_auth, ...)
        }
        built = carelink(["index", "build"], env)
        assert built.returncode == 0, built.stderr
        port = free_port()
        base = f"http://127.0.0.1:{port}/fhir"
        stack.enter_context(running(["serve", "--port", str(port)], f"{base}/metadata", env))
        yield System(base, urls, env, list(people(SEED, SIZE)))
