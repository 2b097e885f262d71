"""Every reference in a shared record resolves: in the Bundle, or by a read at the gateway.

The vendored Synthea export is split between two sources, as a person's
record is in life: the hospital (acute) holds the Patient, the Encounters and
what happened in them; the GP holds the Conditions, medicines, allergies and
immunisations, which refer to the hospital's Encounters. Both serve the
practitioners, organisations and locations they refer to (conditionally, by
identifier, as Synthea writes them).
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from fhirclient import client as smart_client
from fhirclient.models.condition import Condition
from fhirclient.models.encounter import Encounter
from fhirpy import SyncFHIRClient

from carelink.audit.events import REFUSED
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.support.consents import privacy_consent
from tests.support.files_system import files_system
from tests.support.gateways import copy_index, token_gateways
from tests.support.references import logical_only, unresolved
from tests.support.shared import SYNTHEA
from tests.support.tokens import Issuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present"),
]

SHARED = ("Practitioner", "PractitionerRole", "Organization", "Location")
AT_ACUTE = ("Patient", "Encounter", "Procedure", "DocumentReference", "Device", *SHARED)
AT_GP = (
    "Patient",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
    *SHARED,
)
#: the people checked reference by reference (each $everything is a few thousand references)
PEOPLE = 3


@dataclass(frozen=True)
class Split:
    base: str  # gateway FHIR base
    people: list[str]  # gateway Patient ids of the people known at both sources
    env: dict[str, str]  # the gateway's environment


def _nhs_numbers() -> Iterator[str]:
    """Valid NHS numbers from the 999 test range."""
    for n in range(1_000_000):
        first = f"999{n:06d}"
        digit = check_digit(first)
        if digit is not None:
            yield f"{first}{digit}"


def _copy(types: tuple[str, ...], to: Path) -> Path:
    """The export's files of ``types``; each Patient given an NHS number (as both sources of
    an English person's record would know it, and Synthea, being American, does not)."""
    to.mkdir()
    for f in SYNTHEA.glob("*.ndjson"):
        if f.name.split(".")[0] not in types:
            continue
        if not f.name.startswith("Patient."):
            shutil.copy(f, to / f.name)
            continue
        lines = []
        for line, nhs in zip(f.read_text().splitlines(), _nhs_numbers(), strict=False):
            patient = json.loads(line)
            patient["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
            lines.append(json.dumps(patient))
        (to / f.name).write_text("\n".join(lines) + "\n")
    return to


def _synthea_ids() -> list[str]:
    lines = next(SYNTHEA.glob("Patient.*.ndjson")).read_text().splitlines()
    return [json.loads(line)["id"] for line in lines]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    tmp = tmp_path_factory.mktemp("split")
    data = {name: _copy(types, tmp / name) for name, types in (("acute", AT_ACUTE), ("gp", AT_GP))}
    with files_system(data, tmp, {"CARELINK_BUDGET": "20"}) as fs:
        base, env = fs.base, fs.env
        people = []
        with httpx.Client(timeout=60) as client:
            for local in _synthea_ids():
                found = client.get(
                    f"{base}/Patient",
                    params={"identifier": f"https://carelink.example/Id/acute|{local}"},
                ).json()
                assert found["total"] == 1, local
                people.append(found["entry"][0]["resource"]["id"])
        yield Split(base, people, env)


def _everything(client: httpx.Client, base: str, pid: str) -> dict:
    """The person's $everything, its pages' entries in one Bundle."""
    url: str | None = f"{base}/Patient/{pid}/$everything?_count=1000"
    entries: list[dict] = []
    while url:
        got = client.get(url)
        assert got.status_code == 200, got.text
        page = got.json()
        entries += [e for e in page["entry"] if e["search"]["mode"] != "outcome" or not entries]
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


@pytest.fixture(scope="module")
def bundles(split: Split) -> dict[str, dict]:
    """The first few people's $everything, by gateway Patient id."""
    with httpx.Client(timeout=60) as client:
        return {pid: _everything(client, split.base, pid) for pid in split.people[:PEOPLE]}


def count_unresolved(base: str, bundles: dict[str, dict]) -> tuple[int, list[str]]:
    """(references, unresolved references) over the people's $everything."""
    total = 0
    bad: list[str] = []
    with httpx.Client(timeout=60) as client:

        def readable(ref: str) -> bool:
            return client.get(f"{base}/{ref}").status_code == 200

        for bundle in bundles.values():
            bad += unresolved(bundle, readable)
            total += sum(1 for _ in _refs(bundle))
    return total, bad


def _refs(bundle: dict) -> Iterator[str]:
    for e in bundle["entry"]:
        yield from (
            r["reference"] for r in _walk(e["resource"]) if isinstance(r.get("reference"), str)
        )


def _walk(value: object) -> Iterator[dict]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_every_reference_in_everything_resolves(split: Split, bundles: dict[str, dict]):
    total, bad = count_unresolved(split.base, bundles)
    print(f"references: {total}, unresolved: {len(bad)}")  # before/after number, seen with -s
    assert total > 1000
    assert bad == [], collections.Counter(r.split("/")[0].split("?")[0] for r in bad)


def test_only_provenance_keeps_logical_references(bundles: dict[str, dict]):
    """Identifier-only references are given the literal reference of the match in the Bundle;
    what stays logical is Provenance naming the source system and its data version."""
    for bundle in bundles.values():
        left = logical_only(bundle)
        assert left
        assert {t for t, _ in left} == {"Provenance"}


def test_gp_condition_points_at_the_acute_encounter(split: Split, bundles: dict[str, dict]):
    bundle = bundles[split.people[0]]
    with httpx.Client(timeout=60) as client:
        held = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        conditions = [
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Condition" and "encounter" in e["resource"]
        ]
        assert conditions
        for c in conditions:
            assert c["id"].startswith("gp-")
            ref = c["encounter"]["reference"]
            assert ref.startswith("Encounter/acute-"), ref
            assert ref in held
        read = client.get(f"{split.base}/{conditions[0]['encounter']['reference']}")
        assert read.status_code == 200
        assert read.json()["meta"]["source"] == "urn:carelink:source:acute"


def test_conditional_references_become_literal(split: Split, bundles: dict[str, dict]):
    refs = list(_refs(bundles[split.people[0]]))
    assert not [r for r in refs if "?" in r]
    assert any(r.startswith("Practitioner/") for r in refs)
    assert any(r.startswith("Location/") for r in refs)


def _smallest(bundles: dict[str, dict]) -> tuple[str, dict]:
    pid = min(bundles, key=lambda p: len(bundles[p]["entry"]))
    return pid, bundles[pid]


def test_every_full_url_reads_back_its_entry(bundles: dict[str, dict]):
    """Each entry's fullUrl is a read of the same resource: compartment resources, the
    shared ones (Practitioner, Location ...) and Provenance alike."""
    _, bundle = _smallest(bundles)
    types = set()
    with httpx.Client(timeout=60) as client:
        for e in bundle["entry"]:
            resource = e["resource"]
            if e["search"]["mode"] == "outcome":
                assert "fullUrl" not in e
                continue
            got = client.get(e["fullUrl"])
            assert got.status_code == 200, (e["fullUrl"], got.text)
            assert got.headers["content-type"].startswith("application/fhir+json")
            assert (got.json()["resourceType"], got.json()["id"]) == (
                resource["resourceType"],
                resource["id"],
            )
            types.add(resource["resourceType"])
    assert {"Encounter", "Condition", "Practitioner", "Location", "Provenance"} <= types


@pytest.mark.parametrize(
    "path", ["Encounter/acute-no-such", "Practitioner/acute-no-such", "Practitioner/x", "Nope/1"]
)
def test_an_unknown_id_is_not_found(split: Split, path: str):
    got = httpx.get(f"{split.base}/{path}", timeout=30)
    assert got.status_code == 404
    assert got.json()["issue"][0]["code"] == "not-found"


def test_compartment_search_is_the_type_search(split: Split):
    pid = split.people[0]
    with httpx.Client(timeout=60) as client:
        nested = client.get(f"{split.base}/Patient/{pid}/Condition", params={"_count": 1000})
        flat = client.get(f"{split.base}/Condition", params={"patient": pid, "_count": 1000})
        other = client.get(f"{split.base}/Patient/{pid}")
        everything = client.get(f"{split.base}/Patient/{pid}/$everything", params={"_count": 1})
    assert nested.status_code == flat.status_code == 200
    ids = [e["resource"]["id"] for e in nested.json()["entry"] if e["search"]["mode"] == "match"]
    assert ids
    assert ids == [
        e["resource"]["id"] for e in flat.json()["entry"] if e["search"]["mode"] != "outcome"
    ]
    # the routes before it keep their endpoints
    assert other.json()["resourceType"] == "Patient"
    assert everything.json()["resourceType"] == "Bundle"


def _first(bundle: dict, rtype: str, source: str) -> dict:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == rtype
        and e["resource"]["id"].startswith(f"{source}-")
        and (rtype != "Condition" or "encounter" in e["resource"])
    )


