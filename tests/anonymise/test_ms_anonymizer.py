"""Compatibility with the Microsoft FHIR anonymizer as the tool behaves (issue #12,
finding 4): its own configurations (``tests/data/ms-anonymizer/``) load and run,
method names in any casing, ``processingErrors``, key parameters and project
keys, and the outputs its documentation states."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.rules import load, parse
from carelink.errors import ConfigError, ExportError
from tests.support.shared import DATA, SYNTHEA

SAMPLES = DATA / "ms-anonymizer"
TODAY = date(2026, 1, 1)
# Complete de-identification configurations; the others each exercise one feature
# (common-config hashes Patient.id but not the references to it, for instance).
FULL = [
    "configuration-sample.json",
    "configuration-sample-with-dateshiftfixedoffset.json",
    "r4-configuration-sample.json",
    "redact-all-config.json",
]
FEATURES = [
    "common-config.json",
    "common-no-partial-config.json",
    "generalize-patient-config.json",
    "substitute-complex.json",
    "substitute-primitive.json",
]
FAIL_ON_NAMES = [
    "configuration-raise-processing-error.json",
    "configuration-without-processing-error.json",
]


def synthea() -> list[dict[str, Any]]:
    out = []
    for f in sorted(SYNTHEA.glob("*.ndjson")):
        lines = f.read_text().splitlines()
        take = lines if f.name.startswith("Patient") else lines[:40]
        out += [json.loads(line) for line in take if line.strip()]
    return out


def identifiers(patients: list[dict[str, Any]], organisations: str) -> set[str]:
    """Patients' names, address parts, phone numbers and identifier values (not
    trivial ones such as ``00000``, nor those an organisation shares: the samples
    keep organisations' addresses)."""
    found: set[str] = set()
    for p in patients:
        for n in p.get("name", []):
            found |= {n.get("family", "")} | set(n.get("given", []))
        for a in p.get("address", []):
            found |= set(a.get("line", [])) | {a.get("postalCode", ""), a.get("city", "")}
        found |= {t.get("value", "") for t in p.get("telecom", [])}
        found |= {i.get("value", "") for i in p.get("identifier", [])}
    return {s for s in found if len(s) >= 4 and s.strip("0") and s not in organisations}


def strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def engine_for(name: str) -> Anonymiser:
    return Anonymiser(load(SAMPLES / name), rng=random.Random(3), today=lambda: TODAY)


def test_every_vendored_configuration_loads():
    names = sorted(p.name for p in SAMPLES.glob("*.json"))
    assert len(names) == 12
    for name in names:
        assert load(SAMPLES / name).rules, name


@pytest.mark.skipif(not SYNTHEA.exists(), reason=f"shared Synthea sample not at {SYNTHEA}")
@pytest.mark.parametrize("name", FULL)
def test_the_tools_own_configurations_leave_no_direct_identifier_in_synthea(name):
    data = synthea()
    organisations = json.dumps(
        [r for r in data if r["resourceType"] in ("Organization", "Location")]
    )
    secrets = identifiers([r for r in data if r["resourceType"] == "Patient"], organisations)
    assert len(secrets) > 50
    e = engine_for(name)
    leaves: set[str] = set()
    for r in data:
        out = e.apply(r, file=f"{r['resourceType']}.ndjson")
        assert out is not None
        leaves |= set(strings(out))
    leaked = sorted(
        s for s in secrets if s in leaves or (not s.isdigit() and any(s in v for v in leaves))
    )
    assert leaked == []


@pytest.mark.skipif(not SYNTHEA.exists(), reason=f"shared Synthea sample not at {SYNTHEA}")
@pytest.mark.parametrize("name", FEATURES)
def test_the_tools_feature_configurations_run_over_synthea(name):
    e = engine_for(name)
    assert all(e.apply(r) is not None for r in synthea()[:300])


@pytest.mark.parametrize("name", FAIL_ON_NAMES)
def test_the_tools_raise_configurations_raise_on_a_named_resource(name):
    e = engine_for(name)
    with pytest.raises(ExportError):
        e.apply({"resourceType": "Patient", "name": [{"family": "Chalmers"}]})
    assert e.apply({"resourceType": "Device", "id": "d"}) == {"resourceType": "Device", "id": "d"}


def test_the_tools_skip_configuration_leaves_a_failing_resource_out():
    e = engine_for("configuration-skip-processing-error.json")
    assert e.config.processing_error == "skip"
    assert e.apply({"resourceType": "Patient", "name": [{"family": "Chalmers"}]}) is None
    assert e.apply({"resourceType": "Device", "id": "d"}) == {"resourceType": "Device", "id": "d"}


# --- what the tool's documentation states ------------------------------------------------------


