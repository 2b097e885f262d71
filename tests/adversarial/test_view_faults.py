"""``$everything``'s reused views (``federation.memo.Views``, ``api.paging.shown``) under
faults, consent changes and changed bytes between two requests that would reuse one.

Invariant: every answer of a gateway that remembers records and their views equals the
answer of a gateway that remembers nothing (``CARELINK_RECORD_MEMO=0``, a fresh build
each time) to the same caller at the same moment: status, ``ETag``, ``Last-Modified``,
``X-Carelink-Missing-Sources``, ``Preference-Applied``, the body (but each request's
latencies, as-of times and Provenance ``recorded``), the source outcome or the 503's
OperationOutcome, and the audit events it leaves; whatever happened between the request
that made the view and this one: the source failing (HTTP 500, a body that is not JSON,
JSON that is not a Bundle, an answer later than the caller waits) and recovering, a
Consent stored or withdrawn, the source sending other bytes.

The source is a FHIR R4 server in this process (real HTTP) serving the vendored Synthea
export; the two gateways are processes over one SQLite index (one audit trail).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.changing_fhir import ChangingFhir, built_env
from tests.support.consents import privacy_consent, sent_consent
from tests.support.gateways import person_id, remembering_and_fresh
from tests.support.objections import Gateway, normal_event
from tests.support.procs import carelink
from tests.support.servers import run_app
from tests.support.shared import SYNTHEA
from tests.support.tokens import Issuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present"),
]

LOCAL_SYSTEM = "https://carelink.example/Id/acute"
FAULTS = ["500", "not-json", "not-bundle", "slow"]
#: the headers an answer is compared by (the date and request id are each request's)
HEADERS = (
    "etag",
    "last-modified",
    "x-carelink-missing-sources",
    "preference-applied",
    "content-type",
)
_LATENCY = re.compile(r" in [0-9.]+ ms")
_AS_OF = re.compile(r"as of [0-9T:.Z-]+")


@dataclass
class Rig:
    source: ChangingFhir
    remembering: Gateway
    forgetting: Gateway
    locals: list[str]

    def pid(self, local: str) -> str:
        base = self.remembering.base
        token = self.remembering.token(organisation="RXX01")
        return person_id(base, f"{LOCAL_SYSTEM}|{local}", token)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("view-faults")
    source = ChangingFhir(SYNTHEA, 3)
    issuer = Issuer()
    db = tmp / "index.db"
    with ExitStack() as stack:
        url = stack.enter_context(run_app(source.app))
        env = built_env(str(db), f"acute={url}")
        built = carelink(["index", "build"], env)
        assert built.returncode == 0, built.stderr
        on, off = stack.enter_context(remembering_and_fresh(env, db, issuer, tmp))
        remembering, fresh = Gateway(on.base, issuer, [], db), Gateway(off.base, issuer, [], db)
        stack.callback(remembering.close)
        stack.callback(fresh.close)
        yield Rig(source, remembering, fresh, list(source.records))


def _normal(body: bytes, base: str) -> Any:
    """An answer's body less what is each request's own: the base URL, each source's
    latency and as-of time, a Provenance's ``recorded``."""
    doc = orjson.loads(body.replace(base.encode(), b"BASE"))
    for entry in doc.get("entry", []):
        r = entry["resource"]
        if r["resourceType"] == "Provenance":
            r.pop("recorded", None)
        if r["resourceType"] == "OperationOutcome":
            _timeless(r)
    if doc.get("resourceType") == "OperationOutcome":
        _timeless(doc)
    return doc


def _timeless(outcome: dict[str, Any]) -> None:
    for issue in outcome.get("issue", []):
        if "diagnostics" in issue:
            issue["diagnostics"] = _AS_OF.sub(
                "as of T", _LATENCY.sub(" in N ms", issue["diagnostics"])
            )
        issue["extension"] = [
            e
            for e in issue.get("extension", [])
            if not e["url"].endswith(("source-latency-ms", "source-data-as-of"))
        ]


