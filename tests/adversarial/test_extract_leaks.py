"""Leak scan over every file an extract writes, from data we did not make.

Guarantee under attack: no file of an extract (NDJSON, Parquet, dictionary,
manifest, risk report, error file) holds an NHS number, a name, an address
line, a full postcode, a phone number, an email address, an exact birth date,
a source's identifier or resource id, or free text, whatever the sources send,
including primitive extensions (``_birthDate``, ``_family``) and free text in
extensions. The Synthea export is served as it is by a real simulator, with
hand-made resources beside it that carry what real feeds carry.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.support.files_system import FilesSystem, files_system
from tests.support.procs import carelink
from tests.support.shared import SYNTHEA

NHS = "9434765919"
BIRTH = "1970-03-04"
MARKERS = [
    "Jane Doe-Marker",
    "07700 900123",
    "FREETEXT-CAREPLAN-TITLE",
    "FREETEXT-CAREPLAN-DESCRIPTION",
    "FREETEXT-ACTIVITY",
    "FREETEXT-IMPRESSION-DESCRIPTION",
    "FREETEXT-IMPRESSION-SUMMARY",
    "FREETEXT-DOSAGE",
    "FREETEXT-CODE-TEXT",
    "FREETEXT-NOTE",
    "jane.marker@example.org",
    "12 Marker Street",
    "LS1 4AB",
    "OWN-NAME-MARKER",
    "BIRTH-PLACE-MARKER",
]


def _hand_made() -> list[dict[str, Any]]:
    subject = {"reference": "Patient/hand-1"}
    return [
        {
            "resourceType": "Patient",
            "id": "hand-1",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}],
            "name": [
                {
                    "family": "Doe-Marker",
                    "_family": {
                        "extension": [
                            {
                                "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-name",
                                "valueString": "OWN-NAME-MARKER",
                            }
                        ]
                    },
                    "given": ["Jane"],
                }
            ],
            "gender": "female",
            "birthDate": BIRTH,
            "_birthDate": {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": f"{BIRTH}T10:20:00+00:00",
                    }
                ]
            },
            "telecom": [
                {"system": "phone", "value": "07700 900123"},
                {"system": "email", "value": "jane.marker@example.org"},
            ],
            "address": [{"line": ["12 Marker Street"], "city": "Leeds", "postalCode": "LS1 4AB"}],
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                    "valueAddress": {"city": "BIRTH-PLACE-MARKER"},
                }
            ],
        },
        {
            "resourceType": "Condition",
            "id": "hand-c1",
            "subject": subject,
            "code": {
                "coding": [{"system": "http://snomed.info/sct", "code": "44054006"}],
                "text": "FREETEXT-CODE-TEXT",
            },
            "onsetDateTime": "2019-05-06",
            "_onsetDateTime": {
                "extension": [
                    {
                        "url": "https://example.org/free-text",
                        "valueString": "Call Jane Doe-Marker on 07700 900123",
                    }
                ]
            },
            "note": [{"text": "FREETEXT-NOTE"}],
        },
        {
            "resourceType": "CarePlan",
            "id": "hand-cp1",
            "status": "active",
            "intent": "plan",
            "subject": subject,
            "title": "FREETEXT-CAREPLAN-TITLE",
            "description": "FREETEXT-CAREPLAN-DESCRIPTION",
            "activity": [{"detail": {"status": "scheduled", "description": "FREETEXT-ACTIVITY"}}],
        },
        {
            "resourceType": "ClinicalImpression",
            "id": "hand-ci1",
            "status": "completed",
            "subject": subject,
            "description": "FREETEXT-IMPRESSION-DESCRIPTION",
            "summary": "FREETEXT-IMPRESSION-SUMMARY",
        },
        {
            "resourceType": "MedicationRequest",
            "id": "hand-mr1",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "medicationCodeableConcept": {
                "coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975"}
                ]
            },
            "authoredOn": "2020-01-02",
            "dosageInstruction": [{"text": "FREETEXT-DOSAGE"}],
        },
    ]


def _needles(data: Path, dates: bool) -> list[str]:
    """What must never come out: every identifying value of the source data (birth
    dates only where no day-level date is released at all: a shifted event date can
    fall on someone's birthday by chance)."""
    out = [NHS, *MARKERS, *([BIRTH] if dates else [])]
    for f in sorted(data.glob("*.ndjson")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if len(r.get("id", "")) >= 8:
                out.append(r["id"])
            for ident in r.get("identifier", []) if isinstance(r.get("identifier"), list) else []:
                value = str(ident.get("value", ""))
                if len(value) >= 6:
                    out.append(value)
            if r["resourceType"] == "Patient":
                out += [r["birthDate"]] if dates else []
                for name in r.get("name", []):
                    out += [n for n in [name.get("family"), *name.get("given", [])] if n]
                for t in r.get("telecom", []):
                    out.append(t["value"])
                for a in r.get("address", []):
                    out += a.get("line", [])
                    if a.get("postalCode"):
                        out.append(a["postalCode"])
            if r["resourceType"] == "DocumentReference":
                for c in r.get("content", []):
                    data_b64 = c.get("attachment", {}).get("data")
                    if data_b64:
                        out.append(data_b64[:40])
    return [n for n in out if len(n) >= 4]


def _everything_written(out: Path) -> str:
    texts = []
    for f in sorted(out.rglob("*")):
        if f.is_dir():
            continue
        if f.suffix == ".parquet":
            texts.append(pd.read_parquet(f).to_json(orient="records"))
        else:
            texts.append(f.read_text(errors="replace"))
    return "\n".join(texts)


def _leaked(needles: list[str], written: str) -> list[str]:
    """The needles found in ``written``: a long one anywhere, a short one as a whole JSON
    string (as substrings, five digits of a US zip code turn up inside hexadecimal
    pseudonyms by chance).

    Exact, and fast over a large extract: a needle without a double quote lies, wherever
    it occurs, inside one run of text between quotes, so each distinct run is searched
    once however often it repeats (17 MB written holds well under 1 MB of distinct runs).
    """
    runs = written.split('"')
    whole = set(runs[1:-1])  # a quote either side: each a whole JSON string
    distinct = "\x00".join(set(runs))
    found = set()
    for n in set(needles):
        if '"' in n or "\x00" in n:
            hit = (n if len(n) >= 10 else f'"{n}"') in written
        else:
            hit = n in distinct if len(n) >= 10 else n in whole
        if hit:
            found.add(n)
    return sorted(found)


def test_the_scan_finds_a_needle_wherever_it_is_written():
    written = '{"a":"xx LONG-NEEDLE-1 yy","b":["SHORT"]}\nfree text SHORTER "x"'
    needles = ["LONG-NEEDLE-1", "SHORT", "SHORTER", "NOT-WRITTEN-AT-ALL", 'SAY "x"', "ext SH"]
    # a short value inside a longer string is not reported (it is looked for as a whole)
    assert _leaked(needles, written) == ["LONG-NEEDLE-1", "SHORT"]
    assert _leaked(["text SHORTER"], written) == ["text SHORTER"]  # outside any JSON string
    assert _leaked(['text SHORTER "x'], written) == ['text SHORTER "x']  # across a quote


@pytest.fixture(scope="module")
def synthea_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FilesSystem]]:
    """The Synthea export and the hand-made resources, served by one simulator with the
    index built over it, for every profile's extract (an extract reads the sources itself,
    so no gateway is started)."""
    if not SYNTHEA.exists():
        pytest.skip("the vendored Synthea sample is missing")
    tmp = tmp_path_factory.mktemp("leaks")
    data = tmp / "data"
    shutil.copytree(SYNTHEA, data)
    (data / "hand-made.ndjson").write_text("\n".join(json.dumps(r) for r in _hand_made()) + "\n")
    (tmp / "run").mkdir()
    with files_system({"acute": data}, tmp / "run", serve=False) as fs:
        yield data, fs


@pytest.mark.parametrize("profile", ["anonymised", "pseudonymised"])
def test_no_file_of_an_extract_holds_anything_identifying(profile, synthea_source, tmp_path):
    data, fs = synthea_source
    needles = _needles(data, dates=profile == "anonymised")
    out = tmp_path / "extract"
    done = carelink(
        ["extract", "--project", "leaks", "--out", str(out), "--profile", profile, "--k", "2"],
        fs.env,
    )
    assert done.returncode == 0, done.stderr
    written = _everything_written(out)
    assert "birthTime" not in written
    patients = [json.loads(x) for x in (out / "ndjson" / "Patient.ndjson").read_text().splitlines()]
    assert patients
    assert len(list((out / "ndjson").glob("*.ndjson"))) >= 2  # clinical facts too, not only
    assert all(len(p.get("birthDate", "")) in (0, 4) for p in patients)  # a year at most
    assert '"resourceType"' in written or "Patient" in written  # something was extracted
    leaked = _leaked(needles, written)
    where = {n: written[max(0, written.find(n) - 300) : written.find(n) + 60] for n in leaked}
    assert leaked == [], where
