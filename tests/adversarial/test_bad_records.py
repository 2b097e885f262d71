"""One bad record costs that record, named in the source's outcome; never the source,
and never other patients (issue 10, fault isolation).

A real acute simulator serves a tester's Bundle (``--data``) holding five
Observations without an id beside good data for two patients; the real
gateway federates it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.files_system import files_system

LOCAL_SYSTEM = "https://carelink.example/Id/acute"
PROBLEM_SYSTEM = "https://carelink.example/CodeSystem/source-problem"
STATUS_SYSTEM = "https://carelink.example/CodeSystem/source-status"


def _bundle() -> dict[str, object]:
    def patient(pid: str, family: str) -> dict[str, object]:
        return {
            "resourceType": "Patient",
            "id": pid,
            "name": [{"family": family, "given": ["Test"]}],
            "birthDate": "1950-01-01",
            "gender": "female",
        }

    def obs(pid: str, oid: str | None, code: str) -> dict[str, object]:
        r: dict[str, object] = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
        if oid:
            r["id"] = oid
        return r

    resources = [
        patient("pa", "Alpha"),
        patient("pb", "Bravo"),
        obs("pa", "good-a1", "8867-4"),
        *(obs("pa", None, "8480-6") for _ in range(5)),
        obs("pa", "good-a2", "8462-4"),
        {
            "resourceType": "Encounter",
            "id": "enc-a",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pa"},
        },
        obs("pb", "good-b1", "8867-4"),
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("bad-records")
    data = tmp / "bundle.json"
    data.write_text(json.dumps(_bundle()))
    with files_system({"acute": data}, tmp) as system:
        yield system.base


def _everything(client: httpx.Client, base: str, local: str) -> dict[str, object]:
    found = client.get(f"{base}/Patient", params={"identifier": f"{LOCAL_SYSTEM}|{local}"}).json()
    assert found["total"] == 1, found
    pid = found["entry"][0]["resource"]["id"]
    r = client.get(f"{base}/Patient/{pid}/$everything", params={"_count": 1000})
    assert r.status_code == 200, r.text
    return r.json()


def _outcome(bundle: dict) -> list[dict]:
    return next(e["resource"]["issue"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")


def _coded(issues: list[dict], system: str) -> list[dict]:
    return [
        i for i in issues if i.get("details", {}).get("coding", [{}])[0].get("system") == system
    ]


def _acute_ids(bundle: dict) -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
        and e["resource"].get("meta", {}).get("source") == "urn:carelink:source:acute"
    }


def test_the_good_resources_come_back_and_the_outcome_names_the_skipped_ones(gateway):
    with httpx.Client(timeout=30) as client:
        bundle = _everything(client, gateway, "pa")
    assert {"acute-good-a1", "acute-good-a2", "acute-enc-a"} <= _acute_ids(bundle)
    issues = _outcome(bundle)
    [status] = _coded(issues, STATUS_SYSTEM)
    assert status["details"]["coding"][0]["code"] == "ok"
    assert "5 unreadable resources left out" in status["diagnostics"]
    [skipped] = _coded(issues, PROBLEM_SYSTEM)
    assert skipped["severity"] == "warning"
    assert skipped["diagnostics"].count("Observation entry") == 5
    assert skipped["diagnostics"].count(": no id") == 5
    count = next(x for x in skipped["extension"] if x["url"].endswith("source-skipped-count"))
    assert count["valueInteger"] == 5


def test_repeated_bad_answers_for_one_patient_never_cost_another_patient_their_data(gateway):
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            bundle = _everything(client, gateway, "pa")
            [status] = _coded(_outcome(bundle), STATUS_SYSTEM)
            assert status["details"]["coding"][0]["code"] == "ok"
            [skipped] = _coded(_outcome(bundle), PROBLEM_SYSTEM)  # remembered answers too
            assert skipped["diagnostics"].count(": no id") == 5
        other = _everything(client, gateway, "pb")
    [status] = _coded(_outcome(other), STATUS_SYSTEM)
    assert status["details"]["coding"][0]["code"] == "ok"
    assert "acute-good-b1" in _acute_ids(other)
    assert _coded(_outcome(other), PROBLEM_SYSTEM) == []
