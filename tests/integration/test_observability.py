"""Operability, through a real gateway process in token mode against the real simulators:
its JSON log lines (read from its stderr), request ids end to end, the probes and
metrics, links that never come from the Host header, and readiness when the database
cannot be opened."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.population import Person
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.integration.conftest import System
from tests.support.gateways import copy_index
from tests.support.procs import free_port, running
from tests.support.tokens import ISSUER, Issuer

EVIL = "evil.example"
#: this gateway's circuit reset: long enough that a slow machine cannot half-open a
#: circuit between two requests of one test
RESET = 2.0


def settled_lines(log: Path) -> list[dict[str, Any]]:
    """The log's lines once it has stopped growing: the gateway writes its lines in
    batches a moment after the answers they tell of (``observability.logs.BufferedLines``)."""
    deadline = time.monotonic() + 5
    size = -1
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = log.stat().st_size
        if now == size:
            break
        size = now
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@dataclass
class Gateway:
    base: str
    log: Path
    db: Path
    issuer: Issuer

    def headers(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.token(aud=self.base)}", **more}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        url = path if path.startswith("http") else f"{self.base}{path}"
        return httpx.get(url, headers=headers, timeout=15, **kwargs)

    def lines(self) -> list[dict[str, Any]]:
        """Every line the process wrote so far, each parsed as JSON (fails if one is not)."""
        return settled_lines(self.log)

    def access(self, request_id: str) -> dict[str, Any]:
        """The access line of one request."""
        found = [
            line
            for line in self.lines()
            if line["logger"] == "carelink.access" and line.get("request_id") == request_id
        ]
        assert len(found) == 1, found
        return found[0]

    def audited_ids(self) -> set[str]:
        """Every request id in the audit trail."""
        db = Database(str(self.db))
        try:  # each event whole, as ``verify`` reads it (a search's are stored in part)
            events = [json.loads(r.event) for r in AuditStore(db).rows()]
        finally:
            db.dispose()
        return {
            entity["what"]["identifier"]["value"]
            for event in events
            for entity in event.get("entity", [])
            if entity.get("description") == "request id"
        }


@pytest.fixture(scope="module")
def gateway(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with _gateway(system, tmp_path_factory.mktemp("observed")) as started:
        yield started


@pytest.fixture
def own_gateway(system: System, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway of the test's own: nothing another test started (an export cancelled
    but still reading every source until its next heartbeat, say) asks its sources or
    counts towards its circuits."""
    with _gateway(system, tmp_path) as started:
        yield started


@contextmanager
def _gateway(system: System, tmp: Path) -> Iterator[Gateway]:
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp / "index.db")
    issuer = Issuer()
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(issuer.public_jwks()))
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    env = {
        **system.env,
        "CARELINK_DATABASE_URL": str(db),
        "CARELINK_AUTH": "jwt",
        "CARELINK_ISSUER": ISSUER,
        "CARELINK_AUDIENCE": base,
        "CARELINK_JWKS": str(jwks),
        "CARELINK_ISSUER_KEYS": str(tmp / "local-issuer"),
        "CARELINK_LOG_LEVEL": "warning",  # the command line's --log-level wins over it
        "CARELINK_BREAKER_RESET": str(RESET),
    }
    log = tmp / "gateway.log"
    args = ["serve", "--port", str(port), "--log-level", "info"]
    with running(args, f"{base}/metadata", env, output=log):
        yield Gateway(base, log, db, issuer)


def _people(system: System, count: int = 3) -> list[Person]:
    """People with records at two sources or more."""
    return [p for p in system.population if len(p.sources) >= 2][:count]


def _pid(gateway: Gateway, person: Person) -> str:
    found = gateway.get(
        "/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
    )
    assert found.status_code == 200, found.text
    return str(found.json()["entry"][0]["resource"]["id"])


