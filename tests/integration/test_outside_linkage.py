"""Outside data without NHS numbers, held by two sources, links into one person each.

The vendored Synthea Bulk export is split across the acute and GP simulators
as two real systems would hold it: both have every Patient (the GP under its
own ids, with realistic drift: a shortened given name, no address, another
phone number, and one death it has not been told about), and the clinical
resources are divided between them. No source has an NHS number, so every
link is demographic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.federation.patient_merge import CONFLICT_URL
from tests.support.files_system import files_system
from tests.support.schema import problems
from tests.support.shared import SYNTHEA
from tests.support.split import GP_SYSTEM, LINKS, gp_copy


def _resources() -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(SYNTHEA.glob("*.ndjson"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


def _split(acute_dir: Path, gp_dir: Path) -> tuple[dict[str, str], set[str], str]:
    """Write the two sources' files; return acute id -> GP id, the dead, one GP-unaware death."""
    everything = _resources()
    patients = [r for r in everything if r["resourceType"] == "Patient"]
    gp_id = {p["id"]: f"G{n}" for n, p in enumerate(patients)}
    dead = {p["id"] for p in patients if "deceasedDateTime" in p}
    unaware = sorted(dead)[0]
    acute_lines = [json.dumps(p) for p in patients]
    gp_lines = []
    for n, p in enumerate(patients):
        gp = gp_copy(n, p)
        if p["id"] == unaware:
            gp.pop("deceasedDateTime")
        gp_lines.append(json.dumps(gp))
    clinical = [r for r in everything if r["resourceType"] != "Patient"]
    for n, r in enumerate(clinical):
        if n % 2 == 0:
            acute_lines.append(json.dumps(r))
            continue
        for key in LINKS:
            link = r.get(key)
            if isinstance(link, dict) and "reference" in link:
                local = link["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:")
                link["reference"] = f"Patient/{gp_id.get(local, local)}"
                break
        gp_lines.append(json.dumps(r))
    (acute_dir / "acute.ndjson").write_text("\n".join(acute_lines) + "\n")
    (gp_dir / "gp.ndjson").write_text("\n".join(gp_lines) + "\n")
    return gp_id, dead, unaware


@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present")
def test_synthea_people_held_by_two_sources_without_nhs_numbers_are_one_person_each(tmp_path):
    acute_dir, gp_dir = tmp_path / "acute", tmp_path / "gp"
    acute_dir.mkdir()
    gp_dir.mkdir()
    gp_id, dead, unaware = _split(acute_dir, gp_dir)
    with (
        files_system({"acute": acute_dir, "gp": gp_dir}, tmp_path) as fs,
        httpx.Client(timeout=30) as client,
    ):
        built, base = fs.built, fs.base
        assert f"index built: {len(gp_id)} persons;" in built.stdout
        assert f"by demographics {2 * len(gp_id)};" in built.stdout
        assert "{'deceased': 1}" in built.stdout  # the death the GP was not told of
        for local, gp_local in gp_id.items():
            found = client.get(
                f"{base}/Patient",
                params={"identifier": f"https://carelink.example/Id/acute|{local}"},
            ).json()
            assert found["total"] == 1, local
            pid = found["entry"][0]["resource"]["id"]
            patient = client.get(f"{base}/Patient/{pid}").json()
            assert problems(patient) == []
            assert sorted(lk["other"]["reference"] for lk in patient["link"]) == [
                f"Patient/acute-{local}",
                f"Patient/gp-{gp_local}",
            ]
            assert {"system": GP_SYSTEM, "value": gp_local} in patient["identifier"]
            assert ("deceasedDateTime" in patient) == (local in dead), local
            conflicts = [e for e in patient.get("extension", []) if e["url"] == CONFLICT_URL]
            assert bool(conflicts) == (local == unaware), local
        page = client.get(f"{base}/Patient/{pid}/$everything?_count=1000").json()
        sources = {
            e["resource"]["meta"]["source"]
            for e in page["entry"]
            if e["search"]["mode"] == "match" and e["resource"]["id"] != pid
        }
        # The GP is a GP Connect provider, which finds patients by NHS number only, and
        # Synthea's people have none: linked as they are, their GP part is not asked for,
        # and the answer says so rather than leaving a silent gap.
        assert sources == {"urn:carelink:source:acute"}
        told = json.dumps([e for e in page["entry"] if e["search"]["mode"] == "outcome"])
        assert "gp" in told
        assert "no traced NHS number" in told
