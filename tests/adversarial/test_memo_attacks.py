"""The record memo (``federation.memo``) under attack with data we did not make.

Invariant: an ``$everything`` answer from a gateway that remembers records equals the
answer a gateway that remembers none (``CARELINK_RECORD_MEMO=0``) gives for the same
caller, index and source answers, whatever changed before: a resource changed in place
(same id, new content), changed and changed back, a source answering two concurrent
requests differently, a caller with narrower scopes or a consent that withholds a
resource, two people whose source sends the very same bytes, and the person's index
entry changing (another record joins them).

The source is a FHIR R4 server in this process (real HTTP) serving the vendored
Synthea Bulk Data export (``tests/data/synthea-bulk-10``); the two gateways are
processes sharing one SQLite index built from it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.namespacing import namespaced_id
from tests.support.changing_fhir import ChangingFhir
from tests.support.consents import privacy_consent
from tests.support.gateways import person_id, remembering_and_fresh
from tests.support.procs import carelink
from tests.support.servers import run_app
from tests.support.shared import SYNTHEA
from tests.support.tokens import Issuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present"),
]

LOCAL_SYSTEM = "https://carelink.example/Id/acute"
#: NHS numbers (check digit right) given to Synthea patients by the index-entry test
NUMBERS = ("9434765919", "9434765870")


@dataclass
class Rig:
    source: ChangingFhir
    remembering: str  # FHIR base of the gateway with the memo
    forgetting: str  # FHIR base of the gateway without it
    issuer: Issuer
    env: dict[str, str]
    locals: list[str]

    def token(self, base: str, **claims: Any) -> str:
        claims.setdefault("organisation", "RXX01")
        return self.issuer.token(aud=base, **claims)

    def rebuild(self) -> None:
        built = carelink(["index", "build"], self.env)
        assert built.returncode == 0, built.stderr


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("memo-attacks")
    source = ChangingFhir(SYNTHEA, 3)
    issuer = Issuer()
    with ExitStack() as stack:
        url = stack.enter_context(run_app(source.app))
        db = tmp / "index.db"
        env = {
            "CARELINK_DATABASE_URL": str(db),
            "CARELINK_SOURCES": f"acute={url}",
            "CARELINK_BUDGET": "20",  # nothing times out: answers depend on content alone
            "CARELINK_AUTH": "development",
        }
        built = carelink(["index", "build"], env)
        assert built.returncode == 0, built.stderr
        on, off = stack.enter_context(remembering_and_fresh(env, db, issuer, tmp))
        yield Rig(source, on.base, off.base, issuer, env, list(source.records))


def _pid(rig: Rig, local: str) -> str:
    return person_id(rig.remembering, f"{LOCAL_SYSTEM}|{local}", rig.token(rig.remembering))


def _observed(body: dict[str, Any]) -> tuple[Any, ...]:
    """What an answer says about the record: its resources (Provenance without the time it
    was recorded) and each source's status; not ids, links or latencies of this answer."""
    resources, statuses = [], []
    for e in body.get("entry", []):
        r = e["resource"]
        if e["search"]["mode"] == "outcome":
            statuses = [i["details"]["coding"][0]["code"] for i in r["issue"] if "details" in i]
            continue
        if r["resourceType"] == "Provenance":
            r = {k: v for k, v in r.items() if k not in ("recorded", "meta")}
        resources.append(orjson.dumps(r, option=orjson.OPT_SORT_KEYS))
    return tuple(sorted(resources)), tuple(statuses), body.get("total")


def _everything(rig: Rig, base: str, pid: str, **claims: Any) -> tuple[int, tuple[Any, ...]]:
    r = httpx.get(
        f"{base}/Patient/{pid}/$everything",
        params={"_count": 1000},
        headers={"Authorization": f"Bearer {rig.token(base, **claims)}"},
        timeout=60,
    )
    return r.status_code, _observed(r.json()) if r.status_code == 200 else r.json()


