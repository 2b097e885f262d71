"""The de-identification engine against the Microsoft anonymizer's published,
deterministic behaviour (values from its unit and functional tests), and
carelink's stronger options."""

from __future__ import annotations

import copy
import random
import re
from datetime import date
from typing import Any

import pytest

from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.rules import parse
from carelink.errors import ConfigError, ExportError

TODAY = date(2026, 11, 23)


def engine(
    rules: list[dict[str, Any]], keys: ProjectKeys | None = None, **params: Any
) -> Anonymiser:
    config = parse({"fhirVersion": "R4", "fhirPathRules": rules, "parameters": params})
    return Anonymiser(config, keys, random.Random(1), today=lambda: TODAY)


def codes(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource.get("meta", {}).get("security", [])}


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        (
            "Patient/example",
            "Patient/698d54f0494528a759f19c8e87a9f99e75a5881b9267ee3926bcf62c992d84ba",
        ),
        ("#p1", "#a10e6bee4fbeb6a7804153c25688dd4dd7b9c2a005417136026350fc33ac609f"),
        (
            "http://example.org/fhir/Observation/apo89654/_history/2",
            "http://example.org/fhir/Observation/b1e85ca33baf76575ad28588af85b8f10c0dd40e9ed8cd57cdb7ae94ccd75695/_history/2",
        ),
        (
            "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
            "urn:uuid:24970eb3f915e516a2b5241c0d6979097a6357a13b89612c6a54b8ab5479df34",
        ),
        (
            "urn:oid:1.2.3.4.5",
            "urn:oid:0543fb50485f58a47073f51aad1677607aec031c2c83c25ee7b040ade95cfbcc",
        ),
        ("#", "#"),
    ],
)
def test_crypto_hash_of_references_hashes_only_the_id(reference, expected):
    e = engine(
        [{"path": "nodesByType('Reference').reference", "method": "cryptoHash"}],
        cryptoHashKey="123",
    )
    out = e.apply({"resourceType": "Observation", "id": "o", "subject": {"reference": reference}})
    assert out["subject"]["reference"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", "69e99e82127c1f146f50653e02b92c4bb0c3bc182a6165a5bbce5f4f94e1ccb7"),
        (
            "bb6f4872-e456-42d5-a9da-a0d82cb7ea29",
            "73defcb8fcaf4c0c3d5c77f05b479cadbe502db2ef6e9b1523d2bfee31f3b999",
        ),
    ],
)
def test_crypto_hash_of_an_id(value, expected):
    e = engine([{"path": "Resource.id", "method": "cryptoHash"}], cryptoHashKey="123")
    out = e.apply({"resourceType": "Patient", "id": value})
    assert out["id"] == expected
    assert "CRYTOHASH" in codes(out)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("birthDate", "2015-02-07", "2015-01-17"),
        ("deceasedDateTime", "2015-02-07T13:28:17-05:00", "2015-01-17T00:00:00-05:00"),
        ("birthDate", "2015-02", "2015"),
    ],
)
def test_date_shift_with_the_published_key(kind, value, expected):
    # Key "dummy" and no id: offset -21 days, as in the tool's own tests.
    e = engine(
        [
            {"path": "nodesByType('date')", "method": "dateShift"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"},
        ],
        dateShiftKey="dummy",
        enablePartialDatesForRedact=True,
    )
    out = e.apply({"resourceType": "Patient", kind: value})
    assert out[kind] == expected
    assert ("PERTURBED" if len(value) >= 10 else "REDACTED") in codes(out)


COMMON = {
    "dateShiftKey": "123",
    "cryptoHashKey": "123",
    "enablePartialAgesForRedact": True,
    "enablePartialDatesForRedact": True,
    "enablePartialZipCodesForRedact": True,
}


def test_a_patient_through_a_common_configuration():
    e = engine(
        [
            {"path": "nodesByType('Address').where(city='KeepTest')", "method": "keep"},
            {"path": "nodesByType('date')", "method": "dateShift"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"},
            {"path": "Patient.id", "method": "cryptoHash"},
            {"path": "nodesByType('HumanName').use", "method": "keep"},
            {"path": "nodesByType('HumanName')", "method": "redact"},
            {"path": "nodesByType('Identifier')", "method": "redact"},
            {"path": "Patient.address.postalCode", "method": "redact"},
        ],
        **COMMON,
    )
    patient = {
        "resourceType": "Patient",
        "id": "example",
        "identifier": [{"system": "urn:x", "value": "12345", "period": {"start": "2001-01-01"}}],
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter"]}],
        "birthDate": "2000-01-01",
        "deceasedDateTime": "2000-01-01T01:01:01-01:00",
        "address": [
            {"city": "Leeds", "postalCode": "12345"},
            {"city": "KeepTest", "postalCode": "54321"},
            {"city": "York", "postalCode": "54321"},
        ],
    }
    out = e.apply(patient)
    assert out["id"] == "698d54f0494528a759f19c8e87a9f99e75a5881b9267ee3926bcf62c992d84ba"
    assert out["birthDate"] == "2000-02-11"  # offset +41 from "example" + "123"
    assert out["deceasedDateTime"] == "2000-02-11T00:00:00-01:00"
    assert out["identifier"] == [{"period": {"start": "2001-02-11"}}]  # shifted before the redact
    assert out["name"] == [{"use": "official"}]
    assert out["address"][0]["postalCode"] == "12300"
    assert out["address"][1] == {"city": "KeepTest", "postalCode": "54321"}  # kept whole
    assert out["address"][2]["postalCode"] == "54300"
    assert {"REDACTED", "ABSTRED", "CRYTOHASH", "PERTURBED"} <= codes(out)
    assert patient["id"] == "example"  # the input is not touched


def test_partial_redaction_of_ages_and_restricted_zip_codes():
    e = engine(
        [
            {"path": "nodesByType('Age')", "method": "redact"},
            {"path": "nodesByType('Address')", "method": "redact"},
        ],
        enablePartialAgesForRedact=True,
        enablePartialZipCodesForRedact=True,
        restrictedZipCodeTabulationAreas=["123"],
    )
    history = {
        "resourceType": "FamilyMemberHistory",
        "condition": [{"onsetAge": {"value": 91}}, {"onsetAge": {"value": 89}}],
    }
    out = e.apply(history)
    assert out["condition"] == [{"onsetAge": {"value": 89}}]
    patient = e.apply(
        {"resourceType": "Patient", "address": [{"postalCode": "12345"}, {"postalCode": "54321"}]}
    )
    assert [a["postalCode"] for a in patient["address"]] == ["00000", "54300"]


@pytest.mark.parametrize(
    ("cases", "other", "value", "expected"),
    [
        (
            {
                "$this>=0 and $this<20": "20",
                "$this>=20 and $this<40": "40",
                "$this>=40 and $this<60": "60",
                "$this>=60 and $this<80": "80",
            },
            "redact",
            43,
            60,
        ),
        ({"$this>=0 and $this<20": "20"}, "redact", 110, None),
        ({"$this>=0 and $this<20": "20"}, "keep", 110, 110),
        ({"$this>=-20 and $this<80": "($this div 10 -1)*10"}, "redact", 43, 30),
    ],
)
def test_generalize_follows_the_first_true_case(cases, other, value, expected):
    e = engine(
        [
            {
                "path": "nodesByType('Age').value",
                "method": "generalize",
                "cases": cases,
                "otherValues": other,
            }
        ]
    )
    out = e.apply(
        {
            "resourceType": "FamilyMemberHistory",
            "condition": [{"onsetAge": {"value": value, "unit": "a"}}],
        }
    )
    assert out["condition"][0]["onsetAge"].get("value") == expected
    assert "GENERALIZED" in codes(out)


MASK_CASE = {"$this.startsWith('123') or $this.endsWith('234')": "$this.substring(0,3)+'****'"}


def test_generalize_strings():
    e = engine(
        [
            {
                "path": "Patient.telecom.value",
                "method": "generalize",
                "cases": MASK_CASE,
            }
        ]
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "telecom": [{"value": "1230005"}, {"value": "2345234"}, {"value": "999"}],
        }
    )
    assert [t.get("value") for t in out["telecom"]] == ["123****", "234****"]


def test_substitute_primitive_and_complex():
    e = engine(
        [
            {"path": "Patient.gender", "method": "substitute", "replaceWith": "unknown"},
            {
                "path": "Patient.name",
                "method": "substitute",
                "replaceWith": {"family": "example", "given": ["test"]},
            },
        ]
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "gender": "female",
            "name": [{"family": "A"}, {"family": "B", "given": ["c"]}],
        }
    )
    assert out["gender"] == "unknown"
    assert out["name"] == [{"family": "example", "given": ["test"]}] * 2
    assert "SUBSTITUTED" in codes(out)


