"""A source that fails, hangs, sends garbage or is down never fails the request."""

from __future__ import annotations

import time

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.population import SOURCES
from tests.integration.conftest import System
from tests.support.procs import free_port, running

BUDGET = 0.5
FAULTS = {
    "error": {"error_rate": 1.0},
    "hang": {"hang_rate": 1.0, "hang_seconds": 30.0},
    "malformed": {"malformed_rate": 1.0},
    "down": {"down": True},
}
EXPECTED = {"error": "error", "hang": "timeout", "malformed": "error", "down": "error"}


def everyone(system: System):
    return next(p for p in system.population if len(p.sources) == 4)


def pid_of(system: System, person) -> str:
    r = httpx.get(
        f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
    )
    return r.json()["entry"][0]["resource"]["id"]


def statuses(bundle: dict) -> dict[str, str]:
    oo = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    out = {}
    for i in oo["issue"]:
        name = next(x["valueString"] for x in i["extension"] if x["url"].endswith("source-name"))
        out[name] = i["details"]["coding"][0]["code"]
    return out


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("source", SOURCES)
def test_each_fault_on_each_source_gives_the_rest_of_the_record(system, source, fault):
    person = everyone(system)
    pid = pid_of(system, person)
    system.faults(source, **FAULTS[fault])
    try:
        t0 = time.monotonic()
        r = httpx.get(
            f"{system.base}/Patient/{pid}/$everything", params={"_count": 1000}, timeout=10
        )
        elapsed = time.monotonic() - t0
    finally:
        system.heal()
    assert r.status_code == 200
    bundle = r.json()
    got = statuses(bundle)
    assert got[source] == EXPECTED[fault]
    assert all(v == "ok" for k, v in got.items() if k != source)
    sources_seen = {
        e["resource"].get("meta", {}).get("source")
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
    }
    assert f"urn:carelink:source:{source}" not in sources_seen
    assert {f"urn:carelink:source:{s}" for s in SOURCES if s != source} <= sources_seen
    assert elapsed < BUDGET + 1.5, f"took {elapsed:.2f}s with a {BUDGET}s budget"


def test_prefer_wait_returns_what_arrived_by_then(system):
    person = everyone(system)
    pid = pid_of(system, person)
    system.faults("community", latency_ms=400.0, latency_sigma=0.01)
    try:
        r = httpx.get(
            f"{system.base}/Patient/{pid}/$everything", headers={"Prefer": "wait=0.1"}, timeout=10
        )
    finally:
        system.faults("community", latency_ms=2.0, latency_sigma=0.25)
        system.heal()
    got = statuses(r.json())
    assert got["community"] == "timeout"
    assert got["gp"] == "ok"


def test_circuit_opens_so_a_dead_source_costs_no_waiting(system):
    person = everyone(system)
    pid = pid_of(system, person)
    system.faults("social-care", hang_rate=1.0, hang_seconds=30.0)
    try:
        seen = []
        for _ in range(5):
            r = httpx.get(f"{system.base}/Patient/{pid}/$everything", timeout=10)
            seen.append(statuses(r.json())["social-care"])
        t0 = time.monotonic()
        r = httpx.get(f"{system.base}/Patient/{pid}/$everything", timeout=10)
        fast = time.monotonic() - t0
        last = statuses(r.json())["social-care"]
    finally:
        system.heal()
    assert seen[:3] == ["timeout"] * 3
    assert "circuit-open" in [*seen[3:], last]
    assert last in ("circuit-open", "timeout")
    if last == "circuit-open":
        assert fast < BUDGET


def test_a_source_whose_process_is_not_running_is_reported_not_fatal(system):
    env = dict(system.env)
    dead = f"http://127.0.0.1:{free_port()}"
    env["CARELINK_SOURCES"] = ",".join(
        f"{k}={dead if k == 'acute' else v}" for k, v in system.sources.items()
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    with running(["serve", "--port", str(port)], f"{base}/metadata", env):
        pid = pid_of(System(base, system.sources, env, system.population), everyone(system))
        r = httpx.get(f"{base}/Patient/{pid}/$everything", timeout=10)
    assert r.status_code == 200
    got = statuses(r.json())
    assert got["acute"] == "error"
    assert got["gp"] == "ok"
