"""One person, the whole record: complete and correct on data we did not make (issue 10).

The acceptance test, end to end, as a user meets it. The vendored Synthea
export is split across the acute and GP simulators with no NHS number at the
hospital: both hold every Patient (the GP under its own ids, with drift, and a
traced NHS number, as GP Connect asks for a record by that number only), the
hospital holds the Encounters, Procedures, documents and devices, the GP the
problems, medicines, allergies and immunisations (which refer to the
hospital's Encounters), and both hold the practitioners, organisations,
locations and roles. The feeds are broken as real ones are:

- each sends a few clinical resources without an id (the hospital's Procedures,
  one of them past the first 1000 entries of the biggest record; a GP
  Immunization);
- the hospital sends a resource about a patient it does not hold;
- the hospital also holds a UK Core example patient (Richard Smith) and some
  of his record, known nowhere else;
- the GP sends UK Core Observations about Richard Smith (whom it does not hold),
  the UK Core NEWS2 Bundle, about a patient nobody holds, and a batch Bundle of
  requests only.

Then for every person (all 13 Synthea people and Richard Smith): exactly one
gateway Patient; ``$everything``, followed page by page at ``_count=50``,
returns every resource the sources hold for them exactly once (the id-less
ones left out and named in the source's OperationOutcome issue); every
reference resolves in the pages or by a read; everything is valid R4. And
the loaders say what they could not place, rather than losing it silently.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirclient import client as smart_client
from fhirclient.models.allergyintolerance import AllergyIntolerance
from fhirpy import SyncFHIRClient

from carelink.federation.record import EXT_SOURCE, PROBLEM_SYSTEM
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.sources.base import LOCAL_ID_SYSTEM
from carelink.sources.namespacing import namespaced_id
from tests.support.files_system import files_system
from tests.support.references import logical_only, references, unresolved
from tests.support.schema import problems
from tests.support.shared import SYNTHEA, UKCORE_EXAMPLES
from tests.support.split import GP_SYSTEM, gp_copy, patient_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SYNTHEA.exists() and UKCORE_EXAMPLES.exists()),
        reason="the shared Synthea sample or UK Core examples are not present",
    ),
]

Json = dict[str, Any]
SOURCES = ("acute", "gp")
SHARED = ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication")
AT_ACUTE = ("Encounter", "Procedure", "DocumentReference", "Device")
AT_GP = ("Condition", "MedicationRequest", "AllergyIntolerance", "Immunization")
#: small pages, so every record of more than 50 resources is paged
COUNT = 50
#: resources each feed sends without an id, of a type nothing refers to: how many people
#: (those with the most of that type) have their last one sent so
ID_LESS = {"acute": ("Procedure", 4), "gp": ("Immunization", 1)}
RICHARD = "UKCore-Patient-RichardSmith-Example"
#: Richard Smith and part of his record, at the hospital only (with what they refer to)
UK_AT_ACUTE = (
    "Patient-RichardSmith",
    "Condition-BleedingFromEar",
    "Condition-HipReplacement",
    "Observation-VitalSigns-BodyWeight",
    "AllergyIntolerance-Amoxicillin",
    "Encounter-InpatientEncounter",
    "Immunization-InfluenzaVaccine",
    "Bundle-BatchPOST",  # a batch of Observations identified only by fullUrl
    "AllergyIntolerance-Sn-TransferDegradedDrugAllergy",  # too long an id once namespaced
    "AllergyIntolerance-Sn-DrugAllergyToEggProtein",
    "Observation-Group-FullBloodCount",  # refers to its members and they to a Specimen
    "Observation-Lab-WhiteCellCount",
    "Observation-Lab-RedCellCount",
    "Specimen-BloodSpecimen",
    "DiagnosticReport-Lab-DiagnosticStudiesReport",
    "MedicationRequest-EyeDrops",  # refers to a shared Medication
    "MedicationAdministration-TimoptolEyeDrops",
    "Medication-TimoptolEyeDrops",
    "Organization-LeedsTeachingHospital",
    "Organization-WhiteRoseMedicalCentre",  # managing the nurse clinic
    "Practitioner-ConsultantSandraGose",
    "Location-CardiologySJUH",
    "Location-GeneralPracticeNurseClinic",
)
#: UK Core resources the GP cannot serve (about patients it does not hold, or requests
#: only): to be reported, not lost silently
UK_ORPHANS_AT_GP = (
    "Observation-VitalSigns-HeartRate",
    "Observation-PipeSmoker",
    "Bundle-NEWS2Observations",
    "Bundle-Batch",  # requests only: nothing to serve
)
ORPHAN = {
    "resourceType": "Observation",
    "id": "orphan-1",
    "status": "final",
    "code": {"text": "blood pressure"},
    "subject": {"reference": "Patient/not-at-this-hospital"},
}


@dataclass
class Held:
    """What one source holds, as written to its files."""

    records: dict[str, list[Json]] = field(default_factory=dict)  # local patient -> record
    shared: list[Json] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # where: file:line or file#entry[i]
    id_less: list[str] = field(default_factory=list)  # where, of those placed without an id
    requests: list[str] = field(default_factory=list)  # where, of Bundle entries without a resource


@dataclass(frozen=True)
class Person:
    """One person as the sources hold them: their local id at each."""

    locals: dict[str, str]  # source -> local Patient id


@dataclass(frozen=True)
class World:
    base: str
    people: list[Person]
    held: dict[str, Held]
    built: str  # ``carelink index build`` output
    logs: dict[str, Path]  # each simulator's output


# ---------------------------------------------------------------------------- the data


def _synthea() -> list[Json]:
    return [
        json.loads(line)
        for f in sorted(SYNTHEA.glob("*.ndjson"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


def _ukcore(name: str) -> Json:
    doc: Json = json.loads((UKCORE_EXAMPLES / f"UKCore-{name}-Example.json").read_text())
    _strip_nhs(doc)
    return doc


def _strip_nhs(value: Any) -> None:
    """No NHS number anywhere: identifiers and logical references in that system go."""
    if isinstance(value, dict):
        ident = value.get("identifier")
        if isinstance(ident, list):
            value["identifier"] = [i for i in ident if i.get("system") != NHS_NUMBER_SYSTEM]
        elif isinstance(ident, dict) and ident.get("system") == NHS_NUMBER_SYSTEM:
            del value["identifier"]
        for v in value.values():
            _strip_nhs(v)
    elif isinstance(value, list):
        for v in value:
            _strip_nhs(v)


def _test_nhs_number(n: int) -> str:
    """The ``n``th valid NHS number in the range reserved for test data (999...)."""
    for first in range(999_000_000 + n * 20, 999_999_999):
        check = check_digit(str(first))
        if check is not None:
            return f"{first}{check}"
    raise AssertionError("no NHS number")


def _referenced_ids(resources: list[Json]) -> set[str]:
    """The last path segment of every literal reference (what an id-less copy would break)."""
    return {
        ref["reference"].rsplit("/", 1)[-1].rsplit("|", 1)[-1]
        for r in resources
        for ref in references(r)
        if "reference" in ref
    }


def _id_less(everything: list[Json], rtype: str, people: int) -> set[str]:
    """Ids of the ``rtype`` resources a feed will send without one: the last that nothing
    refers to of each of the ``people`` with the most of them (for the hospital's
    Procedures, one is beyond the first 1000 entries of the biggest record: past the
    first page the gateway asks the hospital for)."""
    referred = _referenced_ids(everything)
    last: dict[str, str] = {}
    count: collections.Counter[str] = collections.Counter()
    for r in everything:
        if r["resourceType"] == rtype:
            owner = str(patient_of(r))
            count[owner] += 1
            if r["id"] not in referred:
                last[owner] = r["id"]
    return {last[owner] for owner, _ in count.most_common(people)}


def _write(tmp: Path) -> tuple[list[Person], dict[str, Held]]:
    """Both sources' files; who each person is at each source and what each holds."""
    everything = _synthea()
    patients = [r for r in everything if r["resourceType"] == "Patient"]
    gp_id = {p["id"]: f"G{n}" for n, p in enumerate(patients)}
    held = {s: Held() for s in SOURCES}
    lines: dict[str, list[Json]] = {s: [] for s in SOURCES}
    for n, p in enumerate(patients):
        lines["acute"].append(p)
        copy = gp_copy(n, p)
        copy["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": _test_nhs_number(n)})
        lines["gp"].append(copy)
    id_less = {i for rtype, people in ID_LESS.values() for i in _id_less(everything, rtype, people)}
    for r in everything:
        rtype = r["resourceType"]
        if rtype in SHARED:
            lines["acute"].append(r)
            lines["gp"].append(json.loads(json.dumps(r)))
        elif rtype in AT_ACUTE:
            if r["id"] in id_less:
                del r["id"]  # a feed that leaves out the id
            lines["acute"].append(r)
        elif rtype in AT_GP:
            if r["id"] in id_less:
                del r["id"]
            for key in ("subject", "patient"):
                link = r.get(key)
                if isinstance(link, dict) and "reference" in link:
                    local = link["reference"].rsplit("/", 1)[-1]
                    link["reference"] = f"Patient/{gp_id[local]}"
            lines["gp"].append(r)
    assert len(id_less) == sum(n for _, n in ID_LESS.values())
    lines["acute"].append(ORPHAN)
    dirs = {s: tmp / s for s in SOURCES}
    for s, d in dirs.items():
        d.mkdir()
        f = d / f"{s}.ndjson"
        f.write_text("".join(json.dumps(r) + "\n" for r in lines[s]))
        for n, r in enumerate(lines[s], start=1):
            _hold(held[s], r, f"{f}:{n}")
    for name in UK_AT_ACUTE:
        _place_file(held["acute"], dirs["acute"], name)
    for name in UK_ORPHANS_AT_GP:
        _place_file(held["gp"], dirs["gp"], name)
    people = [Person({"acute": p["id"], "gp": gp_id[p["id"]]}) for p in patients]
    people.append(Person({"acute": RICHARD}))
    return people, held