def test_documented_outputs_of_the_sample_configuration():
    """docs/FHIR-anonymization.md: partial zip codes (restricted areas all zeros),
    dates over 89 redacted, partial dates keep the year, time zeroed with the zone
    kept, shifts within 50 days, state and country kept, references keep their type."""
    e = engine_for("configuration-sample.json")
    out = e.apply(
        {
            "resourceType": "Patient",
            "id": "example",
            "birthDate": "1930-05-01",
            "deceasedDateTime": "2015-02-07T13:28:17-05:00",
            "address": [
                {
                    "line": ["1 Main St"],
                    "city": "Smalltown",
                    "state": "WA",
                    "postalCode": "03601",
                    "country": "US",
                },
                {"city": "Redmond", "postalCode": "98052"},
            ],
            "generalPractitioner": [{"reference": "Practitioner/123"}],
        }
    )
    assert out is not None
    assert "birthDate" not in out  # indicative of an age over 89
    shifted = out["deceasedDateTime"]
    assert shifted.endswith("T00:00:00-05:00")
    assert abs((date.fromisoformat(shifted[:10]) - date(2015, 2, 7)).days) <= 50
    assert out["address"][0] == {"state": "WA", "postalCode": "00000", "country": "US"}
    assert out["address"][1] == {"postalCode": "98000"}
    reference = out["generalPractitioner"][0]["reference"]
    assert reference.startswith("Practitioner/")
    assert len(reference) == len("Practitioner/") + 64
    partial = e.apply({"resourceType": "Condition", "id": "c", "recordedDate": "2015-02"})
    assert partial is not None
    assert partial["recordedDate"] == "2015"


def test_the_fixed_offset_sample_shifts_by_its_offset():
    document = json.loads(
        (SAMPLES / "configuration-sample-with-dateshiftfixedoffset.json").read_text("utf-8-sig")
    )
    offset = document["parameters"]["dateShiftFixedOffsetInDays"]
    out = engine_for("configuration-sample-with-dateshiftfixedoffset.json").apply(
        {"resourceType": "Encounter", "id": "e", "period": {"start": "2020-01-10"}}
    )
    assert out is not None
    assert (date.fromisoformat(out["period"]["start"]) - date(2020, 1, 10)).days == offset


def test_the_samples_perturb_rule_on_an_age_choice_type():
    e = engine_for("configuration-sample.json")
    out = e.apply(
        {
            "resourceType": "FamilyMemberHistory",
            "id": "f",
            "condition": [{"onsetAge": {"value": 50, "unit": "a"}}],
        }
    )
    assert out is not None
    assert 45 <= out["condition"][0]["onsetAge"]["value"] <= 55


# --- configuration compatibility ---------------------------------------------------------------


def test_method_names_are_case_insensitive_as_in_the_tool():
    config = parse(
        {
            "fhirPathRules": [
                {"path": "nodesByType('date')", "method": "dateshift"},
                {"path": "Resource.id", "method": "CRYPTOHASH"},
                {"path": "nodesByType('HumanName')", "method": "Redact"},
                {"path": "Patient.gender", "method": "KEEP"},
            ]
        }
    )
    assert [r.method for r in config.rules] == ["dateShift", "cryptoHash", "redact", "keep"]


@pytest.mark.parametrize("version", ["", None, "r4", "R4"])
def test_an_empty_or_any_cased_r4_version_is_accepted(version):
    assert parse({"fhirVersion": version, "fhirPathRules": []}).rules == ()


@pytest.mark.parametrize("name", ["cryptoHashKey", "encryptKey", "dateShiftKey"])
def test_a_configured_key_is_refused_with_project_keys_and_honoured_without(name):
    key = "704ab12c8e3e46d4bea600ef62a6bec7"
    config = parse({"fhirPathRules": [], "parameters": {name: key}})
    with pytest.raises(ConfigError, match=f"{name} is set but extracts derive per-project keys"):
        Anonymiser(config, ProjectKeys.for_project(bytes(32), "p"))
    assert Anonymiser(config).config.parameters[name] == key
    empty = parse({"fhirPathRules": [], "parameters": {name: ""}})  # as the samples ship them
    assert Anonymiser(empty, ProjectKeys.for_project(bytes(32), "p")).keys is not None


def test_project_keys_also_key_the_tools_own_date_shift():
    rules = [{"path": "nodesByType('date')", "method": "dateShift"}]
    config = parse({"fhirPathRules": rules})
    keys = ProjectKeys.for_project(bytes(32), "p")
    resource = {"resourceType": "Patient", "id": "x", "birthDate": "2000-06-15"}
    first = Anonymiser(config, keys).apply(resource)
    assert first == Anonymiser(config, keys).apply(resource)  # not a random key per run
    with_key = parse({"fhirPathRules": rules, "parameters": {"dateShiftKey": "123"}})
    assert Anonymiser(with_key).apply(resource) == Anonymiser(with_key).apply(resource)


def test_configurations_with_a_byte_order_mark_load(tmp_path: Path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"fhirPathRules": []}).encode())
    assert load(path).rules == ()
    path.write_bytes(b"\xef\xbb\xbf{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load(path)
