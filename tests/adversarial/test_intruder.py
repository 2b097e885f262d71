"""The motivated intruder against anonymised releases.

Guarantee under attack: an intruder who knows a released person's sex, age and
postcode and up to m = 2 facts of their care (a coded condition, procedure,
admission, test or medicine with the month it happened) never singles them out:
every released person has at least k candidates. No id of a release appears in
another release. Every equivalence class over every released Patient element
holds at least k people.

The intruder here is the test's own: it reads only the released files and
the true records it generated, and matches the way a person would (a code among
the resource's codes, the month's year where the release keeps a year).
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from carelink.anonymise.disclosure import Refused
from carelink.export.anonymous import AnonymousRelease
from carelink.export.reading import Member
from carelink.export.spec import ExtractSpec
from carelink.export.tables import Output

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
TODAY = date(2026, 11, 30)
AREAS = ["LS1 4AB", "LS6 2QR", "BD7 1AB", "BD9 4XY", "HX1 2AA", "WF1 3BB"]


def _person(rng: random.Random, i: int) -> tuple[Member, list[dict[str, Any]]]:
    born = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 90 * 365))
    sex = rng.choice(["male", "female"])
    postcode = rng.choice(AREAS)
    pid = f"p{i}"
    patient = {"resourceType": "Patient", "id": pid, "gender": sex, "birthDate": born.isoformat()}
    out: list[dict[str, Any]] = [patient]

    def when() -> str:
        day = born + timedelta(days=rng.randrange(0, max(1, (TODAY - born).days)))
        return day.isoformat()

    # Conditions from a long-tailed list: a few common, many rare (as in real records).
    for _ in range(rng.randint(0, 6)):
        code = str(int(rng.paretovariate(1.1) * 10) % 400)
        out.append(
            {
                "resourceType": "Condition",
                "id": f"c{i}-{len(out)}",
                "code": {"coding": [{"system": SNOMED, "code": f"C{code}", "display": "x"}]},
                "onsetDateTime": when(),
                "subject": {"reference": f"Patient/{pid}"},
                "note": [{"text": f"seen by Dr Smith, ring 0113 {i:06d}"}],
            }
        )
    for _ in range(rng.randint(0, 3)):
        out.append(
            {
                "resourceType": "Encounter",
                "id": f"e{i}-{len(out)}",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "IMP",
                },
                "type": [{"coding": [{"system": SNOMED, "code": f"E{rng.randint(1, 40)}"}]}],
                "period": {"start": when()},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
    for _ in range(rng.randint(0, 4)):
        out.append(
            {
                "resourceType": "Observation",
                "id": f"o{i}-{len(out)}",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": rng.choice(["4548-4", "2093-3"])}]},
                "effectiveDateTime": when(),
                "valueQuantity": {"value": round(rng.uniform(3, 12), 2), "unit": "%"},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
    member = Member(pid, None, born.isoformat(), sex, postcode, None)
    return member, out


def population(n: int, seed: int) -> list[tuple[Member, list[dict[str, Any]]]]:
    rng = random.Random(seed)
    return [_person(rng, i) for i in range(n)]


def release(
    people: list[tuple[Member, list[dict[str, Any]]]], tmp: Path, k: int = 5, m: int = 2
) -> dict[str, list[dict[str, Any]]]:
    spec = ExtractSpec("atlas", "anonymised", k=k, m=m, max_suppressed=0.2)
    out = Output(tmp)
    anonymous = AnonymousRelease(spec, out, TODAY)
    try:
        for member, resources in people:
            anonymous.add(member, resources)
        anonymous.finish()
    finally:
        anonymous.discard()
        out.close()
    return {
        f.stem: [json.loads(line) for line in f.read_text().splitlines()]
        for f in tmp.glob("*.ndjson")
    }


# -- the test's own intruder ------------------------------------------------------------


def _true_facts(resources: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(type, code, month) of every fact of a true record."""
    out = []
    for r in resources:
        rtype = r["resourceType"]
        if rtype == "Condition":
            out.append((rtype, r["code"]["coding"][0]["code"], r["onsetDateTime"][:7]))
        elif rtype == "Encounter":
            out.append((rtype, r["type"][0]["coding"][0]["code"], r["period"]["start"][:7]))
        elif rtype == "Observation":
            out.append((rtype, r["code"]["coding"][0]["code"], r["effectiveDateTime"][:7]))
    return out