def _place_file(held: Held, folder: Path, name: str) -> None:
    doc = _ukcore(name)
    f = folder / f"UKCore-{name}-Example.json"
    f.write_text(json.dumps(doc))
    if doc["resourceType"] != "Bundle":
        _hold(held, doc, str(f))
        return
    for i, e in enumerate(doc["entry"]):
        if "resource" not in e:
            held.requests.append(f"{f}#entry[{i}]")
            continue
        r = e["resource"]
        r.setdefault("id", e["fullUrl"].removeprefix("urn:uuid:").rsplit("/", 1)[-1])
        _hold(held, r, f"{f}#entry[{i}]")


def _hold(held: Held, r: Json, where: str) -> None:
    """Note where a resource belongs, independently of the loader (each source's
    Patients come first in its files)."""
    rtype = r["resourceType"]
    if rtype == "Patient":
        held.records.setdefault(r["id"], []).insert(0, r)
    elif rtype in SHARED:
        held.shared.append(r)
    else:
        owner = patient_of(r)
        if owner in held.records:
            held.records.setdefault(str(owner), []).append(r)
            if "id" not in r:
                held.id_less.append(where)
        else:
            held.orphans.append(where)


# ---------------------------------------------------------------------------- the system


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("whole")
    people, held = _write(tmp)
    # one person has 3,500 resources: completeness, not speed, is tested here
    with files_system({n: tmp / n for n in SOURCES}, tmp, {"CARELINK_BUDGET": "30"}) as fs:
        yield World(fs.base, people, held, fs.built.stdout, fs.logs)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def gateway_ids(world: World, client: httpx.Client) -> list[str]:
    """Each person's one gateway Patient id, found by their local id at each source."""
    out = []
    for person in world.people:
        found = set()
        for source, local in person.locals.items():
            got = client.get(
                f"{world.base}/Patient",
                params={"identifier": f"{LOCAL_ID_SYSTEM.format(name=source)}|{local}"},
            ).json()
            assert got["total"] == 1, (source, local)
            found.add(got["entry"][0]["resource"]["id"])
        assert len(found) == 1, person
        out.append(found.pop())
    assert len(set(out)) == len(out)  # and no two people share one
    return out


