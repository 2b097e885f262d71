"""``--data``: FHIR from files placed by the Patient compartment, with every resource
accounted for (in a record, shared, or skipped with its file:line and reason)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from carelink.simulators.fhir_store import FileStore
from tests.support.shared import SYNTHEA, UKCORE_EXAMPLES

Json = dict[str, Any]
IDENT = "https://example.org/mrn"


def patient(pid: str, mrn: str | None = None) -> Json:
    r: Json = {"resourceType": "Patient", "id": pid}
    if mrn:
        r["identifier"] = [{"system": IDENT, "value": mrn}]
    return r


def obs(oid: str | None, **links: Any) -> Json:
    r: Json = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **links}
    if oid:
        r["id"] = oid
    return r


def ndjson(path: Path, *lines: Json | str) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def ids(store: FileStore, local: str) -> list[str | None]:
    rec = store.record(local)
    assert rec is not None
    return [r.get("id") for r in rec[1:]]


def reported(store: FileStore) -> list[str]:
    return [str(p) for p in (*store.report.without_id, *store.report.skipped)]


def test_bad_lines_are_skipped_and_reported_by_file_and_line_and_the_rest_is_served(tmp_path):
    f = ndjson(
        tmp_path / "mixed.ndjson",
        patient("p1"),
        '{"resourceType": "Observation", "id": ',
        {"id": "o2", "status": "final"},
        '["not", "an", "object"]',
        obs("o4", subject={"reference": "Patient/p1"}),
    )
    store = FileStore(tmp_path)
    assert ids(store, "p1") == ["o4"]
    assert reported(store) == [
        f"{f}:2: not JSON",
        f"{f}:3: no resourceType",
        f"{f}:4: not a JSON object",
    ]
    assert store.report.summary().endswith("0 served without an id; 3 skipped")


@pytest.mark.parametrize(
    "link",
    [
        {"performer": [{"reference": "Patient/p1"}]},
        {"subject": {"reference": "https://ehr.example.org/fhir/Patient/p1"}},
        {"subject": {"reference": "https://ehr.example.org/fhir/Patient/p1/_history/3"}},
        {"subject": {"reference": f"Patient?identifier={IDENT}|M1"}},
        {"subject": {"reference": f"Patient?identifier={IDENT}%7CM1"}},
        {"subject": {"reference": "urn:uuid:p1"}},
    ],
    ids=["performer", "absolute", "absolute-history", "conditional", "conditional-encoded", "urn"],
)
def test_any_patient_compartment_reference_places_the_resource_and_is_made_relative(tmp_path, link):
    ndjson(tmp_path / "a.ndjson", patient("p1", "M1"), patient("p2"), obs("o1", **link))
    store = FileStore(tmp_path)
    assert ids(store, "p1") == ["o1"]
    assert ids(store, "p2") == []
    served = store.record("p1")[1]  # type: ignore[index]
    assert json.dumps(served).count('"reference": "Patient/p1"') == 1
    assert reported(store) == []


def test_a_coverage_linked_only_by_beneficiary_is_in_that_patients_record(tmp_path):
    cov = {
        "resourceType": "Coverage",
        "id": "c1",
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/org1"}],
    }
    org = {"resourceType": "Organization", "id": "org1"}
    ndjson(tmp_path / "a.ndjson", patient("p1"), cov, org)
    store = FileStore(tmp_path)
    assert ids(store, "p1") == ["c1"]
    assert store.report.shared == 1


def test_a_resource_in_two_compartments_is_in_both_records(tmp_path):
    ndjson(
        tmp_path / "a.ndjson",
        patient("p1"),
        patient("p2"),
        obs("o1", subject={"reference": "Patient/p1"}, performer=[{"reference": "Patient/p2"}]),
    )
    store = FileStore(tmp_path)
    assert ids(store, "p1") == ids(store, "p2") == ["o1"]
    assert store.report.in_records == 1


def test_a_resource_pointing_at_a_patient_not_in_the_data_is_skipped_with_its_reason(tmp_path):
    f = ndjson(
        tmp_path / "a.ndjson",
        patient("p1"),
        obs("o1", subject={"reference": "Patient/nobody"}),
        obs("o2", subject={"reference": f"Patient?identifier={IDENT}|NOPE"}),
        obs("o3", subject={"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}),
    )
    store = FileStore(tmp_path)
    assert reported(store) == [
        f"{f}:{n}: Observation refers to a Patient not in the data" for n in (2, 3, 4)
    ]
    assert "nobody" not in " ".join(reported(store))  # places and reasons, never the data


def test_shared_resources_are_kept_readable_by_id_and_identifier(tmp_path):
    prac = {
        "resourceType": "Practitioner",
        "id": "dr1",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "G123"}],
    }
    ndjson(tmp_path / "a.ndjson", patient("p1"), prac, {"resourceType": "Medication", "id": "m1"})
    store = FileStore(tmp_path)
    assert store.report.shared == 2
    assert store.resource("Practitioner", "dr1") == prac
    assert store.search("Practitioner", "https://fhir.nhs.uk/Id/sds-user-id", "G123") == [prac]
    assert store.search("Practitioner", None, "G123") == [prac]
    assert store.search("Practitioner", "other", "G123") == []


def test_bundle_entries_take_their_full_url_id_and_resolve_references_through_it(tmp_path):
    pat_url, obs_url = "urn:uuid:1f0a", "urn:uuid:2b1c"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": pat_url, "resource": patient("local-p"), "request": {"method": "POST"}},
            {"fullUrl": obs_url, "resource": obs(None, subject={"reference": pat_url})},
            {"request": {"method": "GET", "url": "Patient?name=x"}},
            {"fullUrl": "urn:uuid:3c", "resource": {"id": "x"}},
        ],
    }
    f = tmp_path / "tx.json"
    f.write_text(json.dumps(bundle))
    store = FileStore(f)
    assert ids(store, "local-p") == ["2b1c"]
    assert store.record("local-p")[1]["subject"] == {"reference": "Patient/local-p"}  # type: ignore[index]
    assert reported(store) == [
        f"{f}#entry[2]: entry without a resource (a request only)",
        f"{f}#entry[3]: no resourceType",
    ]


def test_a_resource_without_any_id_is_served_as_given_and_reported(tmp_path):
    f = ndjson(
        tmp_path / "a.ndjson",
        patient("p1"),
        obs(None, subject={"reference": "Patient/p1"}),
        {"resourceType": "Organization", "name": "no id"},
        {"resourceType": "Patient", "name": [{"family": "no id"}]},
    )
    store = FileStore(tmp_path)
    assert ids(store, "p1") == [None]
    assert reported(store) == [
        f"{f}:2: Observation without an id: served as given",
        f"{f}:4: Patient without an id",
        f"{f}:3: Organization without an id, in no patient's record",
    ]


def test_a_duplicate_id_keeps_the_first_and_reports_the_second(tmp_path):
    f = ndjson(
        tmp_path / "a.ndjson",
        patient("p1"),
        obs("o1", subject={"reference": "Patient/p1"}, status="final"),
        obs("o1", subject={"reference": "Patient/p1"}, status="amended"),
    )
    store = FileStore(tmp_path)
    assert [r["status"] for r in store.record("p1")[1:]] == ["final"]  # type: ignore[index]
    assert reported(store) == [f"{f}:3: duplicate Observation id"]


def test_an_unreadable_file_is_reported_and_the_others_are_served(tmp_path):
    ndjson(tmp_path / "a.ndjson", patient("p1"))
    (tmp_path / "trap.json").mkdir()  # matches the pattern, but cannot be read as a file
    store = FileStore(tmp_path)
    assert store.patient_ids() == ["p1"]
    assert reported(store) == [f"{tmp_path / 'trap.json'}: unreadable (IsADirectoryError)"]


def test_a_byte_order_mark_and_crlf_line_endings_are_read(tmp_path):
    f = tmp_path / "bom.ndjson"
    f.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(patient("p1")).encode()
        + b"\r\n"
        + json.dumps(obs("o1", subject={"reference": "Patient/p1"})).encode()
        + b"\r\n"
    )
    store = FileStore(f)
    assert ids(store, "p1") == ["o1"]
    assert reported(store) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "no such file or directory"),
        (lambda d: d, "no .ndjson or .json files found"),
        (lambda d: ndjson(d / "x.ndjson", "garbage", "{}"), "no FHIR Patient to serve"),
        (lambda d: ndjson(d / "x.ndjson", {"resourceType": "Organization", "id": "o"}), "Patient"),
    ],
    ids=["missing", "empty-dir", "not-fhir", "no-patient"],
)
def test_data_with_nothing_to_serve_is_a_one_line_error(tmp_path, make, message):
    with pytest.raises(ValueError, match=message) as err:
        FileStore(make(tmp_path))
    assert "\n" not in str(err.value)


def _count_items(files: list[Path]) -> int:
    """Resources the files hold, counted independently of the loader."""
    total = 0
    for f in files:
        lines = f.read_text().splitlines() if f.suffix == ".ndjson" else [f.read_text()]
        for line in filter(str.strip, lines):
            doc = json.loads(line)
            total += len(doc.get("entry", [])) if doc["resourceType"] == "Bundle" else 1
    return total


@pytest.mark.parametrize("folder", [UKCORE_EXAMPLES, SYNTHEA], ids=["ukcore", "synthea"])
def test_every_resource_of_outside_data_is_accounted_for(folder):
    store = FileStore(folder)
    r = store.report
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("*.ndjson"))
    assert r.files == len(files)
    assert r.patients + r.in_records + r.shared + len(r.skipped) == _count_items(files)
    assert all(str(p).startswith(str(folder)) and ": " in str(p) for p in r.skipped)


def test_the_uk_core_examples_place_what_they_can_and_say_why_not_for_the_rest():
    store = FileStore(UKCORE_EXAMPLES)
    reasons = {p.reason for p in store.report.skipped}
    assert "entry without a resource (a request only)" in reasons
    assert "Observation refers to a Patient not in the data" in reasons
    assert store.report.patients > 20
    assert store.report.in_records > 100
    assert store.resource("Organization", "UKCore-Organization-WhiteRoseMedicalCentre-Example")


def test_the_synthea_export_puts_every_clinical_resource_in_a_record():
    store = FileStore(SYNTHEA)
    assert store.report.skipped == ()
    assert store.report.without_id == ()
    shared_types = {t for t, _ in store.loaded.shared}
    assert shared_types == {"Location", "Organization", "Practitioner", "PractitionerRole"}
