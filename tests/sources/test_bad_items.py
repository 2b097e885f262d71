"""Each adapter over real HTTP: one unreadable item in an answer costs only that item,
named in ``SourceAnswer.skipped``; the rest of the person's record still comes back.

The FHIR sources talk to the real acute and GP simulators serving ``--data``
files; the HL7 and council sources to a small app answering fixed bodies, as
a source system with one bad message or record would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.errors import SourceBadPayload
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import acute, community, gp
from carelink.simulators.base import Behaviour
from carelink.sources.base import SourceAnswer
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource, bundle_resources
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.social_care import SocialCareSource
from tests.support.kinds import kind_route
from tests.support.servers import run_app

T = TypeVar("T")
NHS = "9434765919"
REF = "Patient/merged-1"


def run(use: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async def go() -> T:
        async with aiohttp.ClientSession() as session:
            return await use(session)

    return asyncio.run(go())


def test_a_bundle_entry_without_id_type_or_resource_costs_only_itself():
    doc = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"resource": {"resourceType": "Observation"}},
            {"resource": {"id": "x"}},
            {"fullUrl": "urn:uuid:1"},
            "junk",
            {"resource": {"resourceType": "Condition", "id": "c"}},
        ],
    }
    read = bundle_resources(doc, "acute", first=10)
    assert [r["id"] for r in read.resources] == ["p", "c"]
    assert read.skipped == (
        "Observation entry 11: no id",
        "entry 12: no resourceType",
        "entry 13: no resource",
        "entry 14: no resource",
    )


def test_an_answer_that_is_not_a_bundle_is_still_a_bad_payload():
    with pytest.raises(SourceBadPayload, match="expected a Bundle"):
        bundle_resources({"resourceType": "Patient"}, "acute")


@pytest.fixture
def fhir_data(tmp_path: Path) -> Path:
    lines = [
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
        },
        {"resourceType": "Observation", "id": "good1", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Encounter", "id": "enc1", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}},
    ]
    for r in lines[1:]:  # what R4 requires, so only the missing ids are at fault
        r.update(
            {"status": "finished", "class": {"code": "AMB"}}
            if r["resourceType"] == "Encounter"
            else {"status": "final", "code": {"text": "pulse"}}
        )
    f = tmp_path / "data.ndjson"
    f.write_text("\n".join(json.dumps(x) for x in lines))
    return f


def _kept(answer: SourceAnswer) -> list[str]:
    return sorted(r["id"] for r in answer.resources)


def test_acute_over_paged_everything_leaves_out_only_the_resources_without_id(fhir_data):
    app = acute.create_app_from_files(fhir_data, behaviour=Behaviour())
    with run_app(app) as url:
        answer = run(lambda s: AcuteSource(s, url, page_size=2).fetch_record("p1", REF, None))
    assert _kept(answer) == ["acute-enc1", "acute-good1", "acute-p1"]
    # entries counted across pages: the Patient is entry 0
    assert answer.skipped == ("Observation entry 2: no id", "Observation entry 4: no id")


def test_gp_structured_record_leaves_out_only_the_resources_without_id(fhir_data):
    app = gp.create_app_from_files(fhir_data, behaviour=Behaviour())
    with run_app(app) as url:
        answer = run(
            lambda s: GPConnectSource(s, url).fetch_record("p1", REF, None, nhs_number=NHS)
        )
    assert _kept(answer) == ["gp-enc1", "gp-good1", "gp-p1"]
    assert answer.skipped == ("Observation entry 2: no id", "Observation entry 4: no id")


def fixed(kind: str, path: str, body: bytes, media_type: str) -> Starlette:
    """A ``kind`` of source that answers ``body`` at ``path``."""

    async def answer(request: Request) -> Response:
        return Response(body, media_type=media_type)

    return Starlette(routes=[kind_route(kind), Route(path, answer)])


MSH = "MSH|^~\\&|EPR|RCOMM|CARELINK|ICS|20260101120000+0000||{kind}|{n}|P|2.5.1"
PID = "PID|1||C1^^^RCOMM^MR~9434765919^^^NHS^NH||Smith^Mary||19410307|F"


def _prb(problem_id: str) -> str:
    return community.segment(
        "PRB", {1: "AD", 2: "20240102", 4: problem_id, 3: "35489007^Depression^SCT"}
    )


def _batch(*messages: list[str]) -> bytes:
    return "\r".join(seg for m in messages for seg in m).encode()


def _community(body: bytes) -> Any:
    with run_app(fixed("community", "/hl7/record", body, "x-application/hl7-v2+er7")) as url:
        return run(lambda s: CommunitySource(s, url).fetch_record("C1", REF, None))


def test_community_one_bad_segment_costs_only_its_condition():
    body = _batch(
        [MSH.format(kind="ADT^A28^ADT_A05", n=1), PID],
        [MSH.format(kind="PPR^PC1^PPR_PC1", n=2), PID, _prb("P1"), _prb(""), _prb("P3")],
    )
    answer = _community(body)
    assert _kept(answer) == ["community-C1", "community-P1", "community-P3"]
    assert answer.skipped == ("message 2 PPR^PC1 PRB 2: no problem id (PRB-4)",)


def test_community_one_bad_observation_takes_its_sensitivity_label_with_it():
    obx = "OBX|{n}|NM|{code}^Heart rate^LN||72|/min|||||F|||20240102"
    body = _batch(
        [MSH.format(kind="ADT^A28^ADT_A05", n=1), PID],
        [
            MSH.format(kind="ORU^R01^ORU_R01", n=2),
            PID,
            "OBR|1||ORD1",
            obx.format(n=1, code=""),
            "ZSN|PSY",
            obx.format(n=2, code="8867-4"),
        ],
    )
    answer = _community(body)
    [observation] = [r for r in answer.resources if r["resourceType"] == "Observation"]
    assert observation["id"] == "community-ORD1-2"
    assert "security" not in observation["meta"]
    assert answer.skipped == ("message 2 ORU^R01 OBX 1: no code (OBX-3)",)


def test_community_a_contact_without_a_visit_number_costs_only_itself():
    pv1 = community.segment("PV1", {2: "O", 10: "DN", 19: "{visit}", 44: "20240102"})
    body = _batch(
        [MSH.format(kind="ADT^A28^ADT_A05", n=1), PID],
        [MSH.format(kind="ADT^A03^ADT_A03", n=2), PID, pv1.format(visit="")],
        [MSH.format(kind="ADT^A03^ADT_A03", n=3), PID, pv1.format(visit="V2")],
    )
    answer = _community(body)
    assert _kept(answer) == ["community-C1", "community-V2"]
    assert answer.skipped == ("message 2 ADT^A03: no visit number (PV1-19)",)


def test_community_a_message_without_pid_is_left_out_as_no_ones():
    body = _batch(
        [MSH.format(kind="ADT^A28^ADT_A05", n=1), PID],
        [MSH.format(kind="PPR^PC1^PPR_PC1", n=2), _prb("P1")],
        [MSH.format(kind="PPR^PC1^PPR_PC1", n=3), PID, _prb("P2")],
    )
    answer = _community(body)
    assert _kept(answer) == ["community-C1", "community-P2"]
    assert answer.skipped == ("message 2 PPR^PC1: no PID, so no one's",)


def test_community_an_unreadable_person_message_is_still_a_bad_payload():
    body = _batch([MSH.format(kind="ADT^A28^ADT_A05", n=1), "PID|1||^^^RCOMM^NH"])
    with pytest.raises(SourceBadPayload, match="PID-3"):
        _community(body)


def _case(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "personRef": "SC1",
        "surname": "Smith",
        "forename": "Mary",
        "dateOfBirth": "07/03/1941",
        "assessments": [
            {"assessmentId": "A1", "assessmentType": "CA01", "completedOn": "01/02/2024"},
            {"assessmentId": "A2", "assessmentType": "CA01", "completedOn": "2024-02-01"},
        ],
        "services": [],
        "alerts": [{"alertType": "AL-SG", "raisedOn": "01/02/2024"}],
        "carers": [{"carerId": "K1", "relationship": "DAU"}, "junk"],
    }
    doc.update(changes)
    return doc


def _council(doc: Any) -> SourceAnswer:
    body = json.dumps(doc).encode()
    with run_app(fixed("social-care", "/api/v2/persons/SC1/case", body, "application/json")) as url:
        return run(lambda s: SocialCareSource(s, url).fetch_record("SC1", REF, None))


def test_social_care_one_bad_item_costs_only_itself():
    answer = _council(_case())
    assert _kept(answer) == ["social-care-A1", "social-care-K1", "social-care-SC1"]
    assert answer.skipped == (
        "assessments[1]: completedOn is not a DD/MM/YYYY date",
        "alerts[0]: missing alertId",
        "carers[1]: an entry of carers is not a JSON object",
    )


def test_social_care_an_unreadable_person_is_still_a_bad_payload():
    with pytest.raises(SourceBadPayload, match="dateOfBirth"):
        _council(_case(dateOfBirth="1941-03-07"))