def test_lookups_log_one_json_access_line_each_without_any_patient_detail(gateway, system):
    looked_up = []
    for person in _people(system):
        pid = _pid(gateway, person)
        looked_up.append((person, pid))
        for path, params in [
            ("/Patient", {"family": person.family, "birthdate": person.birth_date.isoformat()}),
            (f"/Patient/{pid}", {}),
            (f"/Patient/{pid}/$everything", {}),
            ("/Observation", {"patient": pid}),
        ]:
            rid = f"lookup-{uuid.uuid4()}"
            r = gateway.get(path, params=params, headers={"X-Request-ID": rid})
            assert r.status_code == 200, r.text
            line = gateway.access(rid)
            assert line["level"] == "info"
            assert line["method"] == "GET"
            assert line["status"] == 200
            assert line["duration_ms"] > 0
            assert line["timestamp"].endswith("Z")
            assert "{" in line["route"] or line["route"] in ("/fhir/Patient", "/fhir/Observation")
    everything = [
        line for line in gateway.lines() if line.get("route") == "/fhir/Patient/{pid}/$everything"
    ]
    assert len(everything) == len(looked_up)
    for line in everything:  # the sources asked, each with its outcome and time
        assert len(line["sources"]) >= 2
        for asked in line["sources"]:
            assert asked["source"] in system.sources
            assert asked["outcome"] in ("ok", "timeout", "error", "circuit-open")
            assert asked["ms"] >= 0
    text = gateway.log.read_text()
    for person, pid in looked_up:
        for secret in (person.nhs_number, person.family, person.given, pid):
            assert secret not in text, f"{secret!r} is in the gateway's log"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("client-abc.123", True), (None, False), ("x" * 300, False), ("bad id;drop", False)],
)
def test_the_request_id_is_answered_logged_and_audited_as_one_value(gateway, system, sent, kept):
    person = _people(system, 1)[0]
    pid = _pid(gateway, person)
    headers = {} if sent is None else {"X-Request-ID": sent}
    r = gateway.get(f"/Patient/{pid}", headers=headers)
    assert r.status_code == 200
    used = r.headers["X-Request-ID"]
    if kept:
        assert used == sent
    else:
        assert uuid.UUID(used).version == 4
    assert gateway.access(used)["route"] == "/fhir/Patient/{pid}"
    assert used in gateway.audited_ids()


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/Patient/no-such-person", True, 404),
        ("/Patient", False, 401),
        ("/NoSuchType", True, 404),
        ("/Patient?birthdate=not-a-date", True, 400),
    ],
)
def test_error_answers_carry_the_request_id_too(gateway, path, token, status):
    rid = f"err-{uuid.uuid4()}"
    headers = gateway.headers(**{"X-Request-ID": rid}) if token else {"X-Request-ID": rid}
    r = httpx.get(f"{gateway.base}{path}", headers=headers, timeout=15)
    assert r.status_code == status
    assert r.headers["X-Request-ID"] == rid
    assert gateway.access(rid)["status"] == status
    assert rid in gateway.audited_ids()


def test_an_unmatched_path_is_logged_as_unmatched_not_as_sent(gateway):
    rid = f"404-{uuid.uuid4()}"
    r = httpx.get(gateway.base.removesuffix("/fhir") + "/9434765919", headers={"X-Request-ID": rid})
    assert r.status_code == 404
    assert gateway.access(rid)["route"] == "unmatched"


def test_the_probes_and_metrics_answer_without_a_token(gateway):
    root = gateway.base.removesuffix("/fhir")
    assert httpx.get(f"{gateway.base}/Patient").status_code == 401
    live = httpx.get(f"{root}/livez", headers={"X-Request-ID": "probe-1"})
    ready = httpx.get(f"{root}/readyz")
    scraped = httpx.get(f"{root}/metrics")
    assert (live.status_code, ready.status_code, scraped.status_code) == (200, 200, 200)
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert live.headers["X-Request-ID"] == "probe-1"
    # probes come every few seconds: counted, but their access lines are debug-level
    assert not [line for line in gateway.lines() if line.get("request_id") == "probe-1"]


def test_metrics_count_requests_sources_circuits_audit_and_jobs_without_patient_data(
    gateway, system
):
    person = _people(system, 1)[0]
    pid = _pid(gateway, person)
    for _ in range(2):
        assert gateway.get(f"/Patient/{pid}/$everything").status_code == 200
    text = httpx.get(gateway.base.removesuffix("/fhir") + "/metrics").text
    everything = 'method="GET",route="/fhir/Patient/{pid}/$everything",status="200"'
    assert f"carelink_http_requests_total{{{everything}}}" in text
    assert f'carelink_http_request_duration_seconds_bucket{{le="+Inf",{everything}}}' in text
    for source in person.sources:  # outcome "ok" unless the machine is very slow
        assert f'carelink_source_requests_total{{outcome="ok",source="{source}"}}' in text or (
            f'carelink_source_requests_total{{outcome="timeout",source="{source}"}}' in text
        )
        assert f'_seconds_count{{outcome="ok",source="{source}"}}' in text or (
            f'_seconds_count{{outcome="timeout",source="{source}"}}' in text
        )
    for source in system.sources:
        assert f'carelink_source_circuit_state{{source="{source}"}}' in text
    assert "carelink_audit_commit_duration_seconds_count " in text
    assert "carelink_audit_commit_events_bucket" in text
    assert 'carelink_export_jobs{state="running"}' in text
    for secret in (person.nhs_number, person.family, pid):
        assert secret not in text


