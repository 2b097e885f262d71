"""An audit trail a privacy officer can rely on (issue 11): attacks on it, against a real
gateway process (token mode, its own copy of the integration index, checkpoints every
``EVERY`` events into a folder of its own).

- every request about one patient, however it named them (gateway id, a source's
  Patient id, PIXm, ``subject=``, NHS number, a CDS consult, a break-glass body),
  allowed or refused, is in that patient's audit view, paged, with an exact total;
- a search writes events only for the people on the page it returns;
- a 500 is audited; reads of the audit and the export routes are audited;
- 1,010 reads do not hide earlier events;
- tampering with the stored trail (content, patient, outcome, order, a middle row,
  the tail) is named by ``carelink audit verify`` (exit 5), which never makes a key.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from carelink.audit.checkpoints import latest, read
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database, IndexStore
from carelink.storage.audit_store import AuditStore
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import copy_index, token_gateways
from tests.support.procs import carelink
from tests.support.tokens import Issuer

EVERY = 25
ACUTE = "https://carelink.example/Id/acute"
CDS = "/cds-services/patient-consent-consult"


@dataclass
class Gateway:
    base: str
    env: dict[str, str]
    issuer: Issuer
    db: Path
    checkpoints: Path

    def token(self, **claims: Any) -> str:
        return self.issuer.token(aud=self.base, **claims)

    def call(
        self,
        method: str,
        path: str,
        token: str | None,
        step: str,
        body: Any = None,
        **params: Any,
    ) -> httpx.Response:
        """One request, tagged with a request id the audit event carries."""
        headers = {"X-Request-Id": step, "Content-Type": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = (
            self.base.removesuffix("/fhir") + path if path.startswith("/cds") else self.base + path
        )
        return httpx.request(
            method,
            url,
            params=params,
            headers=headers,
            content=orjson.dumps(body) if body is not None else None,
            timeout=15,
        )


@pytest.fixture(scope="module")
def gateway(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("audit-attacks")
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp / "audit.db")
    checkpoints = tmp / "checkpoints"
    extra = {
        "CARELINK_AUDIT_CHECKPOINTS": str(checkpoints),
        "CARELINK_AUDIT_KEYS": str(tmp / "audit-keys"),
        "CARELINK_AUDIT_CHECKPOINT_EVERY": str(EVERY),
    }
    issuer = Issuer()
    with token_gateways(system.env, db, issuer, tmp, extra=extra) as [started]:
        yield Gateway(started.base, started.env, issuer, db, checkpoints)


def _person(system: System, n: int = 0) -> Any:
    people = [p for p in system.population if {"gp", "acute"} <= p.sources]
    return people[n]


def _pid(gw: Gateway, nhs: str) -> str:
    found = gw.call(
        "GET", "/Patient", gw.token(), "lookup", identifier=f"{NHS_NUMBER_SYSTEM}|{nhs}"
    ).json()
    return str(found["entry"][0]["resource"]["id"])


def _events(
    gw: Gateway, text: str | None = None, patient: str | None = None
) -> list[tuple[int, str | None, dict]]:
    """The trail's events holding ``text``, or about ``patient``: each event's bytes whole,
    as ``verify`` reads them (a search's events are stored in part)."""
    db = Database(str(gw.db))
    try:
        rows = list(AuditStore(db).rows())
    finally:
        db.dispose()
    return [
        (r.seq, r.patient_id, orjson.loads(r.event))
        for r in rows
        if (text is None or text.encode() in r.event)
        and (patient is None or r.patient_id == patient)
    ]


def _request_id(event: dict) -> str:
    return next(
        x["what"]["identifier"]["value"]
        for x in event["entity"]
        if "identifier" in x.get("what", {})
    )


def _officer(gw: Gateway) -> str:
    return gw.token(role="R0001", purpose_of_use="HOPERAT", sub="privacy-officer")


def _audit_view(gw: Gateway, pid: str, count: int, **params: Any) -> tuple[list[dict], list[int]]:
    """Every event in a patient's audit view, following next links; and each page's total."""
    officer = _officer(gw)
    page = gw.call("GET", "/AuditEvent", officer, "officer", patient=pid, _count=count, **params)
    assert page.status_code == 200, page.text
    events, totals = [], []
    while True:
        bundle = page.json()
        totals.append(bundle["total"])
        events += [e["resource"] for e in bundle.get("entry", [])]
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return events, totals
        page = httpx.get(following[0], headers={"Authorization": f"Bearer {officer}"}, timeout=15)
        assert page.status_code == 200, page.text


def test_every_request_about_a_patient_is_in_their_audit_view(gateway: Gateway, system: System):
    gw = gateway
    person = _person(system, 0)
    pid = _pid(gw, person.nhs_number)
    link = next(x for x in IndexStore(Database(str(gw.db))).links_of(pid) if x.source == "acute")
    source_pid = link.patient_id  # the acute system's own Patient, as the gateway serves it
    source_id = f"{ACUTE}|{link.local_id}"
    nhs = f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"
    doctor = gw.token()
    narrow = gw.token(scope="user/Observation.rs")  # may read nothing but observations
    stranger = gw.token(patient="someone-else", role=None, scope="patient/*.rs")
    consult = {
        "hook": "patient-consent-consult",
        "context": {"patientId": [{"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}]},
    }
    glass = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "identifier",
                "valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number},
            },
            {"name": "purpose", "valueCode": "TREAT"},  # wrong: a 400 after the person is known
            {"name": "reason", "valueString": "unconscious in ED, no history"},
        ],
    }
    permit = privacy_consent(pid, {"type": "permit"})
    manager = gw.token(scope="user/*.cruds", organisation=person.gp_ods)  # their own GP
    made = gw.call("POST", "/Consent", manager, "consent", permit)
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    u = uuid.uuid4().hex[:8]
    script: list[tuple[str, str, str | None, dict[str, Any], Any, int]] = [
        ("GET", "/Patient", doctor, {"identifier": nhs}, None, 200),
        ("GET", "/Patient", doctor, {"identifier": person.nhs_number}, None, 200),
        ("GET", f"/Patient/{pid}", doctor, {}, None, 200),
        ("GET", f"/Patient/{source_pid}", doctor, {}, None, 200),
        ("GET", "/Patient/$ihe-pix", doctor, {"sourceIdentifier": source_id}, None, 200),
        ("GET", f"/Patient/{pid}/$everything", doctor, {}, None, 200),
        ("GET", "/Condition", doctor, {"patient": pid}, None, 200),
        ("GET", "/Observation", doctor, {"subject": f"Patient/{pid}"}, None, 200),
        ("GET", "/Consent", doctor, {"patient": pid}, None, 200),
        ("POST", CDS, manager, {}, consult, 200),
        # refusals, each naming the person a different way
        ("GET", "/Patient", None, {"identifier": nhs}, None, 401),
        ("GET", "/Patient", narrow, {"identifier": nhs}, None, 403),
        ("GET", "/Patient", narrow, {"identifier": person.nhs_number}, None, 403),
        ("GET", f"/Patient/{source_pid}", narrow, {}, None, 403),
        ("GET", f"/Patient/{source_pid}", stranger, {}, None, 404),  # as if unknown
        ("GET", "/Patient/$ihe-pix", narrow, {"sourceIdentifier": source_id}, None, 403),
        ("GET", "/Condition", narrow, {"subject": f"Patient/{pid}"}, None, 403),
        ("GET", "/Condition", narrow, {"subject": source_pid}, None, 403),
        ("GET", f"/Patient/{pid}/$everything", stranger, {}, None, 403),
        ("POST", CDS, narrow, {}, consult, 403),
        ("GET", f"/Consent/{cid}", narrow, {}, None, 403),
        ("DELETE", f"/Consent/{cid}", narrow, {}, None, 403),
        ("POST", "/Patient/$break-glass", doctor, {}, glass, 400),
        ("GET", "/AuditEvent", doctor, {"patient": pid}, None, 403),
        ("GET", "/AuditEvent", stranger, {"patient": source_pid}, None, 403),
    ]
    for i, (method, path, token, params, body, status) in enumerate(script):
        r = gw.call(method, path, token, f"step-{u}-{i}", body, **params)
        assert r.status_code == status, (i, path, r.text)
    steps = {f"step-{u}-{i}" for i in range(len(script))}
    # one of the person's own resources, read by its id (``/{type}/{id}``) and refused
    conditions = gw.call("GET", "/Condition", doctor, "conditions", patient=pid).json()
    some = next(e["resource"] for e in conditions["entry"] if e["search"]["mode"] == "match")
    by_id = gw.call("GET", f"/Condition/{some['id']}", narrow, f"step-{u}-by-id")
    assert by_id.status_code == 403
    steps.add(f"step-{u}-by-id")

    view, totals = _audit_view(gw, pid, 5)
    in_view = [_request_id(e) for e in view]
    assert sorted(s for s in in_view if s in steps) == sorted(steps)  # each exactly once
    # the total is exact: the pages hold exactly the events there were when the first was
    # read; each later page's total also counts the officer's own audited reads meanwhile,
    # which are newer than the cursor and so never push an event off a page
    assert len(view) == totals[0]
    assert totals == [totals[0] + n for n in range(len(totals))]
    refused = {_request_id(e) for e in view if e["outcome"] == "4"}
    turned_away = {f"step-{u}-{i}" for i, step in enumerate(script) if step[-1] >= 400}
    assert turned_away | {f"step-{u}-by-id"} <= refused


def test_reads_of_the_audit_and_export_routes_and_unknown_paths_are_audited(gateway: Gateway):
    gw = gateway
    backend = gw.token(scope="system/*.rs", purpose_of_use="HRESCH", role=None)
    u = uuid.uuid4().hex[:8]
    calls = [
        ("GET", "/AuditEvent", _officer(gw), {"agent": "nobody"}, 200),
        ("GET", f"/$export-status/{u}", backend, {}, 404),
        ("DELETE", f"/$export-status/{u}", backend, {}, 404),
        ("GET", f"/$export-file/{u}/Patient.ndjson", backend, {}, 404),
        ("GET", "/NoSuchThing/at/all", backend, {}, 404),
    ]
    for i, (method, path, token, params, status) in enumerate(calls):
        got = gw.call(method, path, token, f"misc-{u}-{i}", **params).status_code
        # refused one way or another (404, or 401 where such a token is not accepted)
        assert got == status if status == 200 else 400 <= got < 500
    found = {_request_id(e): e for _, _, e in _events(gw, f"misc-{u}-")}
    assert sorted(found) == sorted(f"misc-{u}-{i}" for i in range(len(calls)))
    assert found[f"misc-{u}-0"]["outcome"] == "0"
    assert all(found[f"misc-{u}-{i}"]["outcome"] == "4" for i in range(1, len(calls)))


def test_a_search_with_count_1_audits_only_the_person_on_the_page(gateway: Gateway, system):
    gw = gateway
    ids = sorted(_pid(gw, _person(system, n).nhs_number) for n in range(1, 4))
    step = f"page-{uuid.uuid4().hex[:8]}"
    r = gw.call("GET", "/Patient", gw.token(), step, _id=",".join(ids), _count=1)
    assert r.status_code == 200
    assert r.json()["total"] == 3
    shown = [e["resource"]["id"] for e in r.json()["entry"]]
    events = _events(gw, step)
    assert [pid for _, pid, _ in events] == shown == [ids[0]]


def test_a_500_is_audited_as_a_serious_failure(gateway: Gateway, system):
    """A real fault: the index's link table disappears under the running gateway, so a
    source Patient read fails inside the route."""
    gw = gateway
    step = f"boom-{uuid.uuid4().hex[:8]}"
    conn = sqlite3.connect(gw.db)
    conn.execute("ALTER TABLE person_links RENAME TO person_links_away")
    conn.commit()
    try:
        r = gw.call("GET", "/Patient/acute-nobody", gw.token(), step)
    finally:
        conn.execute("ALTER TABLE person_links_away RENAME TO person_links")
        conn.commit()
        conn.close()
    assert r.status_code == 500
    [(_, patient, event)] = _events(gw, step)
    assert event["outcome"] == "8"
    assert event["outcomeDesc"].startswith("internal error")
    assert patient is None


def test_1010_reads_do_not_hide_earlier_events(gateway: Gateway, system):
    gw = gateway
    pid = _pid(gw, _person(system, 5).nhs_number)
    first = f"first-{uuid.uuid4().hex[:8]}"
    doctor = gw.token()
    assert gw.call("GET", f"/Patient/{pid}", doctor, first).status_code == 200
    with httpx.Client(headers={"Authorization": f"Bearer {doctor}"}, timeout=15) as client:
        for _ in range(1010):
            assert client.get(f"{gw.base}/Patient/{pid}").status_code == 200
    view, totals = _audit_view(gw, pid, 1000)
    assert totals[0] >= 1012
    assert len(totals) >= 2
    assert first in [_request_id(e) for e in view]


# --- the stored trail, tampered with ------------------------------------------------


def _verify(gw: Gateway, db: Path, *extra: str) -> Any:
    env = {**gw.env, "CARELINK_DATABASE_URL": str(db)}
    return carelink(["audit", "verify", *extra], env)


def test_the_gateway_writes_checkpoints_and_an_untouched_trail_verifies(gateway: Gateway, tmp_path):
    gw = gateway
    for i in range(EVERY + 1):
        gw.call("GET", "/Patient", gw.token(), f"fill-{i}", identifier="9434765919")
    newest = latest(gw.checkpoints)
    assert newest is not None
    assert read(newest)["seq"] >= EVERY
    copy = copy_index(str(gw.db), tmp_path / "copy.db")
    ok = _verify(gw, copy)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"checkpoint {newest}" in ok.stdout


def _first(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT min(seq) FROM audit_events").fetchone()[0])


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (
            "UPDATE audit_events SET event = event || X'20' WHERE seq = :m",
            "content does not match its hash (edited)",
        ),
        (
            "UPDATE audit_events SET patient_id = 'someone-else' WHERE seq = :m",
            "patient_id differs from its event (edited)",
        ),
        (
            "UPDATE audit_events SET outcome = '4' WHERE seq = :m AND outcome = '0'",
            "outcome differs from its event (edited)",
        ),
        ("DELETE FROM audit_events WHERE seq = :m", "a record is missing or was inserted"),
        ("SWAP", "does not follow the record before it (deleted, inserted or reordered)"),
        ("DELETE FROM audit_events WHERE seq >= :cut", "before this checkpoint (truncated)"),
    ],
)
def test_tampering_with_the_stored_trail_is_named_by_verify(
    gateway: Gateway, tmp_path, tamper, problem
):
    gw = gateway
    checkpoint = latest(gw.checkpoints)
    assert checkpoint is not None
    cut = int(read(checkpoint)["seq"]) - 2
    copy = copy_index(str(gw.db), tmp_path / "tampered.db")
    low = _first(copy)
    middle = (low + cut) // 2
    with sqlite3.connect(copy) as conn:
        if tamper == "SWAP":
            rows = conn.execute(
                "SELECT * FROM audit_events WHERE seq IN (?, ?) ORDER BY seq", (middle, middle + 1)
            ).fetchall()
            conn.execute("DELETE FROM audit_events WHERE seq IN (?, ?)", (middle, middle + 1))
            marks = ", ".join("?" * len(rows[0]))
            conn.execute(f"INSERT INTO audit_events VALUES ({marks})", (middle, *rows[1][1:]))  # noqa: S608
            conn.execute(f"INSERT INTO audit_events VALUES ({marks})", (middle + 1, *rows[0][1:]))  # noqa: S608
        else:
            changed = conn.execute(tamper, {"m": middle, "cut": cut}).rowcount
            assert changed >= 1
    bad = _verify(gw, copy)
    assert bad.returncode == 5, bad.stdout + bad.stderr
    assert problem in bad.stdout


