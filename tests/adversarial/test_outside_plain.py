"""The plain-person search shortcut under attack with Patients we did not make.

Invariant (``test_plain_search``'s, over outside data): a search answers every caller,
byte for byte and with the same audit events, whether the index marks its people plain
(``PersonRow.plain``: shown as their stored bytes, never parsed) or marks nobody plain
(every person parsed and decided about); and ``plain`` is, for every person at every
moment, what ``federation.index.is_plain`` says of the Patient stored beside it, also
after the change feed brought a Patient that gained or lost a label.

The people are the vendored Synthea export's, held by a FHIR source over real HTTP,
with most Patients swapped for outside ones (UK Core examples, a GP Connect example's
Patient) and some worked harder: a confidentiality code on an extension only, a
contained resource with a sensitivity label, a sensitive SNOMED code deep in an
extension, names in edge Unicode, ``meta.security`` at the top (a label the policy
knows, one it does not, an empty list), a coded element a Patient has no business
holding. Several share a family name and birth date, so one page mixes plain people
with people who are not.
"""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.index import is_plain
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.settings import Settings
from carelink.storage.audit_store import CHAIN
from tests.adversarial.test_plain_search import FORMS as PLAIN_FORMS
from tests.adversarial.test_plain_search import _query as plain_query
from tests.support.changing_fhir import ChangingFhir, built_env
from tests.support.consents import privacy_consent, sent_consent
from tests.support.gateways import copy_index, token_gateways
from tests.support.objections import Gateway, same_answers
from tests.support.procs import carelink
from tests.support.servers import run_app
from tests.support.shared import DATA, SYNTHEA, UKCORE_EXAMPLES
from tests.support.tokens import Issuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present"),
]

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SCT = "http://snomed.info/sct"
PSY = {"system": ACT, "code": "PSY"}
RESTRICTED = {"system": CONF, "code": "R"}
HIV_CODE = {"system": SCT, "code": "86406008"}  # the shipped policy's HIV category by code
#: the family name and birth date the clones of the UK Core example share
SMITH, BORN = "SMITH", "1970-09-11"


def _ukcore(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((UKCORE_EXAMPLES / f"UKCore-Patient-{name}.json").read_text())
    return data


def _gp_connect_patient() -> dict[str, Any]:
    """The Patient of a published GP Connect structured record (STU3, as GP systems send)."""
    bundle = json.loads((DATA / "gpconnect/responses/allergies_response1.json").read_text())
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )


def _smith(**more: Any) -> dict[str, Any]:
    """The UK Core Richard Smith example, with ``more`` worked in."""
    patient = _ukcore("RichardSmith-Example")
    for key, value in more.items():
        if key == "extension":
            patient["extension"] = [*patient.get("extension", []), *value]
        else:
            patient[key] = value
    return patient


def _named(patient: dict[str, Any], family: str, given: str, born: str) -> dict[str, Any]:
    patient["name"] = [{"family": family, "given": [given]}, *patient.get("name", [])]
    patient["birthDate"] = born
    return patient


#: name -> (the Patient the source holds, whether the index is to hold them plain)
VARIANTS: dict[str, tuple[dict[str, Any] | None, bool]] = {
    "synthea": (None, True),  # the export's own Patient
    "ukcore": (_smith(), True),
    "ukcore-baby": (_ukcore("BabyPatient-Example"), True),  # _birthDate's birth time
    "ukcore-photo": (_named(_ukcore("Sn-Photo-Example"), "Foto", "Ann", "1980-01-02"), True),
    "gp-connect": (_gp_connect_patient(), True),
    "label-on-extension": (
        _smith(
            extension=[{"url": "https://example.org/confidentiality", "valueCoding": RESTRICTED}]
        ),
        True,
    ),
    "labelled-contained": (
        _smith(
            contained=[
                {
                    "resourceType": "Organization",
                    "id": "clinic",
                    "meta": {"security": [PSY]},
                    "name": "Sexual health clinic",
                }
            ]
        ),
        True,
    ),
    "code-deep-in-extension": (
        _smith(
            extension=[
                {
                    "url": "https://example.org/history",
                    "extension": [
                        {"url": "condition", "valueCodeableConcept": {"coding": [HIV_CODE]}}
                    ],
                }
            ]
        ),
        True,
    ),
    "unicode": (_named({"resourceType": "Patient"}, "O\u0301 Briain-Strauß", "Ǆurić", BORN), True),
    "code-on-patient": (_smith(code={"coding": [HIV_CODE]}), True),  # not a Patient element
    "restricted": (_smith(meta={"security": [RESTRICTED]}), False),
    "psy": (_smith(meta={"security": [PSY]}), False),
    "empty-security": (_smith(meta={"security": []}), True),  # an empty list is no label
}
CALLERS = ["clinician", "psy-less", "stranger", "officer", "secondary", "own", "other"]
SCOPES = ["user/*.rs", "user/Patient.rs", "user/Patient.rs?gender=female", "user/Condition.rs"]
FORMS = [*PLAIN_FORMS, "elements+meta", "id", "lookup"]