def test_substitute_keeps_what_earlier_rules_did_inside_the_node_and_shields_it_after():
    e = engine(
        [
            {"path": "Patient.name.family", "method": "cryptoHash"},
            {
                "path": "Patient.name",
                "method": "substitute",
                "replaceWith": {"family": "x", "given": ["test"], "use": "official"},
            },
            {"path": "Patient.name.given", "method": "redact"},
        ]
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "name": [{"family": "A", "given": ["c", "d"], "text": "A c"}],
        }
    )
    (name,) = out["name"]
    assert re.fullmatch("[0-9a-f]{64}", name["family"])  # the hash, not the replacement's "x"
    assert name["given"] == ["test"]  # paired in order; the extra "d" removed; not redacted
    assert name["use"] == "official"
    assert "text" not in name
    assert {"CRYTOHASH", "SUBSTITUTED"} <= codes(out)


def test_substitute_strips_a_holder_down_to_what_was_processed_inside_it():
    e = engine(
        [
            {"path": "Patient.address.postalCode", "method": "cryptoHash"},
            {"path": "Patient.address", "method": "substitute", "replaceWith": {"country": "GB"}},
        ]
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "address": [{"line": ["1 High St"], "city": "Leeds", "postalCode": "LS1 4AP"}],
        }
    )
    (address,) = out["address"]
    assert set(address) == {"postalCode", "country"}
    assert address["country"] == "GB"
    assert address["postalCode"] != "LS1 4AP"


