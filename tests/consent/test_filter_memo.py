"""``Guard.filter`` with its memo answers exactly what deciding every resource afresh does.

The invariant: for any sequence of requests (callers, patients, Consents, break-glass
grants given and expiring, the same or other resource objects), a guard that reuses
its answers for the very same resources gives, on every call, the answer of a guard
that decides each resource anew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.consent import Actor, Engine, Filtered, FilterMemo, Guard
from carelink.consent.directive import CONSENT_SCOPE, ODS_SYSTEM, ROLE_SYSTEM
from carelink.consent.policy import load_policy
from carelink.sources.base import local_id_system, source_uri
from carelink.storage import ConsentStore, Database, GrantRow

POLICY = load_policy(Path(__file__).parents[2] / "consent" / "policy.json")
SOURCES = ("gp", "acute", "community", "social-care")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SCT = "http://snomed.info/sct"
LABELS = ("HIV", "STD", "SEX", "PSY", "SDV", "R")
CODES = ("86406008", "1234")
TYPES = ("Observation", "Condition", "Encounter")
ORGS = ("RAC00", "B00001", "RXX01", "RCM00")
ROLES = ("R8000", "R8001", "R8003", "R0001")
PATIENTS = ("p1", "p2")
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsentStore]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('memo') / 'g.db'}")
    db.migrate()
    s = ConsentStore(db)
    yield s
    s.close()
    db.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def guard(store: ConsentStore, clock: Clock, memo: FilterMemo | None) -> Guard:
    return Guard(
        Engine(POLICY),
        store,
        {source_uri(n): n for n in SOURCES},
        {local_id_system(n): n for n in SOURCES},
        clock,
        memo,
    )


sources = st.sampled_from(SOURCES)
dates = st.sampled_from(["2019-03-01", "2024-05-01", "2026-01-10"])


@st.composite
def resources(draw: Any, n: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if draw(st.integers(0, 4)) > 0:
        meta["source"] = source_uri(draw(sources))
    labels = draw(st.lists(st.sampled_from(LABELS), max_size=2, unique=True))
    if labels:
        meta["security"] = [{"system": ACT, "code": c} for c in labels]
    r: dict[str, Any] = {"resourceType": draw(st.sampled_from(TYPES)), "id": f"r{n}", "meta": meta}
    if draw(st.booleans()):
        r["code"] = {"coding": [{"system": SCT, "code": draw(st.sampled_from(CODES))}]}
    if draw(st.booleans()):
        r["effectiveDateTime"] = draw(dates)
    return r


@st.composite
def patients(draw: Any) -> dict[str, Any]:
    idents = draw(st.lists(sources, max_size=4, unique=True))
    return {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [{"system": local_id_system(n), "value": "L1"} for n in idents],
        "generalPractitioner": [{"identifier": {"system": ODS_SYSTEM, "value": "B00001"}}],
    }


@st.composite
def records(draw: Any) -> list[dict[str, Any]]:
    size = draw(st.integers(0, 6))
    out = [draw(resources(i)) for i in range(size)]
    if draw(st.booleans()):
        out.insert(0, draw(patients()))
    return out


@st.composite
def provisions(draw: Any, depth: int = 0) -> dict[str, Any]:
    p: dict[str, Any] = {"type": draw(st.sampled_from(["deny", "permit"]))}
    if draw(st.integers(0, 2)) == 0:  # in force for a while: decided anew each time
        p["period"] = {
            "start": "2020-01-01",
            "end": draw(st.sampled_from(["2027-01-15T09:00:00Z", "2030"])),
        }
    if draw(st.booleans()):
        who = draw(
            st.sampled_from([(ODS_SYSTEM, o) for o in ORGS] + [(ROLE_SYSTEM, r) for r in ROLES])
        )
        role = "CST" if who[0] == ODS_SYSTEM and draw(st.booleans()) else "IRCP"
        p["actor"] = [
            {
                "role": {"coding": [{"code": role}]},
                "reference": {"identifier": {"system": who[0], "value": who[1]}},
            }
        ]
    if draw(st.booleans()):
        p["securityLabel"] = [{"system": ACT, "code": draw(st.sampled_from(LABELS))}]
    if draw(st.integers(0, 3)) == 0:
        p["class"] = [{"code": draw(st.sampled_from(TYPES))}]
    if draw(st.integers(0, 3)) == 0:
        p["code"] = [{"coding": [{"system": SCT, "code": draw(st.sampled_from(CODES))}]}]
    if draw(st.integers(0, 4)) == 0:
        p["data"] = [{"reference": {"reference": f"{draw(st.sampled_from(TYPES))}/r1"}}]
    if draw(st.integers(0, 4)) == 0:
        p["dataPeriod"] = {"start": "2024-01-01"}
    if draw(st.integers(0, 4)) == 0:
        p["purpose"] = [{"code": draw(st.sampled_from(["TREAT", "ETREAT"]))}]
    if depth < 2 and draw(st.booleans()):
        p["provision"] = [draw(provisions(depth + 1)) for _ in range(draw(st.integers(1, 2)))]
    return p


@st.composite
def consent_sets(draw: Any) -> list[tuple[str, bytes]]:
    out = []
    for i in range(draw(st.integers(0, 2))):
        body = {
            "resourceType": "Consent",
            "id": f"c{i}",
            "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p1"},
            "provision": draw(provisions()),
        }
        out.append((f"c{i}", orjson.dumps(body)))
    return out


actors = st.builds(
    lambda role, org, purpose, citizen: Actor(
        "dr",
        role,
        org,
        purpose,
        "p1" if citizen else None,
        orjson.dumps(["issuer", "dr", org, role]).decode(),
    ),
    st.sampled_from(ROLES),
    st.sampled_from(ORGS),
    st.sampled_from(["TREAT", "ETREAT", "HRESCH"]),
    st.integers(0, 5).map(lambda n: n == 0),
)

#: one request: which record, caller, patient, Consents; a grant given; time passing;
#: the patient's registered practice (the caller's own, another, none known)
steps = st.tuples(
    st.integers(0, 2),
    st.integers(0, 1),
    st.sampled_from(PATIENTS),
    st.integers(0, 1),
    st.booleans(),
    st.sampled_from([0.0, 4000.0]),
    st.sampled_from(["B00001", "B00002", None]),
)


def grant_row(grant_id: str, pid: str, actor: Actor, at: float) -> GrantRow:
    """A break-glass grant to ``actor`` for ``pid``, for an hour from ``at``."""
    return GrantRow(
        grant_id,
        "dr",
        actor.organisation,
        actor.role,
        pid,
        "why",
        at,
        at + 3600,
        "requested",
        None,
        None,
        None,
        None,
        "break-glass",
        actor.identity,
        '["issuer","dr"]',
    )


def same(a: Filtered, b: Filtered) -> bool:
    """Equal in every field, each answer holding every field of its own: one made
    without ``Filtered``'s ``__init__`` (``Guard.filter_people``'s as-is answer, by its
    ``__dict__``) must not leave out a field added later, which the class's default or
    an ``AttributeError`` would stand in for."""
    names = {f.name for f in fields(Filtered)}
    assert set(vars(a)) == names, vars(a)
    assert set(vars(b)) == names, vars(b)
    return a == b


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(records(), min_size=3, max_size=3),
    st.lists(actors, min_size=3, max_size=3),
    st.lists(consent_sets(), min_size=3, max_size=3),
    st.lists(steps, min_size=1, max_size=16),
)
def test_a_remembered_answer_is_the_answer_decided_afresh(store, records_, actors_, consents_, run):
    clock = Clock()
    memo = FilterMemo(maxsize=4)
    remembering, fresh = guard(store, clock, memo), guard(store, clock, None)
    grants = 0
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM break_glass")
    for record, who, pid, consents, grant, later, practice in run:
        clock.now += later
        actor = actors_[who]
        if grant:
            grants += 1
            store.grant(grant_row(f"g{grants}", pid, actor, clock.now))
        gp = {"identifier": {"system": ODS_SYSTEM, "value": practice}}
        patient = {"generalPractitioner": [gp] if practice else []}
        s_memo = remembering.situation(actor, pid, patient, consents_[consents])
        s_fresh = fresh.situation(actor, pid, patient, consents_[consents])
        got = remembering.filter(s_memo, records_[record], shared=True)
        want = fresh.filter(s_fresh, records_[record])
        assert same(got, want), (got, want)
        # the caller's list is its own: changing it changes no later answer
        got.resources.clear()


def test_an_answer_for_one_registered_practice_is_not_reused_for_another(store):
    """A GP practice sees its own data, a sensitive part of it too; asked about the very
    same objects for a patient registered elsewhere, it is decided anew (withheld)."""
    g = guard(store, Clock(), FilterMemo())
    actor = Actor("dr", "R8000", "B00001", "TREAT", None, "id")
    hiv = {"source": source_uri("gp"), "security": [{"system": ACT, "code": "HIV"}]}
    record = [{"resourceType": "Observation", "id": "o", "meta": hiv}]

    def shown(practice: str) -> list[dict[str, Any]]:
        gp = {"identifier": {"system": ODS_SYSTEM, "value": practice}}
        s = g.situation(actor, "p1", {"generalPractitioner": [gp]}, [])
        return g.filter(s, record, shared=True).resources

    assert shown("B00001")  # the practice's own data
    assert shown("B00002") == []  # HIV, from another practice: needs the patient's consent
    assert shown("B00001")


def test_the_memo_is_used_for_the_same_objects_and_not_for_equal_copies(store):
    memo = FilterMemo()
    g = guard(store, Clock(), memo)
    actor = Actor("dr", "R8000", "RXX01", "TREAT", None, "id")
    # mental health, which a GP may see: shown labelled, a new dict each time it is decided
    psy = {"source": source_uri("acute"), "security": [{"system": ACT, "code": "PSY"}]}
    record = [{"resourceType": "Observation", "id": "o", "meta": psy}]
    first = g.filter(g.situation(actor, "p1", None, []), record, shared=True)
    assert first.resources[0] is not record[0]
    assert len(memo) == 1
    again = g.filter(g.situation(actor, "p1", None, []), record, shared=True)
    assert again.resources[0] is first.resources[0]  # the remembered answer's very label
    copy = [dict(record[0])]
    other = g.filter(g.situation(actor, "p1", None, []), copy, shared=True)
    assert other.resources == first.resources
    assert other.resources[0] is not first.resources[0]  # decided for the copy, not reused
    assert g.filter(g.situation(actor, "p1", None, []), [dict(record[0])]).resources
    assert len(memo) == 2  # unshared lists are never remembered


def test_an_answer_under_a_consent_in_force_for_a_while_is_decided_anew(store):
    """A deny that ends at 09:00 withholds before and not after, whatever was remembered."""
    clock = Clock()  # 08:00
    g = guard(store, clock, FilterMemo())
    body = {
        "resourceType": "Consent",
        "id": "c0",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "patient": {"reference": "Patient/p1"},
        "provision": {"type": "deny", "period": {"start": "2020", "end": "2027-01-15T09:00:00Z"}},
    }
    consents = [("c0", orjson.dumps(body))]
    actor = Actor("dr", "R8000", "RXX01", "TREAT", None, "id")
    record = [{"resourceType": "Observation", "id": "o", "meta": {"source": source_uri("acute")}}]
    assert g.filter(g.situation(actor, "p1", None, consents), record, shared=True).resources == []
    clock.now += 4000
    after = g.filter(g.situation(actor, "p1", None, consents), record, shared=True)
    assert after.resources == record
