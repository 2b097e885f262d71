"""Issue 11: a response about withheld data equals the response about absent data.

For a random patient, caller (role, organisation, scopes) and consent situation
(no Consent, or an objection recorded by a privacy officer), every way of asking
about the person that the caller may not see answers exactly as the same
question about a person who does not exist (a random id, a random NHS number
with a valid check digit that nobody has): the same status, the same
OperationOutcome issues (diagnostics compared with the id or number swapped),
the same total, no entries.

A private gateway process over a copy of the integration index, so the
objections recorded here change nothing any other test sees.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.integration.conftest import System
from tests.support.objections import Gateway, objections_gateway, unknown_nhs_number

STRANGER = "RXX01"
SCOPES = ["user/*.cruds", "user/*.rs", "user/Patient.rs user/Condition.rs"]
CALLERS = ["stranger", "gp", "other-patient", "officer"]
#: every route shape that names a person: (path, query), {id} and {nhs} filled in
SHAPES = [
    ("/Patient/{id}", {}),
    ("/Patient/{id}/$everything", {}),
    ("/Condition", {"patient": "{id}"}),
    ("/Patient", {"identifier": f"{NHS_NUMBER_SYSTEM}|{{nhs}}"}),
    ("/Patient/$ihe-pix", {"sourceIdentifier": f"{NHS_NUMBER_SYSTEM}|{{nhs}}"}),
]


@pytest.fixture(scope="module")
def gateway(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("withheld")
    with objections_gateway(system, tmp, 40, "withheld.db") as gateway:
        yield gateway


def _fill(value: str, pid: str, nhs: str) -> str:
    return value.replace("{id}", pid).replace("{nhs}", nhs)


def _observable(r: httpx.Response, pid: str, nhs: str) -> dict[str, Any]:
    """What the caller sees, with the asked-about id and NHS number written as placeholders
    (and what varies run to run left out: ids, timestamps, links, latency)."""
    body = r.json()
    outcome = body if body.get("resourceType") == "OperationOutcome" else None
    outcomes = [
        e["resource"] for e in body.get("entry", []) if e.get("search", {}).get("mode") == "outcome"
    ]
    issues = []
    for o in ([outcome] if outcome else []) + outcomes:
        for i in o.get("issue", []):
            ext = [x for x in i.get("extension", []) if not x["url"].endswith("source-latency-ms")]
            text = json.dumps([i.get("diagnostics"), i.get("details"), ext])
            issues.append(
                (i["severity"], i["code"], text.replace(pid, "{id}").replace(nhs, "{nhs}"))
            )
    return {
        "status": r.status_code,
        "type": body.get("resourceType"),
        "total": body.get("total"),
        "entries": [
            e["resource"]["resourceType"]
            for e in body.get("entry", [])
            if e.get("search", {}).get("mode") != "outcome"
        ],
        "issues": issues,
        "content-type": r.headers.get("content-type"),
        "missing": r.headers.get("X-Carelink-Missing-Sources"),
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    who=st.sampled_from(CALLERS),
    scope=st.sampled_from(SCOPES),
    index=st.integers(0, 39),
    other=st.integers(0, 39),
    objection=st.booleans(),
    fake=st.uuids(version=4),
    start=st.integers(900_000_000, 990_000_000),
)
def test_withheld_answers_as_absent(
    gateway: Gateway,
    who: str,
    scope: str,
    index: int,
    other: int,
    objection: bool,
    fake: uuid.UUID,
    start: int,
) -> None:
    # people at even places object (recorded the first time they are drawn), odd never do
    index = index - index % 2 + (1 if not objection else 0)
    person = gateway.people[index]
    pid = gateway.pid(person)
    if objection:
        gateway.object(person)
    if who == "other-patient":
        someone = gateway.people[other if other != index else (other + 1) % 40]
        mine = gateway.pid(someone)
        token = gateway.token(
            sub=f"citizen-{mine}",
            role=None,
            organisation=None,
            patient=mine,
            scope=scope.replace("user/", "patient/"),
            purpose_of_use="PATRQT",
        )
        withheld = True
    else:
        org = person.gp_ods if who == "gp" else STRANGER
        role = "R0001" if who == "officer" else "R8000"
        token = gateway.token(organisation=org, role=role, sub=f"{who}-1", scope=scope)
        # an objection hides the record from everyone but the registered practice
        withheld = objection and who != "gp"
    absent_id = fake.hex
    absent_nhs = unknown_nhs_number({p.nhs_number for p in gateway.people}, start)
    for path, query in SHAPES:
        real = gateway.get(
            _fill(path, pid, person.nhs_number),
            token,
            {k: _fill(v, pid, person.nhs_number) for k, v in query.items()},
        )
        assert real.status_code < 500, real.text
        if not withheld:
            assert real.status_code == 200, (path, who, real.text)
            continue
        absent = gateway.get(
            _fill(path, absent_id, absent_nhs),
            token,
            {k: _fill(v, absent_id, absent_nhs) for k, v in query.items()},
        )
        seen = _observable(real, pid, person.nhs_number)
        control = _observable(absent, absent_id, absent_nhs)
        assert seen == control, (path, who, objection, real.text[:1500], absent.text[:1500])
        assert seen["entries"] == []
