"""HL7 v2 from the community trust: parsing, escapes, mapping to FHIR R4."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carelink.errors import SourceBadPayload
from carelink.simulators import community as sim
from carelink.simulators.store import PopulationSlice
from carelink.sources.hl7v2 import (
    fhir_datetime,
    message_type,
    person,
    resources,
    split_messages,
)
from tests.support.schema import problems

PRB = sim.segment(
    "PRB",
    {
        1: "AD",
        2: "20240102090000+0000",
        4: "C1-P1",
        14: "active",
        16: "20231201",
        25: "PSY",
        3: "35489007^Depressive disorder^SCT^F32.9^Depressive episode\\S\\ unspecified^I10",
    },
)
BATCH = (
    "FHS|^~\\&|X\rBHS|^~\\&|X\r"
    "MSH|^~\\&|EPR|RCOMM|CARELINK|ICS|20260101120000+0000||ADT^A28^ADT_A05|1|P|2.5.1\r"
    "PID|1||C1^^^RCOMM^MR~9434765919^^^NHS^NH||O'Brien\\T\\Smith^Mary^Ann||19410307|F|||"
    "1 Mill \\F\\ Yard^^Halifax^^HX3 5PW^GBR^H||07700900001^PRN^CP\r"
    "MSH|^~\\&|EPR|RCOMM|CARELINK|ICS|20260101120000+0000||PPR^PC1^PPR_PC1|2|P|2.5.1\r"
    f"PID|1||C1^^^RCOMM^MR\r{PRB}\rBTS|2\rFTS|1\r"
).encode()


def test_escaped_delimiters_round_trip_into_plain_text():
    msgs = split_messages(BATCH, "community")
    local, nhs, patient = person(msgs[0], "community")
    assert (local, nhs) == ("C1", "9434765919")
    assert patient["name"][0] == {
        "use": "official",
        "family": "O'Brien&Smith",
        "given": ["Mary", "Ann"],
    }
    assert patient["address"][0]["line"] == ["1 Mill | Yard"]
    assert patient["birthDate"] == "1941-03-07"


def test_problem_maps_to_condition_with_both_code_systems_and_its_sensitivity():
    msgs = split_messages(BATCH, "community")
    assert message_type(msgs[1]) == "PPR^PC1"
    [condition] = resources(msgs[1], "community", "Patient/p1")
    codings = {c["system"]: c["code"] for c in condition["code"]["coding"]}
    assert codings == {
        "http://snomed.info/sct": "35489007",
        "http://hl7.org/fhir/sid/icd-10": "F32.9",
    }
    assert condition["code"]["coding"][1]["display"] == "Depressive episode^ unspecified"
    assert condition["subject"] == {"reference": "Patient/p1"}
    assert condition["meta"]["security"][0]["code"] == "PSY"
    assert condition["onsetDateTime"] == "2023-12-01"
    assert problems(condition) == []


def test_a_score_maps_to_a_survey_observation_in_snomed_ct_with_loinc_alongside():
    concept = (
        "720433000^Patient Health Questionnaire Nine Item score^SCT^44261-6^PHQ-9 total score^LN"
    )
    oru = (
        "MSH|^~\\&|EPR|RCOMM|CARELINK|ICS|20260101120000+0000||ORU^R01^ORU_R01|3|P|2.5.1\r"
        f"PID|1||C1^^^RCOMM^MR\rOBR|1||V1|{concept}\r"
        f"OBX|1|NM|{concept}||12|{{score}}|||||F|||20240102090000+0000\r"
    ).encode()
    [msg] = split_messages(oru, "community")
    [obs] = resources(msg, "community", "Patient/p1")
    assert [(c["system"], c["code"]) for c in obs["code"]["coding"]] == [
        ("http://snomed.info/sct", "720433000"),
        ("http://loinc.org", "44261-6"),
    ]
    assert obs["category"][0]["coding"][0]["code"] == "survey"
    assert obs["valueQuantity"]["value"] == 12.0
    assert problems(obs) == []


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"PID|1||C1^^^RCOMM^MR",
        b"\xff\xfe not text",
        b"FHS|^~\\&|X\rBTS|0\r",
    ],
)
def test_unreadable_batches_are_bad_payload(bad):
    with pytest.raises(SourceBadPayload):
        split_messages(bad, "community")


def test_a_pid_without_a_local_identifier_is_bad_payload():
    msg = split_messages(
        b"MSH|^~\\&|A|B|C|D|20260101||ADT^A28|1|P|2.5.1\rPID|1||9434765919^^^NHS^NH||X^Y",
        "community",
    )[0]
    with pytest.raises(SourceBadPayload, match="PID-3"):
        person(msg, "community")


@pytest.mark.parametrize(
    ("dtm", "fhir"),
    [
        ("20240102", "2024-01-02"),
        ("202401021530", "2024-01-02T15:30:00+00:00"),
        ("20240102153045+0100", "2024-01-02T15:30:45+01:00"),
        ("", None),
        ("2024", None),
    ],
)
def test_hl7_datetimes(dtm, fhir):
    assert fhir_datetime(dtm) == fhir


def test_every_message_the_simulator_writes_for_100_people_maps_to_valid_r4():
    people = PopulationSlice("community", 5, 600)
    kinds: set[str] = set()
    failures: list[str] = []
    for local in people.local_ids()[:100]:
        w = sim.Writer(datetime(2026, 1, 1, tzinfo=UTC))
        sim.record(w, people.by_local[local], local, people.facts(local))
        for msg in split_messages(w.batch(), "community"):
            out = (
                [person(msg, "community")[2]]
                if message_type(msg) == "ADT^A28"
                else resources(msg, "community", "Patient/x")
            )
            for r in out:
                kinds.add(r["resourceType"])
                failures += problems(r)
    assert {"Patient", "EpisodeOfCare", "Encounter"} <= kinds
    assert failures == []