def _released_facts(resource: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(type, code, year or '') for every code of a released resource's fact."""
    rtype = resource["resourceType"]
    main = {"Condition": "code", "Encounter": "type", "Observation": "code"}[rtype]
    concepts = resource.get(main)
    concepts = concepts if isinstance(concepts, list) else [concepts]
    year = (
        resource.get("onsetDateTime")
        or (resource.get("period") or {}).get("start")
        or resource.get("effectiveDateTime")
        or ""
    )
    return {(rtype, c["code"], year[:4]) for cc in concepts for c in cc["coding"]}


def _patient_matches(patient: dict[str, Any], member: Member) -> bool:
    if "gender" in patient and patient["gender"] != member.gender:
        return False
    band = next(
        (e["valueString"] for e in patient.get("extension", ()) if "age-band" in e["url"]), None
    )
    if band is not None:
        born = date.fromisoformat(member.birth_date or "")
        age = TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
        if band.endswith("+"):
            if age < int(band[:-1]):
                return False
        elif "-" in band:
            lo, hi = (int(x) for x in band.split("-"))
            if not lo <= age <= hi:
                return False
        elif int(band) != age:
            return False
    for address in patient.get("address", ()):
        area = address["postalCode"].replace(" ", "")
        full = (member.postcode or "").replace(" ", "")
        outward = full[:-3]
        if not (area == full[: len(area)] and (len(area) <= 2 or area in (outward, full[:-2]))):
            return False
    return True


def _holds(facts: set[tuple[str, str, str]], known: tuple[str, str, str]) -> bool:
    rtype, code, month = known
    return (rtype, code, month[:4]) in facts or (rtype, code, "") in facts


def intrude(
    people: list[tuple[Member, list[dict[str, Any]]]],
    files: dict[str, list[dict[str, Any]]],
    m: int,
    seed: int = 7,
) -> tuple[int, int]:
    """People singled out (exactly one candidate), by the rarest-facts and the
    random-facts intruder; the number of released people."""
    patients = {p["id"]: p for p in files.get("Patient", [])}
    held: dict[str, set[tuple[str, str, str]]] = {pid: set() for pid in patients}
    for rtype, resources in files.items():
        if rtype == "Patient":
            continue
        for r in resources:
            held[r["subject"]["reference"].split("/")[1]] |= _released_facts(r)
    frequency = Counter(f for _, rs in people for f in set(_true_facts(rs)))
    rng = random.Random(seed)
    singled = 0
    for member, resources in people:
        facts = sorted(set(_true_facts(resources)))
        choices = [sorted(facts, key=lambda f: (frequency[f], f))[:m]]
        if facts:
            choices.append(rng.sample(facts, min(m, len(facts))))
        for known in choices:
            candidates = [
                pid
                for pid, p in patients.items()
                if _patient_matches(p, member) and all(_holds(held[pid], f) for f in known)
            ]
            if len(candidates) == 1:
                singled += 1
                break
    return singled, len(patients)


# -- the attacks ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [80, 300, 1200])
def test_the_intruder_singles_out_nobody_in_populations_of_several_sizes(size, tmp_path):
    people = population(size, seed=size)
    files = release(people, tmp_path, k=5, m=2)
    singled, released = intrude(people, files, m=2)
    assert released > 0
    assert singled <= released / 5
    assert singled == 0  # the guarantee is at least k candidates, not just a low rate


def test_the_intruder_is_strong_enough_to_matter(tmp_path):
    """Control: against the same facts without disclosure control (each true fact
    released with its year), the same intruder singles out most people."""
    people = population(300, seed=300)
    files: dict[str, list[dict[str, Any]]] = {"Patient": []}
    for member, resources in people:
        files["Patient"].append({"id": member.id, "gender": member.gender})
        for r in resources[1:]:
            files.setdefault(r["resourceType"], []).append(r)
    singled, released = intrude(people, files, m=2)
    assert singled > released / 2


def test_every_set_of_m_released_facts_is_held_by_k_people_of_the_class(tmp_path):
    people = population(400, seed=11)
    k, m = 4, 2
    files = release(people, tmp_path, k=k, m=m)

    def content(r: dict[str, Any]) -> str:
        return json.dumps(
            {x: v for x, v in r.items() if x not in ("id", "subject", "meta")}, sort_keys=True
        )

    classes: dict[str, list[str]] = {}
    for p in files["Patient"]:
        key = json.dumps({x: v for x, v in p.items() if x != "id"}, sort_keys=True)
        classes.setdefault(key, []).append(p["id"])
    assert min(len(v) for v in classes.values()) >= k  # real classes, every element
    facts: dict[str, set[str]] = {p["id"]: set() for p in files["Patient"]}
    for rtype, resources in files.items():
        if rtype != "Patient":
            for r in resources:
                facts[r["subject"]["reference"].split("/")[1]].add(content(r))
    assert sum(len(f) for f in facts.values()) > 0  # something clinical is released
    for members in classes.values():
        for pid in members:
            for size in range(1, m + 1):
                for combo in itertools.combinations(sorted(facts[pid]), size):
                    holders = sum(1 for other in members if set(combo) <= facts[other])
                    assert holders >= k, combo


def test_no_two_releases_share_an_id_and_nothing_of_the_source_survives(tmp_path):
    people = population(200, seed=5)
    first = release(people, tmp_path / "a")
    second = release(people, tmp_path / "b")

    def ids(files: dict[str, list[dict[str, Any]]]) -> set[str]:
        return {r["id"] for rs in files.values() for r in rs}

    assert ids(first)
    assert ids(second)
    assert not ids(first) & ids(second)
    text = json.dumps(first)
    for member, resources in people:
        assert member.birth_date not in text
        for r in resources:
            assert f'"{r["id"]}"' not in text
    for word in ("Smith", "ring 0113", '"display": "x"', "note", "valueQuantity", "birthDate"):
        assert word not in text


def test_a_cohort_too_small_to_release_at_record_level_is_refused_with_the_way_out(tmp_path):
    people = population(12, seed=3)
    with pytest.raises(Refused) as refused:
        release(people, tmp_path, k=50)
    assert "aggregate" in str(refused.value)
    assert not list(tmp_path.glob("*.ndjson")) or all(
        not f.read_text() for f in tmp_path.glob("*.ndjson")
    )


def _class_sharing_one_diagnosis(variant: str) -> list[tuple[Member, list[dict[str, Any]]]]:
    """Ten people who look alike (one class), every one with diabetes (C1), recorded two
    ways in equal halves: in two years, under two categories, or with and without an
    ICD-10 code beside the SNOMED one (or, ``same``, one way). Half also have C2."""
    people = []
    for i in range(10):
        pid = f"h{i}"
        coding = [{"system": SNOMED, "code": "C1"}]
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "id": f"hc{i}",
            "onsetDateTime": "2019-03-01",
            "subject": {"reference": f"Patient/{pid}"},
        }
        if i % 2:
            if variant == "year":
                condition["onsetDateTime"] = "2020-03-01"
            elif variant == "category":
                category = "http://terminology.hl7.org/CodeSystem/condition-category"
                condition["category"] = [{"coding": [{"system": category, "code": "x"}]}]
            elif variant == "second code":
                coding.append({"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"})
        condition["code"] = {"coding": coding}
        other = {
            "resourceType": "Condition",
            "id": f"ho{i}",
            "code": {"coding": [{"system": SNOMED, "code": "C2"}]},
            "onsetDateTime": "2018-01-01",
            "subject": {"reference": f"Patient/{pid}"},
        }
        patient = {"resourceType": "Patient", "id": pid, "gender": "female"}
        resources = [patient, condition, *([other] if i < 5 else [])]
        people.append((Member(pid, None, "1960-05-05", "female", "LS1 4AB", None), resources))
    return people


