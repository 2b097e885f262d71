"""Consent across two gateway processes, attacked with people we did not make.

Invariant: what a caller is shown of a person (the lookup by NHS number, a search by
local identifier and by name and birth date, the read, ``$everything``) through gateway
B equals what gateway A, which remembers nothing (``CARELINK_RECORD_MEMO=0``), shows the
same caller, on B's very next request after a Consent is stored, changed or withdrawn
through A, over one database; and two callers with different rights asking in turns for
the same person never see each other's view (B's shared memos hold one person's record
for both).

The people are two of the vendored Synthea export's, held by two FHIR sources over
real HTTP: ``acute`` with the Patient as exported and half the clinical resources,
``acute-2`` with its own ids, some drift, no NHS number and the other half, so every
link is demographic; one of them has an NHS number at ``acute`` only (the lookup's hot
path), and one Condition at ``acute-2`` labelled mental health (PSY: the default role
sees it, another role does not).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.settings import default_policy_path
from tests.support.changing_fhir import ChangingFhir, built_env
from tests.support.consents import custodian, privacy_consent, sent_consent
from tests.support.gateways import person_id, token_gateways
from tests.support.procs import carelink
from tests.support.servers import run_app
from tests.support.shared import SYNTHEA
from tests.support.split import LINKS, gp_copy
from tests.support.tokens import Issuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present"),
]

LOCAL_SYSTEM = "https://carelink.example/Id/acute"
NHS = "9434765919"  # check digit right; given to one Synthea person at ``acute``
SECOND_ODS = "RBB02"
PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
#: the two callers: the policy's mental-health roles include R8000, not R8004
CALLERS = {"sees-psy": {"role": "R8000"}, "no-psy": {"role": "R8004"}}


def _second_copy(acute: ChangingFhir, second: ChangingFhir) -> None:
    """Make ``second`` hold the people of ``acute`` as another system would: own ids,
    drift, the odd-numbered clinical resources (``acute`` keeps the even ones)."""
    second.records = {}
    for n, (local, record) in enumerate(list(acute.records.items())):
        patient, clinical = record[0], record[1:]
        own = gp_copy(n, patient)
        theirs = []
        for i, r in enumerate(clinical):
            if i % 2 == 0:
                continue
            r = copy.deepcopy(r)
            for key in LINKS:
                if isinstance(r.get(key), dict) and "reference" in r[key]:
                    r[key]["reference"] = f"Patient/{own['id']}"
                    break
            theirs.append(r)
        acute.records[local] = [patient, *(r for i, r in enumerate(clinical) if i % 2 == 0)]
        second.records[own["id"]] = [own, *theirs]


@dataclass
class Rig:
    a: str  # remembers nothing: where Consents are stored, and the oracle
    b: str  # remembers records and consent answers
    issuer: Issuer
    local: str  # the person's id at ``acute``
    family: str
    born: str
    pid: str
    labelled: str  # the PSY Condition's id at ``acute-2``

    def token(self, base: str, **claims: Any) -> str:
        return self.issuer.token(aud=base, **claims)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("outside-consents")
    acute, second = ChangingFhir(SYNTHEA, 2), ChangingFhir(SYNTHEA, 2)
    _second_copy(acute, second)
    local = next(iter(acute.records))
    patient = acute.records[local][0]
    patient.setdefault("identifier", []).append({"system": NHS_NUMBER_SYSTEM, "value": NHS})
    theirs = second.records["G0"]
    condition = next(r for r in theirs if r["resourceType"] == "Condition")
    condition.setdefault("meta", {}).setdefault("security", []).append(PSY)
    issuer = Issuer()
    # the sharing policy as shipped, naming the second source's organisation too
    policy = json.loads(Path(default_policy_path()).read_text())
    policy["organisations"]["acute-2"] = {"ods": SECOND_ODS, "name": "A second acute trust"}
    (tmp / "policy.json").write_text(json.dumps(policy))
    with ExitStack() as stack:
        urls = [stack.enter_context(run_app(s.app)) for s in (acute, second)]
        db = tmp / "index.db"
        env = {
            **built_env(str(db), f"acute={urls[0]},acute-2={urls[1]}"),
            "CARELINK_SOURCE_ODS": f"acute=RAC00,acute-2={SECOND_ODS}",
            "CARELINK_CONSENT_POLICY": str(tmp / "policy.json"),
        }
        built = carelink(["index", "build"], env)
        assert built.returncode == 0, built.stderr
        assert "index built: 2 persons" in built.stdout, built.stdout
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        (a,) = stack.enter_context(
            token_gateways(env, db, issuer, tmp / "a", extra={"CARELINK_RECORD_MEMO": "0"})
        )
        (b,) = stack.enter_context(token_gateways(env, db, issuer, tmp / "b"))
        pid = person_id(b.base, f"{NHS_NUMBER_SYSTEM}|{NHS}", issuer.token(aud=b.base))
        yield Rig(
            a.base,
            b.base,
            issuer,
            local,
            patient["name"][0]["family"],
            patient["birthDate"],
            pid,
            condition["id"],
        )


def _matches(body: dict[str, Any]) -> list[bytes]:
    """A Bundle's resources (not outcomes), each as sorted JSON; Provenance without the
    time it was recorded (it differs between two processes' answers)."""
    out = []
    for e in body.get("entry", []):
        if e.get("search", {}).get("mode") == "outcome":
            continue
        r = e["resource"]
        if r["resourceType"] == "Provenance":
            r = {k: v for k, v in r.items() if k not in ("recorded", "meta")}
        out.append(orjson.dumps(r, option=orjson.OPT_SORT_KEYS))
    return sorted(out)


def _view(rig: Rig, base: str, caller: str) -> dict[str, Any]:
    """Everything ``caller`` is shown of the person through ``base``."""
    headers = {"Authorization": f"Bearer {rig.token(base, **CALLERS[caller])}"}
    asks = {
        "lookup": ("/Patient", {"identifier": f"{NHS_NUMBER_SYSTEM}|{NHS}"}),
        "local": ("/Patient", {"identifier": f"{LOCAL_SYSTEM}|{rig.local}"}),
        "search": ("/Patient", {"family": rig.family, "birthdate": rig.born}),
        "read": (f"/Patient/{rig.pid}", {}),
        "everything": (f"/Patient/{rig.pid}/$everything", {"_count": "1000"}),
    }
    out: dict[str, Any] = {}
    for name, (path, params) in asks.items():
        r = httpx.get(f"{base}{path}", params=params, headers=headers, timeout=60)
        body = r.json()
        if body.get("resourceType") == "Bundle":
            out[name] = (r.status_code, body.get("total"), _matches(body))
        elif r.status_code == 200:
            out[name] = (r.status_code, orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        else:
            out[name] = (r.status_code, [i.get("code") for i in body.get("issue", [])])
    return out


def _both_in_turns(rig: Rig) -> dict[str, dict[str, Any]]:
    """Each caller's view through B, the two asking in turns twice (the second round from
    B's memos), equal to memo-less A's view for that caller."""
    seen: dict[str, dict[str, Any]] = {}
    for caller in CALLERS:
        seen[caller] = _view(rig, rig.b, caller)
        assert seen[caller] == _view(rig, rig.a, caller), caller
    for caller in CALLERS:
        assert _view(rig, rig.b, caller) == seen[caller], caller
    return seen


def _store(rig: Rig, consent: dict[str, Any], cid: str | None = None) -> str:
    """Store (or, with ``cid``, replace) a Consent through gateway A; its id."""
    token = rig.token(rig.a, role="R0001", scope="user/*.cruds", sub="privacy-officer-1")
    r = sent_consent(rig.a, token, consent, cid)
    assert r.status_code == (201 if cid is None else 200), r.text
    return str(r.json()["id"])


def _everything_ids(view: dict[str, Any]) -> set[str]:
    return {orjson.loads(r)["id"] for r in view["everything"][2]}


def _labelled_id(rig: Rig, view: dict[str, Any]) -> str:
    (found,) = [i for i in _everything_ids(view) if i.endswith(rig.labelled)]
    return found


def _deny_psy() -> dict[str, Any]:
    return {"type": "permit", "provision": [{"type": "deny", "securityLabel": [PSY]}]}


def _deny_second_source() -> dict[str, Any]:
    return {"type": "permit", "provision": [{"type": "deny", "actor": [custodian(SECOND_ODS)]}]}


def test_consents_stored_through_one_process_are_seen_by_the_other_at_once(rig: Rig):
    before = _both_in_turns(rig)
    # the two callers' rights differ: only one is shown the mental-health Condition
    psy = _labelled_id(rig, before["sees-psy"])
    assert psy not in _everything_ids(before["no-psy"])
    assert before["sees-psy"]["lookup"][1] == 1
    stored: list[tuple[str, dict[str, Any]]] = []
    try:
        # 1. the mental-health category withheld: gone for the role that saw it
        consent = privacy_consent(rig.pid, _deny_psy())
        stored.append((_store(rig, consent), consent))
        views = _both_in_turns(rig)
        assert psy not in _everything_ids(views["sees-psy"])
        assert views["no-psy"] == before["no-psy"]
        # 2. the second source's data withheld too: its resources and identifier go
        consent = privacy_consent(rig.pid, _deny_second_source())
        stored.append((_store(rig, consent), consent))
        views = _both_in_turns(rig)
        left = _everything_ids(views["no-psy"])
        assert left < _everything_ids(before["no-psy"])
        assert not [i for i in left if i.startswith("acute-2-")]
        # 3. an objection to sharing at all: the person is not found, not shown
        consent = privacy_consent(rig.pid, {"type": "deny"})
        stored.append((_store(rig, consent), consent))
        views = _both_in_turns(rig)
        for caller in CALLERS:
            assert views[caller]["lookup"][1] == 0
            assert views[caller]["local"][1] == 0
            assert rig.pid not in str(views[caller]["search"])
            assert views[caller]["everything"][0] >= 400
        # 4. all three withdrawn (status inactive, through A): back as before
        for cid, consent in stored:
            _store(rig, {**consent, "status": "inactive"}, cid)
        stored.clear()
        assert _both_in_turns(rig) == before
    finally:
        for cid, consent in stored:
            _store(rig, {**consent, "status": "inactive"}, cid)