def test_fhirpy_follows_references_to_another_source_and_to_a_practitioner(
    split: Split, bundles: dict[str, dict]
):
    condition = _first(bundles[split.people[0]], "Condition", "gp")
    fhir = SyncFHIRClient(split.base)
    read = fhir.reference("Condition", condition["id"]).to_resource()
    encounter = read["encounter"].to_resource()
    assert encounter["resourceType"] == "Encounter"
    assert encounter["meta"]["source"] == "urn:carelink:source:acute"
    doctor = encounter["participant"][0]["individual"].to_resource()
    assert doctor["resourceType"] == "Practitioner"
    assert doctor["name"]


def test_fhirclient_resolves_a_reference_to_another_source(split: Split, bundles: dict[str, dict]):
    condition = _first(bundles[split.people[0]], "Condition", "gp")
    smart = smart_client.FHIRClient(settings={"app_id": "carelink-tests", "api_base": split.base})
    read = Condition.read(condition["id"], smart.server)
    encounter = read.encounter.resolved(Encounter)
    assert isinstance(encounter, Encounter)
    assert encounter.id == condition["encounter"]["reference"].split("/")[1]


JS = Path(__file__).resolve().parents[1] / "js"


@pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules" / "fhir-kit-client").exists(),
    reason="fhir-kit-client (JavaScript) not installed: npm ci --prefix tests/js",
)
def test_fhir_kit_client_resolves_a_reference_to_another_source(
    split: Split, bundles: dict[str, dict]
):
    condition = _first(bundles[split.people[0]], "Condition", "gp")
    ran = subprocess.run(
        [
            "node",
            str(JS / "follow_reference.mjs"),
            split.base,
            "Condition",
            condition["id"],
            "encounter",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    target = json.loads(ran.stdout)
    assert f"Encounter/{target['id']}" == condition["encounter"]["reference"]
    assert target["meta"]["source"] == "urn:carelink:source:acute"


@pytest.fixture(scope="module")
def secured(
    split: Split, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Issuer, str]]:
    """A token-mode gateway on a copy of the index, so its Consents stay its own."""
    tmp = tmp_path_factory.mktemp("refs-consent")
    db = copy_index(split.env["CARELINK_DATABASE_URL"], tmp / "consent.db")
    issuer = Issuer()
    with token_gateways(split.env, db, issuer, tmp) as started:
        yield started[0].base, issuer, str(db)


def test_a_read_consent_withholds_is_not_found_like_an_unknown_one_and_audited(
    split: Split, secured: tuple[str, Issuer, str]
):
    base, issuer, db = secured
    pid = split.people[0]
    stranger = {"Authorization": f"Bearer {issuer.token(aud=base, organisation='RXX01')}"}
    manager = {
        "Authorization": f"Bearer {issuer.token(aud=base, scope='user/*.cruds', role='R0001')}",
        "Content-Type": "application/fhir+json",
    }
    with httpx.Client(timeout=60) as client:
        got = client.get(
            f"{base}/Patient/{pid}/$everything", params={"_count": 1000}, headers=stranger
        )
        encounter = _first(got.json(), "Encounter", "acute")["id"]
        condition = _first(got.json(), "Condition", "gp")["id"]
        assert client.get(f"{base}/Encounter/{encounter}", headers=stranger).status_code == 200
        # the patient withholds one Encounter
        deny = {
            "type": "deny",
            "data": [{"meaning": "instance", "reference": {"reference": f"Encounter/{encounter}"}}],
        }
        consent = privacy_consent(pid, {"type": "permit", "provision": [deny]})
        stored = client.post(f"{base}/Consent", content=orjson.dumps(consent), headers=manager)
        assert stored.status_code == 201, stored.text
        audit = AuditStore(Database(db))
        start, _ = audit.head()
        withheld = client.get(f"{base}/Encounter/{encounter}", headers=stranger)
        unknown = client.get(f"{base}/Encounter/acute-no-such", headers=stranger)
        allowed = client.get(f"{base}/Condition/{condition}", headers=stranger)
    assert withheld.status_code == unknown.status_code == 404
    assert withheld.json()["issue"][0]["diagnostics"] == f"Encounter/{encounter} is not known"
    assert unknown.json()["issue"][0]["diagnostics"] == "Encounter/acute-no-such is not known"
    assert allowed.status_code == 200
    events = [orjson.loads(r.event) for r in audit.rows() if r.seq > start]
    refused = [e for e in events if e["outcome"] == REFUSED]
    assert len(refused) == 2  # every request is audited, the unknown one too
    assert refused[0]["outcomeDesc"] == "withheld by consent"
    assert {"reference": f"Patient/{pid}"} in [x.get("what") for x in refused[0]["entity"]]
    assert refused[1]["outcomeDesc"] == "Encounter/acute-no-such is not known"
    assert not [x for x in refused[1]["entity"] if "Patient/" in str(x.get("what"))]
    assert [e["outcome"] for e in events if e not in refused] == ["0"]  # the allowed read


def test_a_search_settles_references_to_types_it_did_not_ask_for(split: Split):
    """A person the gateway has not federated before: the Conditions' Encounters are asked
    for in a second round, so the search still points at the acute Encounters."""
    pid = split.people[PEOPLE]  # nobody else in this module reads this person's record
    got = httpx.get(f"{split.base}/Condition", params={"patient": pid, "_count": 1000}, timeout=60)
    conditions = [e["resource"] for e in got.json()["entry"] if e["search"]["mode"] == "match"]
    refs = [c["encounter"]["reference"] for c in conditions if "encounter" in c]
    assert refs
    assert all(r.startswith("Encounter/acute-") for r in refs), refs


def test_reads_keep_to_the_token_scopes_and_a_patients_own_compartment(
    split: Split, bundles: dict[str, dict], secured: tuple[str, Issuer, str]
):
    base, issuer, _ = secured
    bundle = bundles[split.people[0]]
    condition = _first(bundle, "Condition", "gp")["id"]
    doctor = _first(bundle, "Practitioner", "acute")["id"]

    def read(path: str, **claims: str) -> int:
        token = issuer.token(aud=base, **claims)
        got = httpx.get(f"{base}/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        return got.status_code

    conditions_only = {"scope": "user/Condition.rs"}
    assert read(f"Condition/{condition}", **conditions_only) == 200
    assert read(f"Practitioner/{doctor}", **conditions_only) == 403
    assert read(f"Practitioner/{doctor}", scope="user/Practitioner.r") == 200
    own = {"scope": "patient/*.rs", "patient": split.people[0]}
    other = {"scope": "patient/*.rs", "patient": split.people[1]}
    assert read(f"Condition/{condition}", **own) == 200
    assert read(f"Condition/{condition}", **other) == 404  # not 403: no existence oracle
