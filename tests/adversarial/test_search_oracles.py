"""A search must not be an oracle for what consent withholds (issue 11, item 1).

The guarantee: no observable of a response depends on data the caller may not
see. Asked for the code of a withheld diagnosis, a clinician gets exactly the
answer they get for a code nobody holds: the same status, total, entries,
per-source outcome, missing-sources header and Last-Modified.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.clinical import facts
from carelink.simulators.population import Person
from tests.integration.conftest import SEED, System
from tests.support.gateways import copy_index, token_gateways
from tests.support.tokens import Issuer

STRANGER = "RXX01"
NOBODY_HAS = "http://snomed.info/sct|1000000000000109"


@pytest.fixture(scope="module")
def gateway(
    system: System, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Issuer]]:
    tmp = tmp_path_factory.mktemp("oracles")
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp / "oracles.db")
    issuer = Issuer()
    with token_gateways(system.env, db, issuer, tmp, count=1) as started:
        yield started[0].base, issuer


def _get(base: str, issuer: Issuer, path: str, org: str, **params: Any) -> httpx.Response:
    token = issuer.token(aud=base, scope="user/*.cruds", organisation=org)
    return httpx.get(
        f"{base}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def _sensitive_at_gp(system: System) -> Person:
    for p in system.population:
        usable = "gp" in p.sources and p.social_variant is None
        if usable and any(f.sensitivity in ("HIV", "STD") for f in facts(SEED, p, "gp")):
            return p
    raise AssertionError("the test population has nobody with HIV or STD data at the GP")


def _labels(r: dict[str, Any]) -> set[str]:
    return {s.get("code") for s in r.get("meta", {}).get("security", [])}


def _observable(r: httpx.Response) -> dict[str, Any]:
    """Everything a caller can see of a search answer but what the query itself shapes
    (the ETag and self link carry the query) and what varies run to run (latency, and the
    instant a source was asked, which crossed a second between the two searches of a pair
    once when the suite ran in two processes)."""
    body = r.json()
    outcomes = []
    for e in body.get("entry", []):
        if e["search"]["mode"] != "outcome":
            continue
        issues = []
        for i in e["resource"].get("issue", []):
            ext = [
                # when the source was asked is the clock's, not the data's: kept as present
                {**x, "valueInstant": "<instant>"} if "valueInstant" in x else x
                for x in i.get("extension", [])
                if not x["url"].endswith("source-latency-ms")
            ]
            issues.append((i["severity"], i["code"], i.get("details"), ext))
        outcomes.append(issues)
    return {
        "status": r.status_code,
        "total": body.get("total"),
        "matches": [e for e in body.get("entry", []) if e["search"]["mode"] != "outcome"],
        "outcome": outcomes,
        "missing": r.headers.get("X-Carelink-Missing-Sources"),
        "last-modified": r.headers.get("Last-Modified"),
    }


def test_searching_for_a_withheld_diagnosis_answers_as_for_a_code_nobody_has(gateway, system):
    base, issuer = gateway
    person = _sensitive_at_gp(system)
    found = _get(
        base,
        issuer,
        "/Patient",
        person.gp_ods,
        identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}",
    )
    pid = found.json()["entry"][0]["resource"]["id"]
    # the custodian (the registered practice) sees the sensitive item: learn its type and code
    own = _get(base, issuer, f"/Patient/{pid}/$everything", person.gp_ods, _count=1000).json()
    withheld = next(
        e["resource"]
        for e in own["entry"]
        if e["search"]["mode"] == "match" and _labels(e["resource"]) & {"HIV", "STD"}
    )
    rtype = withheld["resourceType"]
    code_elem = next(k for k in ("code", "medicationCodeableConcept") if k in withheld)
    coding = withheld[code_elem]["coding"][0]
    code = f"{coding['system']}|{coding['code']}"
    assert (
        _get(base, issuer, f"/{rtype}", person.gp_ods, patient=pid, code=code).json()["total"] >= 1
    )

    asked, control = _compared(base, issuer, f"/{rtype}", STRANGER, pid, code)
    assert asked.status_code == 200, asked.text
    assert _observable(asked) == _observable(control)
    assert asked.json()["total"] == 0
    counted, counted_control = _compared(
        base, issuer, f"/{rtype}", STRANGER, pid, code, _summary="count"
    )
    assert _observable(counted) == _observable(counted_control)


#: outcome codes of a source that did not answer this time (a timeout, a dropped
#: connection): what a loaded machine causes now and then, not what the data holds
_TRANSIENT = {"timeout", "transient"}


def _compared(
    base: str, issuer: Issuer, path: str, org: str, pid: str, code: str, **params: Any
) -> tuple[httpx.Response, httpx.Response]:
    """The search for ``code`` and for a code nobody holds, asked one after the other.
    When the two differ while a source did not answer one of them, the pair is asked
    again (up to five times): a source's timeout is not an observable of the data. A
    difference with every source answering, or the same source failing every time
    (what withheld data would cause, each time alike), is returned as it is."""
    for _ in range(5):
        asked = _get(base, issuer, path, org, patient=pid, code=code, **params)
        control = _get(base, issuer, path, org, patient=pid, code=NOBODY_HAS, **params)
        seen, other = _observable(asked), _observable(control)
        if seen == other or not (_unanswered(seen) or _unanswered(other)):
            return asked, control
    return asked, control


def _unanswered(observed: dict[str, Any]) -> bool:
    return any(code in _TRANSIENT for issues in observed["outcome"] for _, code, _, _ in issues)


def _as_patient(base: str, issuer: Issuer, own: str, path: str, **params: Any) -> httpx.Response:
    token = issuer.token(aud=base, scope="patient/*.rs", patient=own)
    return httpx.get(
        f"{base}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def _text(r: httpx.Response) -> tuple[int, list[str]]:
    return r.status_code, [i.get("diagnostics", "") for i in r.json().get("issue", [])]


def test_a_patient_token_cannot_tell_who_else_exists(gateway, system):
    """Issue 11 item 3: through a source id, the merged id or PIXm, someone else's record
    answers exactly as a record that does not exist."""
    base, issuer = gateway
    me, other = [p for p in system.population if {"gp", "acute"} <= p.sources][:2]
    ids = {}
    for p in (me, other):
        found = _get(
            base, issuer, "/Patient", p.gp_ods, identifier=f"{NHS_NUMBER_SYSTEM}|{p.nhs_number}"
        ).json()["entry"][0]["resource"]
        ids[p.nhs_number] = found
    mine = ids[me.nhs_number]["id"]
    theirs = ids[other.nhs_number]
    acute = next(i for i in theirs["identifier"] if i["system"].endswith("/acute"))
    assert _as_patient(base, issuer, mine, f"/Patient/{mine}").status_code == 200
    for real, fake in (
        (theirs["id"], "0" * 32),
        (f"acute-{acute['value']}", "acute-RX00000000"),
    ):
        got_real = _as_patient(base, issuer, mine, f"/Patient/{real}")
        got_fake = _as_patient(base, issuer, mine, f"/Patient/{fake}")
        assert got_real.status_code == got_fake.status_code == 404
        assert _text(got_real)[1] == [t.replace(fake, real) for t in _text(got_fake)[1]]
    pix_real = _as_patient(
        base,
        issuer,
        mine,
        "/Patient/$ihe-pix",
        sourceIdentifier=f"{acute['system']}|{acute['value']}",
    )
    pix_fake = _as_patient(
        base, issuer, mine, "/Patient/$ihe-pix", sourceIdentifier=f"{acute['system']}|RX00000000"
    )
    assert _text(pix_real) == _text(pix_fake)
    assert pix_real.status_code == 404