def _links(bundle: dict[str, Any]) -> list[str]:
    return [link["url"] for link in bundle.get("link", [])] + [
        e["fullUrl"] for e in bundle.get("entry", []) if "fullUrl" in e
    ]


def test_links_come_from_the_configured_base_never_the_host_header(gateway, system):
    person = _people(system, 1)[0]
    pid = _pid(gateway, person)
    evil = {"Host": EVIL}
    search = gateway.get(
        "/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}, headers=evil
    )
    page = gateway.get(f"/Patient/{pid}/$everything", params={"_count": 2}, headers=evil)
    assert search.status_code == page.status_code == 200
    links = _links(search.json()) + _links(page.json())
    following = [link["url"] for link in page.json()["link"] if link["relation"] == "next"]
    assert following, "the record should need more than one page of 2"
    second = gateway.get(following[0], headers=evil)
    assert second.status_code == 200
    links += _links(second.json())
    assert links
    assert all(link.startswith(gateway.base) for link in links), links
    analyst = gateway.issuer.token(
        aud=gateway.base,
        sub="analyst",
        role=None,
        organisation=None,
        scope="system/*.rs",
        purpose_of_use="HRESCH",
        client_id="analyst",
    )
    kick = httpx.get(
        f"{gateway.base}/$export",
        params={"_type": "Patient"},
        headers={"Authorization": f"Bearer {analyst}", "Prefer": "respond-async", **evil},
        timeout=15,
    )
    assert kick.status_code == 202, kick.text
    status = kick.headers["Content-Location"]
    assert status.startswith(f"{gateway.base}/$export-status/")
    for answer in (search, page, second, kick):
        assert EVIL not in answer.text
        assert all(EVIL not in v for v in answer.headers.values())
    httpx.delete(status, headers={"Authorization": f"Bearer {analyst}"}, timeout=15)


def test_a_failing_source_and_its_circuit_are_logged(own_gateway, system):
    gateway = own_gateway
    person = next(p for p in _people(system, 20) if "community" in p.sources)
    pid = _pid(gateway, person)
    # a closed circuit with no failures counted, community's kind confirmed: one answer
    _until_the_source_answers(gateway, pid, "community")
    system.faults("community", down=True)
    try:
        ids = []
        for _ in range(4):  # three failures open the circuit; the fourth is not sent
            rid = f"down-{uuid.uuid4()}"
            ids.append(rid)
            assert (
                gateway.get(
                    f"/Patient/{pid}/$everything", headers={"X-Request-ID": rid}
                ).status_code
                == 200
            )
    finally:
        system.heal()
    time.sleep(RESET)  # this gateway's circuit half-opens: the next request is its trial
    healed = f"healed-{uuid.uuid4()}"
    assert (
        gateway.get(f"/Patient/{pid}/$everything", headers={"X-Request-ID": healed}).status_code
        == 200
    )
    lines = gateway.lines()
    failed = [
        line
        for line in lines
        if line["logger"] == "carelink.sources"
        and line.get("request_id") in ids
        and line["source"] == "community"
    ]
    told = [  # what the gateway said of community around these requests, for a failure
        (line["logger"], line.get("request_id"), line.get("outcome"), line.get("state"))
        for line in lines
        if line.get("source") == "community"
        or (line["logger"] == "carelink.access" and line.get("request_id") in ids)
    ][-20:]
    assert len(failed) == 3, told
    assert all(line["level"] == "warning" and line["reason"] for line in failed)
    circuit = [
        (line["state"], line["level"])
        for line in lines
        if line["logger"] == "carelink.circuit" and line["source"] == "community"
    ]
    assert circuit[-3:] == [("open", "warning"), ("half-open", "info"), ("closed", "info")]
    outcomes = [{s["source"]: s["outcome"] for s in gateway.access(rid)["sources"]} for rid in ids]
    # a 503 (error), or on a machine slow enough, no answer within the budget (timeout)
    assert {o["community"] for o in outcomes[:3]} <= {"error", "timeout"}
    assert outcomes[3]["community"] == "circuit-open"
    assert {s["source"]: s["outcome"] for s in gateway.access(healed)["sources"]}[
        "community"
    ] == "ok"