def _agree(rig: Rig, pid: str, **claims: Any) -> tuple[Any, ...]:
    """Both gateways' answers, the remembering one asked twice (the second from its memo
    when nothing changed): all equal; returns the answer."""
    first = _everything(rig, rig.remembering, pid, **claims)
    again = _everything(rig, rig.remembering, pid, **claims)
    fresh = _everything(rig, rig.forgetting, pid, **claims)
    assert first == fresh
    assert again == fresh
    assert fresh[0] == 200
    return fresh[1]


def _resources(answer: tuple[Any, ...], rtype: str) -> list[dict[str, Any]]:
    return [r for r in map(orjson.loads, answer[0]) if r["resourceType"] == rtype]


def _some(rig: Rig, local: str, rtype: str) -> dict[str, Any]:
    """A resource of ``rtype`` in the source's record of ``local`` (the served object)."""
    return next(r for r in rig.source.records[local] if r["resourceType"] == rtype)


def _changeable(rig: Rig, local: str) -> dict[str, Any]:
    """An Observation, else a Condition of ``local`` at the source (both have notes)."""
    for rtype in ("Observation", "Condition"):
        if any(r["resourceType"] == rtype for r in rig.source.records[local]):
            return _some(rig, local, rtype)
    raise AssertionError(f"{local} has no clinical resource to change")


def test_a_resource_changed_in_place_is_seen_at_once_and_changed_back_too(rig: Rig):
    local = rig.locals[0]
    pid = _pid(rig, local)
    _agree(rig, pid)
    target = _changeable(rig, local)
    was = copy.deepcopy(target)
    target.setdefault("note", []).append({"text": "corrected at the source"})
    changed = _agree(rig, pid)
    mine = _named(changed, was)
    assert mine["note"][-1]["text"] == "corrected at the source"
    target.clear()
    target.update(was)  # and back to the very bytes of before
    back = _agree(rig, pid)
    assert "corrected at the source" not in orjson.dumps(_named(back, was)).decode()


def _named(answer: tuple[Any, ...], served: dict[str, Any]) -> dict[str, Any]:
    """The answer's copy of a resource the source served."""
    rid = namespaced_id("acute", str(served["id"]))
    return next(r for r in _resources(answer, served["resourceType"]) if r["id"] == rid)


def test_a_resource_removed_and_one_added_under_its_id_elsewhere(rig: Rig):
    """The same id moved from one resource to another of the record (content swapped)."""
    local = rig.locals[0]
    pid = _pid(rig, local)
    record = rig.source.records[local]
    clinical = [r for r in record[1:] if r["resourceType"] == record[1]["resourceType"]]
    if len(clinical) < 2:
        pytest.skip("the smallest Synthea record has no two resources of one type")
    _agree(rig, pid)
    a, b = clinical[0], clinical[1]
    saved = copy.deepcopy(record)
    a_id, b_id = a["id"], b["id"]
    a["id"], b["id"] = b_id, a_id
    try:
        _agree(rig, pid)
    finally:
        rig.source.records[local] = saved