def test_verify_with_a_key_folder_that_is_not_there_is_a_configuration_error(
    gateway: Gateway, tmp_path
):
    gw = gateway
    nowhere = tmp_path / "nonexistent"
    r = _verify(gw, gw.db, "--keys", str(nowhere))
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1
    assert "no audit checkpoint key" in r.stderr
    assert not nowhere.exists()


def _btg(event: dict) -> bool:
    return any(c["code"] == "BTG" for p in event.get("purposeOfEvent", []) for c in p["coding"])


def test_break_glass_data_released_by_search_and_pixm_is_marked_btg(gateway: Gateway, system):
    gw = gateway
    person = _person(system, 7)
    pid = _pid(gw, person.nhs_number)
    nhs = f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"
    objection = privacy_consent(pid, {"type": "deny"})
    manager = gw.token(scope="user/*.cruds", organisation=person.gp_ods)  # their own GP
    stored = gw.call("POST", "/Consent", manager, "consent", objection)
    assert stored.status_code == 201, stored.text
    doctor = gw.token(organisation="RXX01", sub=f"dr-{uuid.uuid4().hex[:6]}")
    u = uuid.uuid4().hex[:8]
    hidden = gw.call("GET", "/Patient", doctor, f"hidden-{u}", identifier=nhs)
    assert hidden.json()["total"] == 0
    glass = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
            {"name": "purpose", "valueCode": "ETREAT"},
            {"name": "reason", "valueString": "unconscious in ED, no history"},
        ],
    }
    assert gw.call("POST", "/Patient/$break-glass", doctor, f"glass-{u}", glass).status_code == 201
    found = gw.call("GET", "/Patient", doctor, f"search-{u}", identifier=nhs)
    assert found.json()["total"] == 1
    link = next(x for x in IndexStore(Database(str(gw.db))).links_of(pid) if x.source == "acute")
    pix = gw.call(
        "GET", "/Patient/$ihe-pix", doctor, f"pix-{u}", sourceIdentifier=f"{ACUTE}|{link.local_id}"
    )
    assert pix.status_code == 200
    events = {_request_id(e): e for _, _, e in _events(gw, patient=pid) if u in _request_id(e)}
    assert sorted(events) == sorted(f"{k}-{u}" for k in ("glass", "search", "pix"))
    assert all(_btg(e) for e in events.values())


