"""The sharing policy file: the shipped one loads; a malformed one names file, field and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carelink.consent.policy import load_policy
from carelink.errors import ConfigError

SHIPPED = Path(__file__).parents[2] / "consent" / "policy.json"


def test_the_shipped_policy_loads():
    policy = load_policy(SHIPPED)
    assert policy.version
    assert policy.custodian("gp") == "registered-practice"
    labelled = {
        "meta": {
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}
            ]
        }
    }
    assert policy.categories_of(labelled) == {"HIV"}
    coded = {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}}
    assert policy.categories_of(coded) == {"HIV"}
    assert policy.categories_of({"meta": {}}) == frozenset()
    assert {"HIV", "SDV"} <= policy.secondary_excludes
    assert "PSY" not in policy.secondary_excludes


def test_the_secondary_use_fields_are_optional_and_default_to_the_cautious_reading(tmp_path):
    document = json.loads(SHIPPED.read_text())
    del document["secondaryUseExcludes"], document["secondaryUseObjections"]
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    policy = load_policy(path)
    assert policy.secondary_excludes == frozenset()
    assert policy.source.secondaryUseObjections == "pseudonymised"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["breakGlass"].update(roles=["doctor"]), "breakGlass.roles"),
        (lambda d: d["breakGlass"].update(minutes=0), "breakGlass.minutes"),
        (lambda d: d.update(model="opt-in"), "model"),
        (lambda d: d["categories"][0].update(roles=["R80"]), "categories.0.roles"),
        (lambda d: d["categories"][0].pop("labels"), "categories.0.labels"),
        (
            lambda d: d["organisations"]["acute"].update(ods="not an ods code"),
            "organisations.acute.ods",
        ),
        (lambda d: d.update(custodianAccess=["pharmacy"]), "custodianAccess"),
        (lambda d: d.update(directCarePurposes=["treat"]), "directCarePurposes"),
        (lambda d: d.update(surprise=True), "surprise"),
        (lambda d: d["categories"].append(dict(d["categories"][0])), "categories"),
        (lambda d: d.update(secondaryUseExcludes=["XYZ"]), "secondaryUseExcludes"),
        (lambda d: d.update(secondaryUseObjections="sometimes"), "secondaryUseObjections"),
    ],
)
def test_a_malformed_policy_stops_start_up_naming_file_and_field(tmp_path, change, field):
    document = json.loads(SHIPPED.read_text())
    change(document)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document, indent=2))
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert field in message


def test_a_policy_that_is_not_json_names_the_line(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text('{\n  "version": "1",\n  oops\n}')
    with pytest.raises(ConfigError, match=rf"{path}:3: consent policy is not JSON"):
        load_policy(path)


def test_a_missing_policy_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_policy(tmp_path / "nowhere.json")


def test_the_field_error_gives_the_line_of_the_field(tmp_path):
    document = json.loads(SHIPPED.read_text())
    document["breakGlass"]["minutes"] = -5
    path = tmp_path / "policy.json"
    text = json.dumps(document, indent=2)
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"minutes"' in t)
    with pytest.raises(ConfigError, match=rf"{path}:{line}: "):
        load_policy(path)
