"""A tester's own FHIR data (a Synthea Bulk Data export) federates back complete."""

from __future__ import annotations

import collections
import json

import httpx
import pytest

from tests.support.files_system import files_system
from tests.support.shared import SYNTHEA

LINKS = ("subject", "patient", "beneficiary", "individual")
#: outside every compartment: $everything includes those the record refers to
SHARED = {"Practitioner", "PractitionerRole", "Organization", "Location", "Medication"}


def _compartments() -> dict[str, collections.Counter[str]]:
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for f in SYNTHEA.glob("*.ndjson"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r["resourceType"] == "Patient":
                out[r["id"]]["Patient"] += 1
                continue
            for key in LINKS:
                ref = (
                    (r.get(key) or {}).get("reference", "") if isinstance(r.get(key), dict) else ""
                )
                if ref:
                    out[ref.split("/")[-1].removeprefix("urn:uuid:")][r["resourceType"]] += 1
                    break
    return out


@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present")
def test_every_resource_of_every_synthea_patient_comes_back(tmp_path):
    expected = _compartments()
    # one person here has 3,500 resources (6 MB): completeness, not speed, is tested
    with (
        files_system({"acute": SYNTHEA}, tmp_path, {"CARELINK_BUDGET": "20"}) as fs,
        httpx.Client(timeout=30) as client,
    ):
        base = fs.base
        for local, counts in expected.items():
            found = client.get(
                f"{base}/Patient",
                params={"identifier": f"https://carelink.example/Id/acute|{local}"},
            ).json()
            assert found["total"] == 1, local
            pid = found["entry"][0]["resource"]["id"]
            got: collections.Counter[str] = collections.Counter()
            shared = 0
            url_ = f"{base}/Patient/{pid}/$everything?_count=1000"
            while url_:
                page = client.get(url_).json()
                for e in page["entry"]:
                    if e["search"]["mode"] == "match" and e["resource"]["id"] != pid:
                        rtype = e["resource"]["resourceType"]
                        if rtype in SHARED:
                            shared += 1
                        else:
                            got[rtype] += 1
                url_ = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
            assert got == counts, local
            assert shared > 0, local
