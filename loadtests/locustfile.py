"""A clinician's use of the shared care record, for Locust.

Weights follow what a clinical app does: most calls look someone up by NHS
number; about a third of lookups go on to read the record, some page through
it, and some ask for one kind of data (vital signs, encounters, problems,
medication, allergies). Patients are spread over the whole population the
demo serves (``CARELINK_SEED``/``CARELINK_SIZE``, default 42/2000 as
``carelink demo``).

Requests carry a bearer token: ``CARELINK_TOKEN`` if set, else one minted
with the gateway's own issuer key for the gateway's audience, both read from
the same settings the gateway reads (``CARELINK_ISSUER_KEYS``, default
``var/issuer`` where the demo keeps it; ``CARELINK_AUDIENCE``, default the
host's ``/fhir``). Each request carries an ``X-Request-ID`` of its own
(``locust-<uuid>``), as a clinical app's would, so a run's answers can be
matched with the audit trail afterwards (``loadtests/README.md``).

At the end the run is judged against ``thresholds.json`` (p95/p99 per request
group, error rate); a miss prints why and makes the exit code 1.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from carelink.auth.local_issuer import LocalIssuer
from carelink.settings import Settings
from carelink.simulators.population import people

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SEED = int(os.environ.get("CARELINK_SEED", "42"))
SIZE = int(os.environ.get("CARELINK_SIZE", "2000"))
THRESHOLDS = Path(
    os.environ.get("CARELINK_THRESHOLDS", Path(__file__).with_name("thresholds.json"))
)
NUMBERS = [p.nhs_number for p in people(SEED, SIZE)]
SEARCHES = (
    ("Observation", {"category": "vital-signs"}),
    ("Encounter", {}),
    ("Condition", {}),
    ("MedicationStatement", {}),
    ("AllergyIntolerance", {}),
)


def token_for(host: str) -> str:
    """The bearer token for this run."""
    given = os.environ.get("CARELINK_TOKEN")
    if given:
        return given
    settings = Settings.from_env()  # the issuer key and audience the gateway uses
    claims = {
        "sub": "load-test-clinician",
        "role": "R8000",
        "organisation": "RXX01",
        "purpose_of_use": "TREAT",
        "scope": "user/*.rs",
    }
    # the gateway's own key, never a new one (a token signed with that would be refused)
    issuer = LocalIssuer(Path(settings.issuer_keys), create=False)
    audience = settings.audience or host.rstrip("/") + "/fhir"
    return issuer.mint(audience, claims, lifetime=4 * 3600)


def request_id() -> dict[str, str]:
    """A fresh ``X-Request-ID`` header (the gateway returns it and writes it in the audit)."""
    return {"X-Request-ID": f"locust-{uuid.uuid4()}"}


class Clinician(HttpUser):
    """One clinician's app: look up, read, page, search."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.ids: list[str] = []
        self.client.headers["Authorization"] = f"Bearer {token_for(self.host or '')}"

    def _lookup(self) -> str | None:
        nhs = random.choice(NUMBERS)
        with self.client.get(
            "/fhir/Patient",
            params={"identifier": f"{NHS}|{nhs}"},
            name="lookup",
            headers=request_id(),
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return None
            entries = resp.json().get("entry", [])
            if not entries:
                resp.failure("a population member was not found")
                return None
            pid = str(entries[0]["resource"]["id"])
        self.ids = [*self.ids, pid][-20:]
        return pid

    def _someone(self) -> str | None:
        return random.choice(self.ids) if self.ids else self._lookup()

    @task(10)
    def lookup(self) -> None:
        self._lookup()

    @task(4)
    def record(self) -> None:
        pid = self._someone()
        if pid:
            self.client.get(
                f"/fhir/Patient/{pid}/$everything", name="everything", headers=request_id()
            )

    @task(2)
    def page_through(self) -> None:
        pid = self._someone()
        if not pid:
            return
        url: str | None = f"/fhir/Patient/{pid}/$everything?_count=20"
        for _ in range(10):
            if url is None:
                break
            resp = self.client.get(url, name="everything page", headers=request_id())
            if resp.status_code != 200:
                break
            url = next(
                (lk["url"] for lk in resp.json().get("link", []) if lk["relation"] == "next"), None
            )

    @task(4)
    def search(self) -> None:
        pid = self._someone()
        if pid:
            rtype, params = random.choice(SEARCHES)
            self.client.get(
                f"/fhir/{rtype}",
                params={"patient": pid, **params},
                name="search",
                headers=request_id(),
            )


def judge(stats: Any, limits: dict[str, Any]) -> list[str]:
    """Every threshold the run missed, as a sentence."""
    misses = []
    total = stats.total
    if total.num_requests == 0:
        return ["no requests were made"]
    error_rate = total.num_failures / total.num_requests
    if error_rate > limits["max_error_rate"]:
        misses.append(f"error rate {error_rate:.2%} > {limits['max_error_rate']:.2%}")
    for name, limit in limits["latency_ms"].items():
        entry = stats.entries.get((name, "GET"))
        if entry is None or entry.num_requests == 0:
            misses.append(f"{name}: no requests")
            continue
        for pct in ("p95", "p99"):
            got = entry.get_response_time_percentile(int(pct[1:]) / 100)
            if got > limit[pct]:
                misses.append(f"{name} {pct} {got:.0f} ms > {limit[pct]} ms")
    return misses


@events.quitting.add_listener
def _check(environment: Any, **_: Any) -> None:
    limits = json.loads(THRESHOLDS.read_text())
    misses = judge(environment.stats, limits)
    for miss in misses:
        print(f"THRESHOLD MISSED: {miss}")
    if misses:
        environment.process_exit_code = 1
    else:
        print("all thresholds met")