def _asked(gateway: Gateway, pid: str, prefer: str | None, **claims: Any) -> tuple[Any, ...]:
    """One ``$everything`` as the invariant compares it (its audit events included)."""
    claims.setdefault("organisation", "RXX01")
    headers = {
        "Authorization": f"Bearer {gateway.token(**claims)}",
        "X-Request-ID": str(uuid.uuid4()),
    }
    if prefer:
        headers["Prefer"] = prefer
    r = httpx.get(
        f"{gateway.base}/Patient/{pid}/$everything",
        params={"_count": "1000"},
        headers=headers,
        timeout=60,
    )
    # an event names the gateway it was made at (``source.observer``'s network address)
    events = orjson.loads(
        orjson.dumps([normal_event(e) for e in gateway.events(headers["X-Request-ID"])]).replace(
            gateway.base.encode(), b"BASE"
        )
    )
    kept = tuple(r.headers.get(h) for h in HEADERS)
    return r.status_code, kept, _normal(r.content, gateway.base), events


def _agree(
    rig: Rig, pid: str, prefer: str | None = None, rounds: int = 2, **claims: Any
) -> tuple[Any, ...]:
    """Each gateway asked in turn, ``rounds`` times (the remembering one's later rounds
    reusing what its first made, when it may), every pair the same; returns the answer.
    Both are asked as often, so their circuit breakers count the same failures."""
    answers = []
    for _ in range(rounds):
        remembered = _asked(rig.remembering, pid, prefer, **claims)
        fresh = _asked(rig.forgetting, pid, prefer, **claims)
        assert remembered == fresh
        assert fresh[3], "every request leaves an audit event"
        answers.append(fresh)
    return answers[-1]


def _status(answer: tuple[Any, ...]) -> str | None:
    body = answer[2]
    for entry in body.get("entry", []):
        if entry["search"]["mode"] == "outcome":
            return str(entry["resource"]["issue"][0]["details"]["coding"][0]["code"])
    return None


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_between_two_requests_that_would_reuse_a_view(rig: Rig, fault: str) -> None:
    """The view made before the fault is not shown during it, and after recovery the
    answer is a fresh build's (the record and its view reused or not)."""
    pid = rig.pid(rig.locals[0])
    before = _agree(rig, pid)
    assert _status(before) == "ok"
    # a caller who waits less than the slow source takes: the fault is a timeout
    prefer = "wait=1" if fault == "slow" else None
    rig.source.fault = fault
    try:
        # once each: a third failure in a row would open the circuits for a while
        during = _agree(rig, pid, prefer, rounds=1)
        refused = _agree(
            rig, pid, f"{prefer}, partial=fail" if prefer else "partial=fail", rounds=1
        )
    finally:
        rig.source.fault = None
    assert _status(during) == ("timeout" if fault == "slow" else "error")
    assert during[1][2] is not None  # X-Carelink-Missing-Sources
    assert during[1][0] != before[1][0]  # another ETag: the caller is shown less
    assert refused[0] == 503
    after = _agree(rig, pid)
    assert after == before


def test_a_fault_and_changed_bytes_after_it(rig: Rig) -> None:
    """The source fails, then recovers with one resource changed: the new content at
    once, in the body and the ETag, then the old content back again."""
    local = rig.locals[1]
    pid = rig.pid(local)
    before = _agree(rig, pid)
    target = next(r for r in rig.source.records[local] if r["resourceType"] != "Patient")
    saved = dict(target)
    rig.source.fault = "500"
    try:
        _agree(rig, pid, rounds=1)
    finally:
        rig.source.fault = None
    try:
        target["id"] = saved["id"]
        target["meta"] = {**saved.get("meta", {}), "lastUpdated": "2030-01-01T09:00:00Z"}
        changed = _agree(rig, pid)
        assert changed[1][0] != before[1][0]  # the ETag moved
        assert changed[1][1] != before[1][1]  # so did Last-Modified (the newest update)
    finally:
        target.clear()
        target.update(saved)
    assert _agree(rig, pid) == before