def _until_the_source_answers(gateway: Gateway, pid: str, source: str) -> None:
    """Ask for ``pid``'s record until ``source`` answers it ``ok`` (its circuit is then
    closed with no failures counted), waiting out an open circuit; fails after 10 tries."""
    outcomes = []
    for _ in range(10):
        rid = f"settle-{uuid.uuid4()}"
        assert (
            gateway.get(f"/Patient/{pid}/$everything", headers={"X-Request-ID": rid}).status_code
            == 200
        )
        outcome = {s["source"]: s["outcome"] for s in gateway.access(rid)["sources"]}[source]
        if outcome == "ok":
            return
        outcomes.append(outcome)
        time.sleep(RESET)  # an open circuit half-opens after RESET
    raise AssertionError(f"{source} never answered: {outcomes}")


@pytest.fixture
def plain(system: System, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A development-mode gateway on its own copy of the database: (root URL, db, log)."""
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "index.db")
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    env = {**system.env, "CARELINK_DATABASE_URL": str(db)}
    log = tmp_path / "gateway.log"
    with running(["serve", "--port", str(port)], f"{root}/livez", env, output=log):
        yield root, db, log


def test_readyz_is_503_while_the_database_cannot_be_opened(plain):
    root, db, log = plain
    assert httpx.get(f"{root}/readyz").status_code == 200
    away = db.with_name("index.db.away")
    db.rename(away)
    db.mkdir()  # the path is there, but it is no database
    try:
        down = httpx.get(f"{root}/readyz", timeout=5, headers={"X-Request-ID": "not-ready"})
        alive = httpx.get(f"{root}/livez", timeout=5)
    finally:
        db.rmdir()
        away.rename(db)
    assert down.status_code == 503
    assert down.headers["Retry-After"].isdigit()
    assert down.json()["resourceType"] == "OperationOutcome"
    assert alive.status_code == 200  # the process is up all the same
    assert httpx.get(f"{root}/readyz").status_code == 200
    lines = settled_lines(log)
    events = [line["event"] for line in lines]
    assert "database not ready" in events
    assert "database ready" in events
    failed = [line for line in lines if line.get("request_id") == "not-ready"]
    assert {(line["event"], line.get("status")) for line in failed} == {
        ("database not ready", None),
        ("request", 503),  # a failing probe is logged at info level
    }


def test_the_metrics_token_when_set_is_required(system, tmp_path):
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "index.db")
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    env = {**system.env, "CARELINK_DATABASE_URL": str(db), "CARELINK_METRICS_TOKEN": "s3cret"}
    with running(["serve", "--port", str(port)], f"{root}/livez", env):
        assert httpx.get(f"{root}/metrics").status_code == 401
        assert (
            httpx.get(f"{root}/metrics", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        ok = httpx.get(f"{root}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert "carelink_http_requests_total" in ok.text


def test_with_several_workers_a_scrape_counts_every_workers_requests(system, tmp_path):
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "index.db")
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    shared = tmp_path / "metrics"
    env = {
        **system.env,
        "CARELINK_DATABASE_URL": str(db),
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
    }
    args = ["serve", "--port", str(port), "--workers", "2"]
    with running(args, f"{root}/livez", env):  # its readiness poll is one /livez request
        time.sleep(1.0)  # both workers up
        for _ in range(20):  # a new connection each time, so either worker may answer
            with httpx.Client() as client:
                assert client.get(f"{root}/livez").status_code == 200
        seen = set()
        for _ in range(6):  # whichever worker answers the scrape, it counts them all
            with httpx.Client() as client:
                scraped = client.get(f"{root}/metrics").text
            seen |= {
                line.rsplit(" ", 1)[1]
                for line in scraped.splitlines()
                if line.startswith("carelink_http_requests_total{") and 'route="/livez"' in line
            }
        writers = {f.stem.rsplit("_", 1)[1] for f in shared.glob("*.db")}
    assert len(writers) == 2  # each worker writes its own values ...
    assert seen == {"21.0"}  # ... and a scrape sums them