@dataclass
class Rig:
    source: ChangingFhir
    gateway: Gateway
    env: dict[str, str]
    db: Path
    locals: dict[str, str]  # variant -> local id at the source
    pids: dict[str, str]  # variant -> person id
    objected: set[str]
    served: dict[str, str]  # the gateway's own settings (its audit keys, checkpoints)

    def rows(self) -> dict[str, tuple[int, bytes]]:
        """Each person's ``plain`` and stored Patient, by id."""
        with sqlite3.connect(self.db, timeout=30) as conn:
            return {
                i: (int(p), bytes(b))
                for i, p, b in conn.execute("SELECT id, plain, patient FROM persons")
            }

    def set_plain(self, flags: list[tuple[int, str]]) -> None:
        with sqlite3.connect(self.db, timeout=30) as conn:
            conn.executemany("UPDATE persons SET plain = ? WHERE id = ?", flags)

    def update(self) -> None:
        done = carelink(["index", "update"], self.env)
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("outside-plain")
    source = ChangingFhir(SYNTHEA, len(VARIANTS))
    locals_ = dict(zip(VARIANTS, source.records, strict=False))
    assert len(locals_) == len(VARIANTS), "the Synthea sample holds too few people"
    numbers = iter(_nhs_numbers())
    for variant, local in locals_.items():
        patient, _ = VARIANTS[variant]
        if patient is not None:
            source.records[local][0] = {**copy.deepcopy(patient), "id": local}
        for ident in source.records[local][0].get("identifier", []):
            if ident.get("system") == NHS_NUMBER_SYSTEM:  # each clone a person of their own
                ident["value"] = next(numbers)
    db = tmp / "index.db"
    with ExitStack() as stack:
        url = stack.enter_context(run_app(source.app))
        env = built_env(str(db), f"acute={url}")
        built = carelink(["index", "build"], env)
        assert built.returncode == 0, built.stderr[-2000:]
        issuer = Issuer()
        (started,) = stack.enter_context(token_gateways(env, db, issuer, tmp))
        gateway = Gateway(started.base, issuer, [], db)
        stack.callback(gateway.close)
        with sqlite3.connect(db) as conn:
            linked = dict(conn.execute("SELECT local_id, person_id FROM person_links"))
        pids = {v: linked[local] for v, local in locals_.items()}
        yield Rig(source, gateway, env, db, locals_, pids, set(), started.env)


def _nhs_numbers() -> Iterator[str]:
    """Valid NHS numbers (check digit right) in a range no other test data uses."""
    for n in range(943476600, 943477600):
        digit = check_digit(str(n))
        if digit is not None:
            yield f"{n}{digit}"


def _demographics(rig: Rig, variant: str) -> tuple[str, str, str, str | None]:
    """Family, given, birth date and NHS number as the index holds the person."""
    patient = orjson.loads(rig.rows()[rig.pids[variant]][1])
    name = patient["name"][0]
    nhs = next(
        (i["value"] for i in patient.get("identifier", []) if i.get("system") == NHS_NUMBER_SYSTEM),
        None,
    )
    return name["family"], (name.get("given") or ["x"])[0], patient["birthDate"], nhs


def _query(rig: Rig, form: str, variant: str) -> dict[str, Any]:
    """``test_plain_search``'s search forms, and three of this test's own: the labels
    asked for by ``_elements``, every person by ``_id``, the person by identifier."""
    family, given, born, nhs = _demographics(rig, variant)
    if form == "elements+meta":
        return {"family": family[:1], "birthdate": born, "_elements": "name,meta"}
    if form == "id":
        return {"_id": ",".join(rig.pids.values())}
    if form == "lookup":
        if nhs:
            return {"identifier": f"{NHS_NUMBER_SYSTEM}|{nhs}"}
        return {"identifier": f"https://carelink.example/Id/acute|{rig.locals[variant]}"}
    return plain_query(form, family, given, born)


def _claims(rig: Rig, who: str, scope: str, person: str, other: str) -> dict[str, Any]:
    claims: dict[str, Any] = {"scope": scope, "organisation": "RAC00"}
    if who == "psy-less":
        claims.update(role="R8004")
    elif who == "stranger":
        claims.update(organisation=None)
    elif who == "officer":
        claims.update(role="R0001", sub="privacy-officer-1")
    elif who == "secondary":
        claims.update(purpose_of_use="HRESCH")
    elif who in ("own", "other"):
        owner = person if who == "own" else other
        claims.update(
            patient=rig.pids[owner],
            scope=scope.replace("user/", "patient/"),
            role=None,
            organisation=None,
        )
    return claims


def _object(rig: Rig, variant: str) -> None:
    if variant in rig.objected:
        return
    officer = rig.gateway.token(role="R0001", sub="privacy-officer-1")
    consent = privacy_consent(rig.pids[variant], {"type": "deny"})
    made = sent_consent(rig.gateway.base, officer, consent)
    assert made.status_code == 201, made.text
    rig.objected.add(variant)


