"""The UK Core profile checker: the published examples pass, broken copies fail, and a
profiles folder carelink cannot use is refused naming the file."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from carelink.errors import ConfigError
from carelink.fhir.profile_check import check
from carelink.fhir.profiles import load_profiles
from carelink.settings import default_profiles_path
from tests.support.shared import UKCORE_EXAMPLES

PROFILES = load_profiles(Path(default_profiles_path()))
UKCORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
#: the one published example with an NHS number that fails the modulus 11 check
BAD_NHS_NUMBER = "UKCore-Patient-BabyPatient-Example.json"


def _examples() -> list[Path]:
    if not UKCORE_EXAMPLES.exists():
        return []
    return [
        p
        for p in sorted(UKCORE_EXAMPLES.glob("*.json"))
        if json.loads(p.read_text())["resourceType"] in PROFILES.by_type()
    ]


def _example(name: str) -> dict[str, Any]:
    return json.loads((UKCORE_EXAMPLES / name).read_text())


def test_the_shipped_profiles_name_one_ukcore_profile_per_emitted_type():
    types = PROFILES.by_type()
    for rtype in ("Patient", "Observation", "Condition", "Provenance", "OperationOutcome"):
        assert types[rtype] == f"{UKCORE}{rtype}"
    assert "Extension" not in types
    assert PROFILES.required_by_type()["MedicationRequest"] == ("substitution",)


@pytest.mark.skipif(not UKCORE_EXAMPLES.exists(), reason="UK Core examples not present")
def test_there_are_examples_to_check():
    assert len(_examples()) > 100


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.stem)
def test_a_published_example_passes(path: Path):
    problems = check(json.loads(path.read_text()), PROFILES)
    if path.name == BAD_NHS_NUMBER:
        assert problems == [
            "Patient/UKCore-Patient-BabyPatient-Example: NHS number '9912003890' fails the "
            "check digit"
        ]
    else:
        assert problems == []


def _drop_nhs_value(r: dict[str, Any]) -> None:
    del r["identifier"][0]["value"]


def _two_nhs_numbers(r: dict[str, Any]) -> None:
    r["identifier"].append(copy.deepcopy(r["identifier"][0]))


def _unknown_status(r: dict[str, Any]) -> None:
    r["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "99"


def _status_without_value(r: dict[str, Any]) -> None:
    del r["identifier"][0]["extension"][0]["valueCodeableConcept"]


def _ods_without_value(r: dict[str, Any]) -> None:
    ods = next(
        i for i in r["identifier"] if i["system"] == "https://fhir.nhs.uk/Id/ods-organization-code"
    )
    del ods["value"]


def _no_substitution(r: dict[str, Any]) -> None:
    del r["substitution"]


def _no_allergy_code(r: dict[str, Any]) -> None:
    del r["code"]


def _two_ethnic_categories(r: dict[str, Any]) -> None:
    url = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
    (ethnic,) = [e for e in r["extension"] if e["url"] == url]
    r["extension"].append(copy.deepcopy(ethnic))


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("UKCore-Patient-RichardSmith-Example.json", _drop_nhs_value, "nhsNumber.value: 0 present"),
    ("UKCore-Patient-RichardSmith-Example.json", _two_nhs_numbers, "nhsNumber: 2 present"),
    ("UKCore-Patient-RichardSmith-Example.json", _unknown_status, "|99 not in the required"),
    ("UKCore-Patient-RichardSmith-Example.json", _status_without_value, "value[x]: 0 present"),
    ("UKCore-Patient-RichardSmith-Example.json", _two_ethnic_categories, "ethnicCategory: 2"),
    (
        "UKCore-Organization-LeedsTeachingHospital-Example.json",
        _ods_without_value,
        "odsOrganisationCode.value: 0 present",
    ),
    ("UKCore-MedicationRequest-Amoxicillin-Example.json", _no_substitution, "substitution: 0"),
    ("UKCore-AllergyIntolerance-Amoxicillin-Example.json", _no_allergy_code, "code: 0 present"),
]


@pytest.mark.skipif(not UKCORE_EXAMPLES.exists(), reason="UK Core examples not present")
@pytest.mark.parametrize(
    ("name", "breaks", "expected"), BROKEN, ids=lambda v: getattr(v, "__name__", None)
)
def test_a_broken_copy_of_an_example_fails(
    name: str, breaks: Callable[[dict[str, Any]], None], expected: str
):
    resource = _example(name)
    assert check(resource, PROFILES) == []
    breaks(resource)
    problems = check(resource, PROFILES)
    assert len(problems) == 1
    assert expected in problems[0]


def test_a_profile_for_another_type_or_not_loaded_is_reported():
    patient = {"resourceType": "Patient", "id": "p"}
    assert check(patient, PROFILES, f"{UKCORE}Observation") == [
        f"Patient/p: profile {UKCORE}Observation is for Observation"
    ]
    assert check(patient, PROFILES, "https://example.org/nothing") == [
        "Patient/p: profile https://example.org/nothing is not loaded"
    ]
    assert check({"resourceType": "Basic", "id": "b"}, PROFILES) == [
        "Basic/b: no profile for Basic"
    ]


def test_a_primitive_with_only_extensions_counts_as_present(tmp_path: Path):
    (tmp_path / "p.json").write_text(
        json.dumps(
            {
                "resourceType": "StructureDefinition",
                "url": "https://example.org/P",
                "type": "Patient",
                "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
                "differential": {
                    "element": [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]
                },
            }
        )
    )
    profiles = load_profiles(tmp_path)
    absent = {"resourceType": "Patient", "id": "p"}
    assert check(absent, profiles) == [
        "Patient/p: Patient.birthDate: 0 present, at least 1 required"
    ]
    unknown = {**absent, "_birthDate": {"extension": [{"url": "https://example.org/x"}]}}
    assert check(unknown, profiles) == []


SD = {
    "resourceType": "StructureDefinition",
    "url": "https://example.org/P",
    "type": "Patient",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
    "differential": {"element": [{"id": "Patient.name", "path": "Patient.name", "min": 1}]},
}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"resourceType": "Patient"}), "not a StructureDefinition or ValueSet"),
        (json.dumps({**SD, "url": None}), "needs url"),
        (json.dumps({**SD, "differential": {}}), "needs differential.element"),
        (
            json.dumps({**SD, "differential": {"element": [{"id": "Patient.name", "max": "n"}]}}),
            "element Patient.name: max must be a number or *",
        ),
        (
            json.dumps({**SD, "differential": {"element": [{"id": "Observation.code"}]}}),
            "element Observation.code is not under Patient",
        ),
        (
            json.dumps({"resourceType": "ValueSet", "url": "https://example.org/vs"}),
            "the ValueSet lists no codes",
        ),
        (
            json.dumps(
                {
                    "resourceType": "ValueSet",
                    "url": "https://example.org/vs",
                    "compose": {"include": [{"system": "https://example.org/cs"}]},
                }
            ),
            "value sets that list their codes",
        ),
    ],
)
def test_a_profile_file_carelink_cannot_use_is_refused_naming_it(
    tmp_path: Path, text: str, why: str
):
    (tmp_path / "ok.json").write_text(json.dumps(SD | {"url": "https://example.org/ok"}))
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.json") as err:
        load_profiles(tmp_path)
    assert why in str(err.value)


def test_an_empty_or_missing_profiles_folder_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="no StructureDefinition"):
        load_profiles(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_profiles(tmp_path / "nowhere")