def test_a_substitute_rule_matching_nodes_inside_each_other_replaces_the_outer_one():
    e = engine(
        [{"path": "nodesByType('Extension')", "method": "substitute", "replaceWith": {"url": "x"}}]
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "extension": [{"url": "a", "extension": [{"url": "b", "valueString": "s"}]}],
        }
    )
    assert out["extension"] == [{"url": "x"}]


def test_a_replacement_of_the_wrong_shape_fails_closed():
    e = engine(
        [
            {"path": "Patient.address.postalCode", "method": "cryptoHash"},
            {"path": "Patient", "method": "substitute", "replaceWith": {"address": "none"}},
        ]
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "address": [{"line": ["1 High St"], "city": "Leeds", "postalCode": "LS1 4AP"}],
        }
    )
    (address,) = out["address"]
    assert set(address) == {"postalCode"}  # street and city do not survive
    assert address["postalCode"] != "LS1 4AP"


def test_encrypt_round_trips_and_differs_each_time():
    e = engine(
        [{"path": "Patient.name.family", "method": "encrypt"}],
        encryptKey="704ab12c8e3e46d4bea600ef62a6bec7",
    )
    a = e.apply({"resourceType": "Patient", "name": [{"family": "Chalmers"}]})
    b = e.apply({"resourceType": "Patient", "name": [{"family": "Chalmers"}]})
    assert a["name"][0]["family"] != b["name"][0]["family"]
    assert e.decrypt(a["name"][0]["family"]) == "Chalmers"