def test_a_consent_stored_and_withdrawn_between_requests_that_would_reuse_a_view(
    rig: Rig,
) -> None:
    """A deny of one resource, stored while the source is failing, then withdrawn: each
    answer is a fresh build's, the withheld resource gone at once and back at once."""
    local = rig.locals[2]
    pid = rig.pid(local)
    before = _agree(rig, pid)
    target = next(r for r in rig.source.records[local] if r["resourceType"] != "Patient")
    ref = f"{target['resourceType']}/acute-{target['id']}"
    deny = {"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": ref}}]}
    consent = privacy_consent(pid, {"type": "permit", "provision": [deny]})
    officer = rig.remembering.token(role="R0001", sub="privacy-officer-1", scope="user/*.cruds")
    rig.source.fault = "500"
    try:
        stored = sent_consent(rig.remembering.base, officer, consent)
        assert stored.status_code == 201, stored.text
        _agree(rig, pid, rounds=1)
    finally:
        rig.source.fault = None
    withheld = _agree(rig, pid)
    assert ref not in _shown(withheld)
    assert withheld[1][0] != before[1][0]
    cid = stored.json()["id"]
    gone = sent_consent(rig.remembering.base, officer, {**consent, "status": "inactive"}, cid)
    assert gone.status_code == 200, gone.text
    assert _agree(rig, pid) == before


def _officer(rig: Rig) -> str:
    return rig.remembering.token(role="R0001", sub="privacy-officer-1", scope="user/*.cruds")


def test_a_consent_that_changes_nothing_shown_still_changes_the_etag_at_once(rig: Rig) -> None:
    """A deny of a resource the record does not hold: the very same resources are shown,
    but the ETag (made with the patient's Consents) is a fresh build's, not the view's."""
    pid = rig.pid(rig.locals[0])
    before = _agree(rig, pid)
    nothing = {"reference": {"reference": "Observation/acute-not-in-this-record"}}
    deny = {"type": "deny", "data": [{"meaning": "instance", **nothing}]}
    consent = privacy_consent(pid, {"type": "permit", "provision": [deny]})
    stored = sent_consent(rig.remembering.base, _officer(rig), consent)
    assert stored.status_code == 201, stored.text
    try:
        after = _agree(rig, pid)
        assert after[2] == before[2]  # the same body
        assert after[1][0] != before[1][0]  # another ETag
    finally:
        withdrawn = {**consent, "status": "inactive"}
        gone = sent_consent(rig.remembering.base, _officer(rig), withdrawn, stored.json()["id"])
        assert gone.status_code == 200, gone.text
    assert _agree(rig, pid) == before


def test_a_consent_coming_into_force_between_two_requests_withholds_at_once(rig: Rig) -> None:
    """A deny of one resource from a moment a few seconds ahead: the same Consent, the
    same source answer (the record and its view reused), but once the moment has passed
    the resource is withheld, as a fresh build withholds it."""
    local = rig.locals[1]
    pid = rig.pid(local)
    target = next(r for r in rig.source.records[local] if r["resourceType"] != "Patient")
    ref = f"{target['resourceType']}/acute-{target['id']}"
    start = datetime.now(UTC) + timedelta(seconds=4)
    deny = {
        "type": "deny",
        "period": {"start": start.isoformat(timespec="seconds").replace("+00:00", "Z")},
        "data": [{"meaning": "instance", "reference": {"reference": ref}}],
    }
    consent = privacy_consent(pid, {"type": "permit", "provision": [deny]})
    stored = sent_consent(rig.remembering.base, _officer(rig), consent)
    assert stored.status_code == 201, stored.text
    try:
        early = _agree(rig, pid)
        assert ref in _shown(early)
        while datetime.now(UTC) < start + timedelta(seconds=1):
            time.sleep(0.2)
        late = _agree(rig, pid)
        assert ref not in _shown(late)
    finally:
        withdrawn = {**consent, "status": "inactive"}
        gone = sent_consent(rig.remembering.base, _officer(rig), withdrawn, stored.json()["id"])
        assert gone.status_code == 200, gone.text


def _shown(answer: tuple[Any, ...]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in answer[2]["entry"]}


def test_one_fault_after_another_is_named_as_it_is(rig: Rig) -> None:
    """The source fails one way, then another (an error, then a timeout): each answer's
    missing source, outcome and ETag are a fresh build's, never the first fault's."""
    pid = rig.pid(rig.locals[2])
    answers = []
    try:
        for fault, prefer in (("500", None), ("slow", "wait=1")):
            rig.source.fault = fault
            answers.append(_agree(rig, pid, prefer, rounds=1))
    finally:
        rig.source.fault = None
    error, timeout = answers
    assert (error[1][2], timeout[1][2]) == ("acute;status=error", "acute;status=timeout")
    assert error[1][0] != timeout[1][0]
    _agree(rig, pid)
