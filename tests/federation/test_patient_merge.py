"""The merged Patient: every element any source holds, by its rule, conflicts shown."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from carelink.federation.patient_merge import CONFLICT_URL, merge_patient
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson, local_id_system
from tests.support.schema import problems

NHS = next(pop.people(5, 1)).nhs_number
BAD_NHS = NHS[:-1] + str((int(NHS[-1]) + 1) % 10)
ETHNIC = {
    "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
    "valueCodeableConcept": {
        "coding": [
            {
                "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland",
                "code": "A",
                "display": "British, Mixed British",
            }
        ]
    },
}
CONTACT = {
    "relationship": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}
    ],
    "name": {"family": "Wetherby", "given": ["Tom"]},
    "telecom": [{"system": "phone", "value": "0113 496 0000"}],
}
ENGLISH = {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}}
WELSH = {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "cy"}]}}
MARRIED = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
}
WIDOWED = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "W"}]
}


def _patient(source: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f"{source}-1",
        "meta": {"source": f"urn:carelink:source:{source}"},
        "name": [{"family": "Wetherby", "given": ["Alice"]}],
        "gender": "female",
        "birthDate": "1950-02-14",
    }
    base.update(extra)
    return base


def _member(source: str, **extra: Any) -> SourcePerson:
    return SourcePerson(
        source,
        "1",
        None,
        "Alice",
        "Wetherby",
        "1950-02-14",
        "female",
        None,
        None,
        _patient(source, **extra),
    )


def _merge(gp: dict[str, Any], acute: dict[str, Any], nhs: str | None = None):
    members = [_member("acute", **acute), _member("gp", **gp)]
    merged = merge_patient("p1", members, nhs, "2026-01-01T00:00:00Z")
    assert problems(merged.patient) == []
    return merged.patient, {c.element: c for c in merged.conflicts}


def _conflict_ext(patient: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for ext in patient.get("extension", []):
        if ext["url"] == CONFLICT_URL:
            parts = ext["extension"]
            element = next(p["valueString"] for p in parts if p["url"] == "element")
            out[element] = {
                k: [p["valueString"] for p in parts if p["url"] == k]
                for k in ("agrees", "disagrees")
            }
    return out


# (element, gp's Patient additions, acute's, expected merged elements)
KEPT = [
    (
        "deceased, only the hospital knows",
        {},
        {"deceasedDateTime": "2026-03-01T10:00:00Z"},
        {"deceasedDateTime": "2026-03-01T10:00:00Z"},
    ),
    ("deceased boolean", {}, {"deceasedBoolean": True}, {"deceasedBoolean": True}),
    (
        "deceased date beats boolean",
        {"deceasedBoolean": True},
        {"deceasedDateTime": "2026-03-01"},
        {"deceasedDateTime": "2026-03-01"},
    ),
    ("multipleBirth", {}, {"multipleBirthInteger": 2}, {"multipleBirthInteger": 2}),
    (
        "contact (next of kin)",
        {"contact": [CONTACT]},
        {"contact": [CONTACT]},
        {"contact": [CONTACT]},
    ),
    (
        "communication union",
        {"communication": [ENGLISH]},
        {"communication": [WELSH, ENGLISH]},
        {"communication": [ENGLISH, WELSH]},
    ),
    ("maritalStatus", {}, {"maritalStatus": MARRIED}, {"maritalStatus": MARRIED}),
    (
        "ethnic category extension",
        {"extension": [ETHNIC]},
        {"extension": [ETHNIC]},
        {"extension": [ETHNIC]},
    ),
    (
        "photo",
        {},
        {"photo": [{"contentType": "image/jpeg", "url": "https://x.example/p.jpg"}]},
        {"photo": [{"contentType": "image/jpeg", "url": "https://x.example/p.jpg"}]},
    ),
    (
        "managingOrganization preferred",
        {"managingOrganization": {"reference": "Organization/gp-o"}},
        {"managingOrganization": {"reference": "Organization/acute-o"}},
        {"managingOrganization": {"reference": "Organization/gp-o"}},
    ),
    (
        "names: preferred first, then distinct others",
        {"name": [{"family": "Wetherby", "given": ["Alice"]}]},
        {
            "name": [
                {"family": "Wetherby", "given": ["Alice"]},
                {"use": "maiden", "family": "Smith", "given": ["Alice"]},
            ]
        },
        {
            "name": [
                {"family": "Wetherby", "given": ["Alice"]},
                {"use": "maiden", "family": "Smith", "given": ["Alice"]},
            ]
        },
    ),
    (
        "telecom union ignoring spaces",
        {"telecom": [{"system": "phone", "value": "0113 496 0001"}]},
        {
            "telecom": [
                {"system": "phone", "value": "01134960001"},
                {"system": "email", "value": "a@example.org"},
            ]
        },
        {
            "telecom": [
                {"system": "phone", "value": "0113 496 0001"},
                {"system": "email", "value": "a@example.org"},
            ]
        },
    ),
    (
        "address union",
        {"address": [{"postalCode": "LS6 2AB"}]},
        {"address": [{"postalCode": "LS6 2AB"}, {"postalCode": "HX1 1AA", "use": "old"}]},
        {"address": [{"postalCode": "LS6 2AB"}, {"postalCode": "HX1 1AA", "use": "old"}]},
    ),
    (
        "generalPractitioner union",
        {"generalPractitioner": [{"reference": "Organization/gp-o"}]},
        {"generalPractitioner": [{"reference": "Organization/gp-o"}]},
        {"generalPractitioner": [{"reference": "Organization/gp-o"}]},
    ),
    ("active if any source is", {"active": False}, {"active": True}, {"active": True}),
    (
        "modifierExtension kept",
        {},
        {"modifierExtension": [{"url": "https://x.example/m", "valueBoolean": True}]},
        {"modifierExtension": [{"url": "https://x.example/m", "valueBoolean": True}]},
    ),
    (
        "security labels kept",
        {
            "meta": {
                "security": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "code": "R",
                    }
                ]
            }
        },
        {},
        {
            "meta": {
                "source": "urn:carelink:gateway",
                "lastUpdated": "2026-01-01T00:00:00Z",
                "security": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "code": "R",
                    }
                ],
            }
        },
    ),
]


@pytest.mark.parametrize(
    ("gp", "acute", "expected"), [k[1:] for k in KEPT], ids=[k[0] for k in KEPT]
)
def test_every_element_a_source_holds_is_in_the_merged_patient_by_its_rule(gp, acute, expected):
    patient, _ = _merge(gp, acute)
    for element, value in expected.items():
        got = patient[element]
        if element == "extension":
            got = [e for e in got if e["url"] != CONFLICT_URL]
        assert got == value


# (element, gp, acute, conflict element, agrees, disagrees)
CONFLICTS = [
    (
        "death known at one source",
        {},
        {"deceasedDateTime": "2026-03-01"},
        "deceased",
        ["acute"],
        ["gp"],
    ),
    (
        "different dates of death",
        {"deceasedDateTime": "2026-03-02"},
        {"deceasedDateTime": "2026-03-01"},
        "deceasedDateTime",
        ["gp"],
        ["acute"],
    ),
    ("birth date", {}, {"birthDate": "1950-04-02"}, "birthDate", ["gp"], ["acute"]),
    ("gender", {}, {"gender": "male"}, "gender", ["gp"], ["acute"]),
    (
        "marital status",
        {"maritalStatus": WIDOWED},
        {"maritalStatus": MARRIED},
        "maritalStatus",
        ["gp"],
        ["acute"],
    ),
    (
        "multiple birth",
        {"multipleBirthBoolean": False},
        {"multipleBirthInteger": 2},
        "multipleBirth",
        ["gp"],
        ["acute"],
    ),
]


@pytest.mark.parametrize(
    ("gp", "acute", "element", "agrees", "disagrees"),
    [c[1:] for c in CONFLICTS],
    ids=[c[0] for c in CONFLICTS],
)
def test_sources_disagreeing_is_shown_on_the_patient_naming_sources_not_values(
    gp, acute, element, agrees, disagrees
):
    patient, conflicts = _merge(gp, acute)
    assert set(conflicts) == {element}
    assert _conflict_ext(patient) == {element: {"agrees": agrees, "disagrees": disagrees}}
    shown = str([e for e in patient["extension"] if e["url"] == CONFLICT_URL])
    assert "1950-04-02" not in shown
    assert "2026-03" not in shown


def test_a_disagreeing_value_not_chosen_is_not_copied_into_the_patient():
    patient, _ = _merge({}, {"birthDate": "1950-04-02"})
    assert "1950-04-02" not in str(patient)
    assert patient["birthDate"] == "1950-02-14"


def test_agreeing_sources_make_no_conflict():
    patient, conflicts = _merge(
        {"deceasedDateTime": "2026-03-01"}, {"deceasedDateTime": "2026-03-01"}
    )
    assert conflicts == {}
    assert "extension" not in patient


def test_identifiers_are_the_nhs_number_then_every_source_identifier_once_then_local_ids():
    mrn = {"system": "https://acute.example/mrn", "value": "M1"}
    verified = {
        "system": NHS_NUMBER_SYSTEM,
        "value": NHS,
        "extension": [{"url": "https://x.example/verification", "valueString": "01"}],
    }
    patient, conflicts = _merge(
        {"identifier": [verified]}, {"identifier": [mrn, copy.deepcopy(mrn), verified]}, NHS
    )
    assert patient["identifier"] == [
        verified,
        mrn,
        {"system": local_id_system("gp"), "value": "1"},
        {"system": local_id_system("acute"), "value": "1"},
    ]
    assert conflicts == {}


def test_an_nhs_number_the_index_refused_is_left_out_and_shown_as_a_conflict():
    patient, conflicts = _merge(
        {"identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}]},
        {"identifier": [{"system": NHS_NUMBER_SYSTEM, "value": BAD_NHS}]},
        NHS,
    )
    assert BAD_NHS not in str(patient)
    c = conflicts["identifier:nhsNumber"]
    assert (c.agrees, c.disagrees) == (("gp",), ("acute",))


def test_contained_resources_of_two_sources_never_collide_and_references_follow():
    org = {"resourceType": "Organization", "id": "o1", "name": "Carers"}
    contact = {"organization": {"reference": "#o1"}}
    patient, _ = _merge(
        {"contained": [org], "contact": [contact]},
        {"contained": [{**org, "name": "Other carers"}], "contact": [contact]},
    )
    assert [c["id"] for c in patient["contained"]] == ["gp-o1", "acute-o1"]
    assert [c["organization"]["reference"] for c in patient["contact"]] == [
        "#gp-o1",
        "#acute-o1",
    ]


def test_links_point_at_every_source_patient_preferred_first_and_text_is_dropped():
    patient, _ = _merge({"text": {"status": "generated", "div": "<div>gp</div>"}}, {})
    assert [lk["other"]["reference"] for lk in patient["link"]] == [
        "Patient/gp-1",
        "Patient/acute-1",
    ]
    assert "text" not in patient


def test_one_source_holding_an_element_twice_gives_it_once_and_a_lone_value_as_it_is():
    """A person of one record (most of a build's people): a list of one is taken as it
    is, a longer one is still made unique."""
    home = {"use": "home", "line": ["1 Leeds Road"], "postalCode": "LS1 4AB"}
    alice = {"family": "Wetherby", "given": ["Alice"]}
    member = _member(
        "gp",
        name=[alice, copy.deepcopy(alice), {"family": "Smith", "given": ["Alice"]}],
        address=[home],
        contact=[CONTACT, copy.deepcopy(CONTACT)],
        communication=[],
        photo=None,
    )
    merged = merge_patient("p1", [member], None, "2026-01-01T00:00:00Z")
    patient = merged.patient
    assert patient["name"] == [alice, {"family": "Smith", "given": ["Alice"]}]
    assert patient["address"] == [home]
    assert patient["contact"] == [CONTACT]
    assert "communication" not in patient
    assert "photo" not in patient
    assert merged.conflicts == ()
    assert problems(patient) == []