def test_perturb_stays_within_its_span():
    e = engine(
        [{"path": "Observation.valueQuantity", "method": "perturb", "span": 10, "roundTo": 1}]
    )
    values = [
        e.apply({"resourceType": "Observation", "valueQuantity": {"value": 100}})["valueQuantity"][
            "value"
        ]
        for _ in range(50)
    ]
    assert all(95 <= v <= 105 for v in values)
    assert len(set(values)) > 1


def test_contained_resources_are_processed_on_their_own_and_labelled_on_the_container():
    e = engine(
        [
            {"path": "Patient.id", "method": "cryptoHash"},
            {"path": "nodesByType('HumanName')", "method": "redact"},
        ],
        cryptoHashKey="123",
    )
    out = e.apply(
        {
            "resourceType": "Patient",
            "id": "example",
            "contained": [{"resourceType": "Practitioner", "id": "p1", "name": [{"family": "X"}]}],
        }
    )
    assert out["contained"] == [{"resourceType": "Practitioner", "id": "p1"}]
    assert {"CRYTOHASH", "REDACTED"} <= codes(out)


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigError, match="method"):
        parse({"fhirPathRules": [{"path": "Patient", "method": "scramble"}]})
    with pytest.raises(ConfigError, match="encryptKey"):
        parse(
            {
                "fhirPathRules": [{"path": "Patient.id", "method": "encrypt"}],
                "parameters": {"encryptKey": "short"},
            }
        )
    with pytest.raises(ConfigError, match="replaceWith"):
        parse({"fhirPathRules": [{"path": "Patient.id", "method": "substitute"}]})


def test_a_failing_rule_raises_or_leaves_the_resource_out():
    rules = [{"path": "Patient.name", "method": "generalize", "cases": {"true": "'x'"}}]
    with pytest.raises(ExportError):
        engine(rules).apply({"resourceType": "Patient", "name": [{"family": "A"}]})
    for key in ("processingErrors", "processingError"):
        config = parse({"fhirPathRules": rules, key: "Skip"})
        assert (
            Anonymiser(config).apply({"resourceType": "Patient", "name": [{"family": "A"}]}) is None
        )


def test_a_failure_inside_a_contained_resource_leaves_the_whole_resource_out():
    rules = [{"path": "Practitioner.name", "method": "generalize", "cases": {"true": "'x'"}}]
    config = parse({"fhirPathRules": rules, "processingErrors": "skip"})
    patient = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Practitioner", "name": [{"family": "A"}]}],
    }
    assert Anonymiser(config).apply(patient) is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"processingErrors": "keep"}, "keep is not supported"),
        ({"processingErrors": "ignore"}, "raise or skip"),
        ({"processingErrors": "skip", "processingError": "raise"}, "disagree"),
    ],
)
def test_processing_error_modes_the_tool_does_not_have_are_refused(document, message):
    with pytest.raises(ConfigError, match=message):
        parse({"fhirPathRules": [], **document})


def test_date_shift_scopes_file_and_folder_share_one_shift_within_their_scope():
    rules = [{"path": "nodesByType('date')", "method": "dateShift"}]

    def shifted(e: Anonymiser, rid: str, file: str = "") -> str:
        return e.apply(
            {"resourceType": "Patient", "id": rid, "birthDate": "2000-06-15"}, file=file
        )["birthDate"]

    per_file = engine(rules, dateShiftKey="123", dateShiftScope="file")
    assert shifted(per_file, "a", "Patient.ndjson") == shifted(per_file, "b", "x/Patient.ndjson")
    files = {shifted(per_file, "a", f"f{i}.ndjson") for i in range(20)}
    assert len(files) > 5  # a different file, (almost always) a different shift
    config = parse(
        {"fhirPathRules": rules, "parameters": {"dateShiftKey": "123", "dateShiftScope": "folder"}}
    )
    one = Anonymiser(config, folder="/exports/job-1/")
    assert shifted(one, "a") == shifted(one, "b")
    others = {shifted(Anonymiser(config, folder=f"job-{i}"), "a") for i in range(20)}
    assert len(others) > 5
    per_resource = engine(rules, dateShiftKey="123")
    assert len({shifted(per_resource, f"r{i}") for i in range(20)}) > 5