def _both_ways(rig: Rig, claims: dict[str, Any], params: dict[str, Any]) -> None:
    """The search asked with the index as it is and with nobody plain: the same answer."""
    token = rig.gateway.token(**claims)
    built = [(p, i) for i, (p, _) in rig.rows().items()]
    answers = []
    for flags in (built, [(0, i) for _, i in built]):
        try:
            rig.set_plain(flags)
            answers.append(
                rig.gateway.asked("/Patient", {"Authorization": f"Bearer {token}"}, params)
            )
        finally:
            rig.set_plain(built)
    same_answers(answers[0], answers[1])


def _plain_as_stored(rig: Rig) -> dict[str, int]:
    """Every row's ``plain`` is ``is_plain`` of its stored Patient; by variant."""
    rows = rig.rows()
    for pid, (plain, body) in rows.items():
        assert plain == is_plain(pid, orjson.loads(body)), pid
    return {v: rows[pid][0] for v, pid in rig.pids.items()}


def test_the_outside_people_are_plain_exactly_when_unmarked(rig: Rig) -> None:
    """The comparison below means something: the index holds plain people, and those
    whose Patient carries a top-level label are not."""
    plain = _plain_as_stored(rig)
    assert plain == {v: int(expected) for v, (_, expected) in VARIANTS.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    who=st.sampled_from(CALLERS),
    scope=st.sampled_from(SCOPES),
    variant=st.sampled_from(sorted(VARIANTS)),
    other=st.sampled_from(sorted(VARIANTS)),
    objection=st.booleans(),
    form=st.sampled_from(FORMS),
)
def test_an_outside_person_is_shown_and_audited_as_the_full_path_shows_them(
    rig: Rig, who: str, scope: str, variant: str, other: str, objection: bool, form: str
) -> None:
    if objection:
        _object(rig, variant)
    claims = _claims(rig, who, scope, variant, other)
    _both_ways(rig, claims, _query(rig, form, variant))


def _relabelled(rig: Rig, variant: str, security: list[dict[str, str]] | None) -> None:
    """The source's Patient of ``variant`` with ``security`` as its labels (None: none)."""
    patient = rig.source.records[rig.locals[variant]][0]
    meta = {k: v for k, v in patient.get("meta", {}).items() if k != "security"}
    if security is not None:
        meta["security"] = security
    patient["meta"] = {**meta, "lastUpdated": "2026-12-02T10:00:00Z"}


@pytest.mark.parametrize(
    ("variant", "security", "plain"),
    [
        ("ukcore", [PSY], 0),  # a sensitivity label comes after the person was indexed
        ("unicode", [RESTRICTED], 0),  # a confidentiality code comes later
        ("psy", None, 1),  # a label is taken away
    ],
)
def test_a_label_that_comes_or_goes_through_the_change_feed_is_seen(
    rig: Rig, variant: str, security: list[dict[str, str]] | None, plain: int
) -> None:
    _relabelled(rig, variant, security)
    rig.update()
    assert _plain_as_stored(rig)[variant] == plain
    stored = orjson.loads(rig.rows()[rig.pids[variant]][1])
    assert stored.get("meta", {}).get("security") == security
    for who in ("clinician", "psy-less", "own"):
        for form in ("day", "lookup"):
            claims = _claims(rig, who, "user/*.rs", variant, variant)
            _both_ways(rig, claims, _query(rig, form, variant))


def test_the_trail_the_outside_people_left_verifies_and_an_event_moved_is_named(
    rig: Rig, tmp_path: Path
) -> None:
    """Invariant: the audit trail holds every request about the outside people (names in
    edge Unicode, ids and labels we did not make) as rows that verify under the scheme
    they were written with, and an event moved from one of them to another is named.
    Run last in the module, over the trail every test before it left."""
    token = rig.gateway.token()
    for pid in rig.pids.values():  # an event about each of them, whatever ran before
        read = httpx.get(
            f"{rig.gateway.base}/Patient/{pid}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert read.status_code in (200, 403, 404), read.text
    copy = copy_index(str(rig.db), tmp_path / "trail.db")
    about = set(rig.pids.values())
    with sqlite3.connect(copy) as conn:
        rows = conn.execute("SELECT seq, patient_id, chain FROM audit_events").fetchall()
    theirs = [(seq, patient) for seq, patient, _ in rows if patient in about]
    assert {patient for _, patient in theirs} == about, "a person's requests left no event"
    assert {chain for *_, chain in rows} == {CHAIN}
    keys, points = Settings.from_env(rig.served).audit_paths()  # the gateway's own
    env = {
        **rig.served,
        "CARELINK_DATABASE_URL": str(copy),
        "CARELINK_AUDIT_KEYS": str(keys),
        "CARELINK_AUDIT_CHECKPOINTS": str(points),
    }
    ok = carelink(["audit", "verify"], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    seq, patient = theirs[len(theirs) // 2]
    other = sorted(about - {patient})[0]
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE audit_events SET patient_id = ? WHERE seq = ?", (other, seq))
    moved = carelink(["audit", "verify"], env)
    assert moved.returncode == 5, moved.stdout + moved.stderr
    assert "patient_id differs from its event (edited)" in moved.stdout
    assert f"{seq}" in moved.stdout