@pytest.fixture(scope="module")
def pages(world: World, gateway_ids: list[str], client: httpx.Client) -> dict[str, list[Json]]:
    """Every page of each person's ``$everything``, following ``next`` links."""
    out = {}
    for pid in gateway_ids:
        url: str | None = f"{world.base}/Patient/{pid}/$everything?_count={COUNT}"
        got: list[Json] = []
        while url:
            answer = client.get(url)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            got.append(page)
            url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
            assert len(got) < 500, "paging does not end"
        out[pid] = got
    return out


def _entries(pages: list[Json], mode: str) -> list[Json]:
    return [e for p in pages for e in p["entry"] if e["search"]["mode"] == mode]


# ---------------------------------------------------------------------------- expectations


def _shared_key(r: Json) -> tuple[str, str]:
    return r["resourceType"], r["id"]


def _target(ref: Json, pool: list[Json]) -> Json | None:
    """The shared resource a literal, conditional or logical reference names."""
    literal = ref.get("reference")
    if isinstance(literal, str):
        rtype, sep, query = literal.partition("?")
        if sep:
            system, _, value = query.removeprefix("identifier=").rpartition("|")
            ident: Json | None = {"system": system, "value": value}
        else:
            rtype, _, rid = literal.rpartition("/")
            return next((r for r in pool if _shared_key(r) == (rtype, rid)), None)
    else:
        rtype, ident = ref.get("type", ""), ref.get("identifier")
    if not isinstance(ident, dict):
        return None
    return next(
        (
            r
            for r in pool
            if (not rtype or r["resourceType"] == rtype)
            and any(
                i.get("value") == ident.get("value")
                and (not ident.get("system") or i.get("system") == ident.get("system"))
                for i in r.get("identifier", [])
            )
        ),
        None,
    )