def test_an_unknown_date_shift_scope_is_refused():
    with pytest.raises(ConfigError, match="dateShiftScope"):
        parse({"fhirPathRules": [], "parameters": {"dateShiftScope": "planet"}})


# --- carelink's stronger options ---------------------------------------------------------------

MASTER = bytes(range(32))


def person_engine(project: str = "diabetes-audit") -> Anonymiser:
    keys = ProjectKeys.for_project(MASTER, project)
    return engine(
        [
            {"path": "nodesByType('date')", "method": "dateShift"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"},
        ],
        keys,
        dateShiftScope="person",
        dateShiftRange=180,
        pseudonymiseNhsNumber=True,
    )


def test_one_person_is_shifted_the_same_in_every_resource_and_source():
    e = person_engine()
    a = e.apply(
        {"resourceType": "Observation", "id": "acute-1", "effectiveDateTime": "2024-03-01"},
        person="p-1",
    )
    b = e.apply(
        {"resourceType": "Condition", "id": "gp-9", "onsetDateTime": "2024-03-01"}, person="p-1"
    )
    assert a["effectiveDateTime"] == b["onsetDateTime"] != "2024-03-01"


def test_two_known_dates_reveal_nothing_about_other_peoples_shifts():
    keys = ProjectKeys.for_project(MASTER, "p")
    shifts = [keys.shift_days(f"person-{i}", 180) for i in range(2000)]
    assert all(s != 0 and -180 <= s <= 180 for s in shifts)
    # Knowing one person's shift tells nothing: others spread over the whole range.
    assert len(set(shifts)) > 300
    assert sum(1 for s in shifts if s == shifts[0]) < 20


def test_projects_get_unrelated_pseudonyms_for_the_same_person():
    one = ProjectKeys.for_project(MASTER, "project-a")
    two = ProjectKeys.for_project(MASTER, "project-b")
    assert one.nhs_pseudonym("9434765919") != two.nhs_pseudonym("9434765919")
    assert one.nhs_pseudonym("943 476 5919") == one.nhs_pseudonym("9434765919")
    assert len({one.pseudonym_key, two.pseudonym_key, one.date_key, two.date_key}) == 4
    shifts = [(one.shift_days(f"p{i}", 180), two.shift_days(f"p{i}", 180)) for i in range(200)]
    assert sum(a == b for a, b in shifts) < 10  # unrelated, not shared


def test_nhs_numbers_are_normalised_validated_and_keyed():
    e = person_engine()
    out = e.apply(
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "943 476 5919"},
                {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765918"},
            ],
        },
        person="p",
    )
    idents = out["identifier"]
    assert len(idents) == 1  # the invalid number is removed, not hashed into someone else
    assert idents[0]["value"] == ProjectKeys.for_project(MASTER, "diabetes-audit").nhs_pseudonym(
        "9434765919"
    )
    assert "9434765919" not in str(out)
    assert {"PSEUDED", "REDACTED"} <= codes(out)


def test_the_input_is_never_modified():
    e = person_engine()
    original = {
        "resourceType": "Observation",
        "effectiveDateTime": "2024-03-01",
        "subject": {"reference": "Patient/1"},
    }
    snapshot = copy.deepcopy(original)
    e.apply(original, person="p")
    assert original == snapshot


def test_a_fixed_date_shift_offset_is_used_as_given():
    e = engine(
        [{"path": "nodesByType('date')", "method": "dateShift"}], dateShiftFixedOffsetInDays=7
    )
    assert (
        e.apply({"resourceType": "Patient", "id": "x", "birthDate": "2015-02-07"})["birthDate"]
        == "2015-02-14"
    )