@pytest.mark.parametrize("variant", ["same", "year", "category", "second code"])
def test_no_diagnosis_is_released_for_every_member_of_a_class(variant, tmp_path):
    """Distinct 2-diversity: a diagnosis every member of a class holds would be learnt
    about anyone known to be in the class, however each member's fact is recorded
    (its year, its category, the other codes beside it)."""
    people = _class_sharing_one_diagnosis(variant)
    files = release(people, tmp_path, k=2, m=1)
    classes: dict[str, list[str]] = {}
    for p in files["Patient"]:
        key = json.dumps({x: v for x, v in p.items() if x != "id"}, sort_keys=True)
        classes.setdefault(key, []).append(p["id"])
    codes: dict[str, set[str]] = {p["id"]: set() for p in files["Patient"]}
    for r in files.get("Condition", []):
        codes[r["subject"]["reference"].split("/")[1]] |= {c["code"] for c in r["code"]["coding"]}
    assert list(map(len, classes.values())) == [10]  # one class of all ten
    assert any(codes.values())  # C2, held by half, is released
    for members in classes.values():
        shared = set.intersection(*(codes[pid] for pid in members))
        assert not shared, f"every member of a class of {len(members)} is shown with {shared}"


def test_no_released_band_edge_is_one_persons_lowest_or_highest_value(tmp_path):
    """Bands are open at both ends so that no released number is one person's exact
    extreme value. Four women with the same HbA1c and one man, in another class, with
    the population's highest: the women's band must not end at his value."""
    people = []
    for i, (sex, value) in enumerate(
        [("female", 6.0)] * 4 + [("male", 9.87)] + [("male", None)] * 3
    ):
        pid = f"b{i}"
        resources: list[dict[str, Any]] = [{"resourceType": "Patient", "id": pid, "gender": sex}]
        if value is not None:
            resources.append(
                {
                    "resourceType": "Observation",
                    "id": f"bo{i}",
                    "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
                    "effectiveDateTime": "2020-06-01",
                    "valueQuantity": {"value": value, "unit": "%"},
                    "subject": {"reference": f"Patient/{pid}"},
                }
            )
        people.append((Member(pid, None, "1960-05-05", sex, "LS1 4AB", None), resources))
    files = release(people, tmp_path, k=2, m=1)
    values = sorted(v for _, rs in people for r in rs[1:] for v in [r["valueQuantity"]["value"]])
    extremes = {v for v in (values[0], values[-1]) if values.count(v) == 1}
    edges = [
        r["valueRange"][end]["value"]
        for r in files.get("Observation", [])
        for end in ("low", "high")
        if end in r.get("valueRange", {})
    ]
    assert edges  # a band is released (the women's)
    assert not extremes & set(edges), f"a released band ends at {extremes & set(edges)}"