def _expected(world: World, person: Person) -> collections.Counter[str]:
    """The gateway ids of everything the sources hold for the person (but what has no id),
    with the shared resources they refer to (directly or through each other) once each
    by their own id."""
    want: collections.Counter[str] = collections.Counter()
    pool: dict[tuple[str, str], Json] = {}
    for source, local in person.locals.items():
        held = world.held[source]
        record = held.records[local]
        for r in record:
            if "id" not in r:
                continue
            want[f"{r['resourceType']}/{namespaced_id(source, r['id'])}"] += 1
        todo, seen = list(record), set()
        while todo:
            for ref in references(todo.pop()):
                hit = _target(ref, held.shared)
                if hit is not None and _shared_key(hit) not in seen:
                    seen.add(_shared_key(hit))
                    pool[_shared_key(hit)] = hit
                    todo.append(hit)
    for rtype, rid in pool:
        want[f"{rtype}/{rid}"] += 1  # one copy, whichever source it came from
    return want


def _got(pages: list[Json]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for e in _entries(pages, "match"):
        r = e["resource"]
        rid = r["id"]
        if r["resourceType"] in SHARED:
            rid = re.sub(r"^(acute|gp)-", "", rid)
        out[f"{r['resourceType']}/{rid}"] += 1
    return out


# ---------------------------------------------------------------------------- the tests


def test_every_person_is_one_patient(world: World, gateway_ids: list[str], client: httpx.Client):
    assert f"index built: {len(world.people)} persons;" in world.built
    for person, pid in zip(world.people, gateway_ids, strict=True):
        patient = client.get(f"{world.base}/Patient/{pid}").json()
        assert problems(patient) == []
        assert sorted(lk["other"]["reference"] for lk in patient.get("link", [])) == sorted(
            f"Patient/{namespaced_id(s, local)}" for s, local in person.locals.items()
        )
        if "gp" in person.locals:
            assert {"system": GP_SYSTEM, "value": person.locals["gp"]} in patient["identifier"]
            pix = client.get(
                f"{world.base}/Patient/$ihe-pix",
                params={
                    "sourceIdentifier": f"{LOCAL_ID_SYSTEM.format(name='acute')}|"
                    f"{person.locals['acute']}"
                },
            ).json()
            values = {
                p["valueIdentifier"]["value"]: p["valueIdentifier"]["system"]
                for p in pix["parameter"]
                if p["name"] == "targetIdentifier"
            }
            assert values == {
                person.locals["gp"]: LOCAL_ID_SYSTEM.format(name="gp"),
                _test_nhs_number(int(person.locals["gp"][1:])): NHS_NUMBER_SYSTEM,
            }
            target = next(p for p in pix["parameter"] if p["name"] == "targetId")
            assert target["valueReference"]["reference"] == f"Patient/{pid}"


def test_richard_smith_held_at_one_source_is_his_own_person(
    world: World, gateway_ids: list[str], client: httpx.Client
):
    pid = gateway_ids[-1]
    assert world.people[-1].locals == {"acute": RICHARD}
    patient = client.get(f"{world.base}/Patient/{pid}").json()
    assert patient["name"][0]["family"] == _ukcore("Patient-RichardSmith")["name"][0]["family"]
    assert not [i for i in patient.get("identifier", []) if i["system"] == NHS_NUMBER_SYSTEM]


def test_everything_returns_every_resource_of_every_person_exactly_once(
    world: World, gateway_ids: list[str], pages: dict[str, list[Json]]
):
    for person, pid in zip(world.people, gateway_ids, strict=True):
        want = _expected(world, person)
        want[f"Patient/{pid}"] += 1  # the merged Patient
        got = _got(pages[pid])
        assert got - want == collections.Counter(), (person, "unexpected or repeated")
        assert want - got == collections.Counter(), (person, "missing")
        # one Provenance per source, as an include of the first page only
        included = [
            (n, e["resource"]["resourceType"])
            for n, p in enumerate(pages[pid])
            for e in p["entry"]
            if e["search"]["mode"] == "include"
        ]
        assert included == [(0, "Provenance")] * len(person.locals), person
        total = {p["total"] for p in pages[pid]}
        assert total == {sum(want.values())}, person
        assert len(pages[pid]) == -(-sum(want.values()) // COUNT)  # pages of _count each


def test_paging_is_exercised(pages: dict[str, list[Json]]):
    assert max(len(p) for p in pages.values()) > 10


def test_resources_without_an_id_are_left_out_and_named(
    world: World, gateway_ids: list[str], pages: dict[str, list[Json]]
):
    """Each page's OperationOutcome has, for each source that sent the person something
    without an id, one issue counting and naming those entries (by their place in the
    source's answer: the Patient first, then the record in file order)."""
    named: collections.Counter[str] = collections.Counter()
    furthest = 0
    for person, pid in zip(world.people, gateway_ids, strict=True):
        expected = {}
        for source, local in person.locals.items():
            record = world.held[source].records[local]
            furthest = max([furthest, *(n for n, r in enumerate(record) if "id" not in r)])
            where = [
                f"{r['resourceType']} entry {n}: no id"
                for n, r in enumerate(record)
                if "id" not in r
            ]
            if where:
                expected[source] = (
                    f"source {source} left out {len(where)} unreadable resources: "
                    + "; ".join(where)
                )
                named[source] += len(where)
        for page in pages[pid]:
            (outcome,) = [e["resource"] for e in _entries([page], "outcome")]
            skipped = {
                ext["valueString"]: i["diagnostics"]
                for i in outcome["issue"]
                if i.get("details", {}).get("coding", [{}])[0].get("system") == PROBLEM_SYSTEM
                for ext in i["extension"]
                if ext["url"] == EXT_SOURCE
            }
            assert skipped == expected, person
    assert named == {source: n for source, (_, n) in ID_LESS.items()}
    assert furthest > 1000  # past the first page of 1000 the gateway asks the hospital for


def test_every_reference_resolves_in_the_pages_or_by_a_read(
    world: World, pages: dict[str, list[Json]], client: httpx.Client
):
    asked: dict[str, bool] = {}

    def readable(ref: str) -> bool:
        if ref not in asked:
            asked[ref] = client.get(f"{world.base}/{ref}").status_code == 200
        return asked[ref]

    total = 0
    for got in pages.values():
        bundle = {"entry": [e for p in got for e in p["entry"] if e["search"]["mode"] != "outcome"]}
        assert unresolved(bundle, readable) == []
        assert {t for t, _ in logical_only(bundle)} == {"Provenance"}
        total += sum(1 for e in bundle["entry"] for _ in references(e["resource"]))
    assert total > 10_000


def test_every_resource_is_valid_r4(pages: dict[str, list[Json]]):
    for got in pages.values():
        for page in got:
            assert problems(page) == []


def test_orphans_are_reported_by_the_loader_not_lost(world: World):
    for source in SOURCES:
        log = world.logs[source].read_text()
        orphans = world.held[source].orphans
        assert orphans, source
        requests = world.held[source].requests
        summary = next(line for line in log.splitlines() if "carelink simulate:" in line)
        assert summary.endswith(f"{len(orphans) + len(requests)} skipped"), summary
        for where in requests:
            assert f"  {where}: entry without a resource (a request only)\n" in log
        for where in orphans:
            assert f"  {where}: Observation refers to a Patient not in the data\n" in log
        assert f"{len(world.held[source].id_less)} served without an id;" in summary
        for where in world.held[source].id_less:
            assert f"  {where}: {ID_LESS[source][0]} without an id: served as given\n" in log


def test_ordinary_clients_read_the_record(world: World, gateway_ids: list[str]):
    pid = gateway_ids[-1]  # Richard Smith: UK Core data end to end
    fhir = SyncFHIRClient(world.base)
    bundle = fhir.resource("Patient", id=pid).execute(
        "$everything", method="get", params={"_count": COUNT}
    )
    allergy = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "AllergyIntolerance" and "encounter" in e["resource"]
    )
    as_resource = fhir.resource("AllergyIntolerance", **allergy)
    encounter = as_resource["encounter"].to_resource()
    assert encounter["resourceType"] == "Encounter"
    assert encounter["id"] == namespaced_id("acute", "UKCore-Encounter-InpatientEncounter-Example")
    smart = smart_client.FHIRClient(settings={"app_id": "carelink-tests", "api_base": world.base})
    read = AllergyIntolerance.read(allergy["id"], smart.server)
    assert read.patient.reference == f"Patient/{pid}"
    assert read.encounter.reference == f"Encounter/{encounter['id']}"


def test_every_entry_reads_back_by_its_full_url(
    world: World, gateway_ids: list[str], pages: dict[str, list[Json]], client: httpx.Client
):
    """Resolving by a read works for every kind of entry: Richard Smith's (UK Core ids,
    one too long to keep, Bundle entries known only by fullUrl, a shared Medication) and
    the smallest Synthea record's (shared resources, the other source's Patient)."""
    smallest = min(gateway_ids[:-1], key=lambda pid: pages[pid][0]["total"])
    for pid in (gateway_ids[-1], smallest):
        for e in _entries(pages[pid], "match") + _entries(pages[pid], "include"):
            got = client.get(e["fullUrl"])
            assert got.status_code == 200, (e["fullUrl"], got.text)
            read = got.json()
            assert (read["resourceType"], read["id"]) == (
                e["resource"]["resourceType"],
                e["resource"]["id"],
            )