def test_the_audit_view_searches_by_agent_date_entity_type_and_outcome(gateway: Gateway, system):
    gw = gateway
    pid = _pid(gw, _person(system, 9).nhs_number)
    clinician = f"dr-{uuid.uuid4().hex[:8]}"
    token = gw.token(sub=clinician)
    stamp = gw.call("GET", "/AuditEvent", _officer(gw), "clock", _count=1).json()
    since = stamp["entry"][0]["resource"]["recorded"]  # the gateway's own clock
    assert gw.call("GET", f"/Patient/{pid}", token, "by-agent-1").status_code == 200
    assert gw.call("GET", "/Patient/nobody-known", token, "by-agent-2").status_code == 404
    officer = _officer(gw)

    def total(**params: Any) -> int:
        r = gw.call("GET", "/AuditEvent", officer, "search", **params)
        assert r.status_code == 200, r.text
        return int(r.json()["total"])

    assert total(agent=clinician) == 2
    assert total(agent=clinician, date=f"ge{since}") == 2
    assert total(agent=clinician, date=f"lt{since}") == 0
    assert total(agent=clinician, outcome="4") == 1
    assert total(agent=clinician, **{"entity-type": "1"}) == 1
    assert total(agent=clinician, patient=pid) == 1
    assert gw.call("GET", "/AuditEvent", officer, "bad", who="x").status_code == 400


def test_an_answer_no_route_audited_is_withheld_when_the_trail_cannot_be_written(gateway):
    """The safety net fails closed too: the CDS discovery document (a 200 its route does
    not audit) becomes a 503 when its event cannot be written."""
    gw = gateway
    conn = sqlite3.connect(gw.db)
    conn.execute("ALTER TABLE audit_events RENAME TO audit_events_away")
    conn.commit()
    try:
        r = gw.call("GET", "/cds-services", gw.token(), "discovery")
    finally:
        conn.execute("ALTER TABLE audit_events_away RENAME TO audit_events")
        conn.commit()
        conn.close()
    assert r.status_code == 503
    assert r.json()["resourceType"] == "OperationOutcome"
    assert gw.call("GET", "/cds-services", gw.token(), "discovery-again").status_code == 200