def test_a_source_answering_concurrent_requests_differently_never_mixes_them(rig: Rig):
    """Every other request is answered from a changed copy of the record: each answer, of
    many at once, is the one the memo-less gateway gives for one version or the other."""
    local = rig.locals[1]
    pid = _pid(rig, local)
    original = rig.source.records
    changed = copy.deepcopy(original)
    target = next(r for r in changed[local][1:])
    target.setdefault("note", []).append({"text": "the other version"})
    versions = []
    try:
        for records in (original, changed):
            rig.source.records = records
            versions.append(_agree(rig, pid))
        assert versions[0] != versions[1]
        rig.source.records, rig.source.alternate = original, changed

        async def many() -> list[tuple[int, Any]]:
            token = rig.token(rig.remembering)
            async with httpx.AsyncClient(timeout=60) as client:
                replies = await asyncio.gather(
                    *(
                        client.get(
                            f"{rig.remembering}/Patient/{pid}/$everything",
                            params={"_count": 1000},
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        for _ in range(12)
                    )
                )
            return [(r.status_code, _observed(r.json())) for r in replies]

        for status, answer in asyncio.run(many()):
            assert status == 200
            assert answer in versions
    finally:
        rig.source.records, rig.source.alternate = original, None


def test_a_narrow_caller_before_a_broad_one_leaves_the_broad_answer_whole(rig: Rig):
    """The remembered record is shared: filtering one caller's view must not cut it for
    the next caller."""
    local = rig.locals[0]
    pid = _pid(rig, local)
    narrow = _agree(rig, pid, scope="user/Patient.rs")
    assert {orjson.loads(r)["resourceType"] for r in narrow[0]} <= {"Patient", "Provenance"}
    broad = _agree(rig, pid, scope="user/*.rs")
    assert {orjson.loads(r)["resourceType"] for r in broad[0]} - {"Patient", "Provenance"}
    assert _agree(rig, pid, scope="user/Patient.rs") == narrow


def test_a_resource_withheld_by_consent_vanishes_at_once_and_only_for_that_person(rig: Rig):
    local, other = rig.locals[2], rig.locals[0]
    pid, other_pid = _pid(rig, local), _pid(rig, other)
    before = _agree(rig, pid)
    other_before = _agree(rig, other_pid)
    target = _changeable(rig, local)
    withheld = _named(before, target)
    ref = f"{withheld['resourceType']}/{withheld['id']}"
    deny = {"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": ref}}]}
    consent = privacy_consent(pid, {"type": "permit", "provision": [deny]})
    base = rig.remembering  # one database: stored once, both gateways see it
    stored = httpx.post(
        f"{base}/Consent",
        content=orjson.dumps(consent),
        headers={
            "Authorization": f"Bearer {rig.token(base, role='R0001', scope='user/*.cruds')}",
            "Content-Type": "application/fhir+json",
        },
        timeout=30,
    )
    assert stored.status_code == 201, stored.text
    after = _agree(rig, pid)
    ids = {f"{r['resourceType']}/{r['id']}" for r in map(orjson.loads, after[0])}
    assert ref not in ids
    assert len(after[0]) < len(before[0])
    assert _agree(rig, other_pid) == other_before


def test_two_people_whose_source_sends_the_same_bytes_get_what_a_fresh_gateway_gives(rig: Rig):
    """The source answers one patient's ``$everything`` with another's bytes exactly: asked
    in turns, each person's answer is still the memo-less gateway's (never the other's
    record under their id without the check a fresh gateway makes)."""
    a, b = rig.locals[0], rig.locals[1]
    pa, pb = _pid(rig, a), _pid(rig, b)
    try:
        rig.source.same_as[b] = a
        for _ in range(2):
            for pid in (pa, pb):
                first = _everything(rig, rig.remembering, pid)
                assert first == _everything(rig, rig.forgetting, pid)
                assert _everything(rig, rig.remembering, pid) == first
        status, answer_b = _everything(rig, rig.forgetting, pb)
        assert status == 200
        assert answer_b[1] == ("error",)  # the source's answer is not B's: none of it served
        assert namespaced_id("acute", a) not in b"".join(answer_b[0]).decode()
        assert not [r for r in map(orjson.loads, answer_b[0]) if r["resourceType"] != "Patient"]
    finally:
        rig.source.same_as.clear()
    _agree(rig, pb)


def test_a_person_whose_index_entry_gains_a_record_is_answered_whole(rig: Rig):
    """Two Synthea patients given one NHS number at the source, one rebuild apart: the
    person (one id, from the number) first holds one record, then both; the remembered
    record of the first never stands in for the second."""
    a, b = rig.locals[1], rig.locals[2]
    saved = {k: copy.deepcopy(rig.source.records[k][0]) for k in (a, b)}
    number = {"system": NHS_NUMBER_SYSTEM, "value": NUMBERS[0]}
    try:
        rig.source.records[a][0].setdefault("identifier", []).append(number)
        rig.rebuild()
        person = _pid(rig, a)
        one = _agree(rig, person)
        assert _pid(rig, b) != person
        rig.source.records[b][0].setdefault("identifier", []).append(number)
        rig.rebuild()
        assert _pid(rig, b) == person
        both = _agree(rig, person)
        assert len(both[0]) > len(one[0])
        assert len(_resources(both, "Patient")) > len(_resources(one, "Patient"))
    finally:
        for k, patient in saved.items():
            rig.source.records[k][0] = patient
        rig.rebuild()
