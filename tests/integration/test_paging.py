"""Paging over one stored result, partial answers visible at the HTTP level, and the
search features of the per-type and ``$everything`` endpoints, against real processes."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fhirpy import SyncFHIRClient
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.population import SOURCES, Person
from tests.integration.conftest import System
from tests.support.consents import custodian, privacy_consent
from tests.support.gateways import copy_index, token_gateways
from tests.support.procs import free_port, running
from tests.support.tokens import Issuer

MISSING = "x-carelink-missing-sources"
STRANGER = "RXX01"
ACUTE_ODS = "RAC00"
TTL = 3.0  # seconds a stored result lives in the token-mode gateway of this module


def everyone(system: System) -> Person:
    return next(p for p in system.population if len(p.sources) == 4 and not p.social_variant)


def pid_of(base: str, person: Person, headers: dict[str, str] | None = None) -> str:
    r = httpx.get(
        f"{base}/Patient",
        params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
        headers=headers,
    )
    return str(r.json()["entry"][0]["resource"]["id"])


def matches(bundle: dict[str, Any]) -> list[str]:
    return [e["fullUrl"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def next_url(bundle: dict[str, Any]) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)


def missing_names(response: httpx.Response) -> set[str]:
    header = response.headers.get(MISSING, "")
    return {item.split(";")[0].strip() for item in header.split(",") if item.strip()}


# --- item 5: the pages of one search are one answer ---------------------------------------

SEARCHES = [
    ("Patient/{pid}/$everything", {}),
    ("Encounter", {"patient": "{pid}"}),
    ("Observation", {"patient": "{pid}"}),
]
FAULTS = {
    "error": {"error_rate": 1.0},
    "down": {"down": True},
    "recover": {"error_rate": 0.0, "down": False},
}
change = st.tuples(st.sampled_from(SOURCES), st.sampled_from(list(FAULTS)))


@settings(max_examples=15, deadline=None)
@given(
    size=st.integers(min_value=4, max_value=40),
    search=st.sampled_from(SEARCHES),
    between=st.lists(st.lists(change, max_size=3), max_size=8),
)
def test_the_pages_of_a_search_are_its_single_page_answer_whatever_sources_do(
    system, size, search, between
):
    """For any page size and any failures and recoveries between pages, the pages
    together are exactly the single-page answer: nothing dropped, nothing twice."""
    pid = pid_of(system.base, everyone(system))
    path, params = search
    url = f"{system.base}/{path.format(pid=pid)}"
    query = {k: v.format(pid=pid) for k, v in params.items()}
    system.heal()
    try:
        for _ in range(3):  # a healthy start: every source answered both (a busy machine
            # can make a source miss the budget now and then)
            whole = httpx.get(url, params={**query, "_count": 1000}, timeout=10)
            page = httpx.get(url, params={**query, "_count": size}, timeout=10)
            if MISSING not in whole.headers and MISSING not in page.headers:
                break
        assert MISSING not in whole.headers
        assert MISSING not in page.headers
        expected = matches(whole.json())
        seen: list[str] = []
        for step in range(1000):
            assert page.status_code == 200, page.text
            assert page.json()["total"] == len(expected)
            seen += matches(page.json())
            for source, fault in between[step] if step < len(between) else []:
                system.faults(source, **FAULTS[fault])
            link = next_url(page.json())
            if link is None:
                break
            page = httpx.get(link, timeout=10)
    finally:
        system.heal()
    assert len(seen) == len(set(seen))
    assert seen == expected


def test_any_gateway_process_serves_the_pages_another_one_stored(system):
    """The stored answer is in the shared database, not in the process that made it."""
    pid = pid_of(system.base, everyone(system))
    url = f"{system.base}/Patient/{pid}/$everything"
    whole = matches(httpx.get(url, params={"_count": 1000}, timeout=10).json())
    port = free_port()
    other = f"http://127.0.0.1:{port}/fhir"
    with running(["serve", "--port", str(port)], f"{other}/metadata", system.env):
        page = httpx.get(url, params={"_count": 9}, timeout=10).json()
        seen = matches(page)
        while (link := next_url(page)) is not None:
            page = httpx.get(link.replace(system.base, other), timeout=10).json()
            seen += [m.replace(other, system.base) for m in matches(page)]
    assert seen == whole


def test_later_pages_are_cut_from_the_stored_result_under_a_cursor(system):
    pid = pid_of(system.base, everyone(system))
    first = httpx.get(
        f"{system.base}/Encounter", params={"patient": pid, "status": "finished", "_count": 2}
    ).json()
    link = next_url(first)
    assert link is not None
    query = parse_qs(urlsplit(link).query)
    assert len(query["_cursor"][0]) >= 32
    assert query["patient"] == [pid]
    assert "status" not in query  # the cursor, not the search, is carried


def test_an_unknown_cursor_is_410_gone(system):
    pid = pid_of(system.base, everyone(system))
    r = httpx.get(
        f"{system.base}/Patient/{pid}/$everything",
        params={"_cursor": secrets.token_urlsafe(24), "_offset": 5},
    )
    assert r.status_code == 410
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "expired"


def test_a_cursor_is_only_good_for_the_search_that_made_it(system):
    pid = pid_of(system.base, everyone(system))
    first = httpx.get(f"{system.base}/Encounter", params={"patient": pid, "_count": 2}).json()
    cursor = parse_qs(urlsplit(str(next_url(first))).query)["_cursor"][0]
    r = httpx.get(f"{system.base}/Observation", params={"patient": pid, "_cursor": cursor})
    assert r.status_code == 410


def test_everything_pages_carry_a_content_etag_and_answer_304(system):
    pid = pid_of(system.base, everyone(system))
    first = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_count": 3})
    second_url = str(next_url(first.json()))
    second = httpx.get(second_url)
    assert second.headers["etag"] not in ("", first.headers["etag"])
    again = httpx.get(second_url, headers={"If-None-Match": second.headers["etag"]})
    assert again.status_code == 304


# --- item 8: partial answers at the HTTP level --------------------------------------------


def test_missing_sources_are_named_in_a_header_and_partial_fail_refuses(system):
    pid = pid_of(system.base, everyone(system))
    url = f"{system.base}/Patient/{pid}/$everything"
    system.heal()
    whole = httpx.get(url)
    assert MISSING not in whole.headers
    strict = httpx.get(url, headers={"Prefer": "partial=fail"})
    assert strict.status_code == 200
    assert strict.headers["preference-applied"] == "partial=fail"
    system.faults("acute", error_rate=1.0)
    try:
        partial = httpx.get(url, timeout=10)
        assert partial.status_code == 200
        assert partial.headers[MISSING] in ("acute;status=error", "acute;status=circuit-open")
        refused = httpx.get(url, headers={"Prefer": "partial=fail"}, timeout=10)
        search = httpx.get(
            f"{system.base}/Encounter",
            params={"patient": pid},
            headers={"Prefer": "partial=fail"},
            timeout=10,
        )
    finally:
        system.heal()
    assert refused.status_code == 503
    assert missing_names(refused) == {"acute"}
    oo = refused.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert "acute" in oo["issue"][0]["diagnostics"]
    assert "entry" not in oo
    assert search.status_code == 503


def test_later_pages_of_a_partial_answer_stay_partial_and_say_so(system):
    """A stored answer keeps describing itself: its later pages name what it lacks
    even after the source recovers, and ``partial=fail`` refuses them too."""
    pid = pid_of(system.base, everyone(system))
    system.faults("acute", error_rate=1.0)
    try:
        first = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_count": 3})
    finally:
        system.heal()
    assert missing_names(first) == {"acute"}
    link = str(next_url(first.json()))
    later = httpx.get(link)
    assert later.status_code == 200
    assert missing_names(later) == {"acute"}
    assert httpx.get(link, headers={"Prefer": "partial=fail"}).status_code == 503


def test_prefer_partial_takes_fail_or_allow(system):
    pid = pid_of(system.base, everyone(system))
    r = httpx.get(f"{system.base}/Patient/{pid}/$everything", headers={"Prefer": "partial=maybe"})
    assert r.status_code == 400


# --- item 7: type search ------------------------------------------------------------------


def _codes(base: str, pid: str, **params: str) -> list[frozenset[str]]:
    """Each matched Observation's codes (GP and community code in SNOMED CT and LOINC)."""
    r = httpx.get(f"{base}/Observation", params={"patient": pid, "_count": 1000, **params})
    assert r.status_code == 200, r.text
    return [
        frozenset(c["code"] for c in e["resource"].get("code", {}).get("coding", []))
        for e in r.json()["entry"]
        if e["search"]["mode"] == "match"
    ]


def test_code_not_excludes_what_code_finds(system):
    person = max(system.population, key=lambda p: (len(p.sources), p.age))
    pid = pid_of(system.base, person)
    every = _codes(system.base, pid)
    assert every
    flat = [c for codes in every for c in codes]
    common = max(set(flat), key=flat.count)
    found = _codes(system.base, pid, code=common)
    assert found
    assert all(common in codes for codes in found)
    without = _codes(system.base, pid, **{"code:not": common})
    assert all(common not in codes for codes in without)
    assert len(without) == len([codes for codes in every if common not in codes])
    other = next((c for c in flat if c not in next(x for x in every if common in x)), common)
    either = _codes(system.base, pid, code=f"{common},{other}")
    assert all(common in codes or other in codes for codes in either)
    assert len(either) == len([x for x in every if common in x or other in x])


def test_code_missing_and_unknown_modifiers(system):
    pid = pid_of(system.base, everyone(system))
    present = httpx.get(
        f"{system.base}/Observation", params={"patient": pid, "code:missing": "false"}
    ).json()
    total = httpx.get(f"{system.base}/Observation", params={"patient": pid}).json()["total"]
    assert present["total"] == total
    bad = httpx.get(f"{system.base}/Observation", params={"patient": pid, "code:text": "x"})
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["code:text"]


def test_unknown_type_in_everything_is_400(system):
    pid = pid_of(system.base, everyone(system))
    r = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_type": "Encounter,Foo"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["_type"]


def test_since_judges_resources_without_last_updated_on_when_the_gateway_learned_them(system):
    pid = pid_of(system.base, everyone(system))
    url = f"{system.base}/Patient/{pid}/$everything"
    future = httpx.get(url, params={"_since": "2099-01-01", "_count": 1000}).json()
    assert future["total"] == 0
    recent = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    fresh = httpx.get(url, params={"_since": recent, "_count": 1000}).json()
    sources = {
        e["resource"].get("meta", {}).get("source")
        for e in fresh["entry"]
        if e["search"]["mode"] == "match"
    }
    assert "urn:carelink:source:community" in sources  # no lastUpdated: learned just now


def test_since_does_not_offer_again_what_the_gateway_learned_before(system):
    """Resources without lastUpdated are judged on when the gateway first saw them, not on
    when the source last answered: asked again later, unchanged ones are not new."""
    pid = pid_of(system.base, everyone(system))
    url = f"{system.base}/Patient/{pid}/$everything"
    first = httpx.get(url, params={"_count": 1000}).json()
    undated = [
        e["resource"]
        for e in first["entry"]
        if e["search"]["mode"] == "match" and not e["resource"].get("meta", {}).get("lastUpdated")
    ]
    assert undated  # the community trust's HL7 v2 gives no lastUpdated
    time.sleep(1.1)
    after = (datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = httpx.get(url, params={"_since": after, "_count": 1000}).json()
    ids = {e["resource"]["id"] for e in later.get("entry", []) if e["search"]["mode"] == "match"}
    assert not ids & {r["id"] for r in undated}


def test_patient_may_be_this_gateways_absolute_url_but_not_anothers(system):
    pid = pid_of(system.base, everyone(system))
    plain = httpx.get(f"{system.base}/Encounter", params={"patient": pid}).json()
    absolute = httpx.get(
        f"{system.base}/Encounter", params={"patient": f"{system.base}/Patient/{pid}"}
    ).json()
    assert absolute["total"] == plain["total"] > 0
    foreign = httpx.get(
        f"{system.base}/Encounter",
        params={"patient": f"https://elsewhere.example/fhir/Patient/{pid}"},
    )
    assert foreign.status_code == 400
    assert foreign.json()["issue"][0]["expression"] == ["patient"]


# --- POST for searches and operations -----------------------------------------------------


def test_fhirpy_execute_calls_everything_by_post_with_its_defaults(system):
    pid = pid_of(system.base, everyone(system))
    client = SyncFHIRClient(system.base)
    bundle = client.execute(f"Patient/{pid}/$everything")
    assert bundle["resourceType"] == "Bundle"
    got = httpx.get(f"{system.base}/Patient/{pid}/$everything").json()
    assert bundle["total"] == got["total"] > 0
    typed = client.reference("Patient", pid).execute(
        "$everything",
        data={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "_type", "valueString": "Encounter"},
                {"name": "_count", "valueInteger": 3},
            ],
        },
    )
    assert {
        e["resource"]["resourceType"] for e in typed["entry"] if e["search"]["mode"] == "match"
    } == {"Encounter"}
    assert len(matches(typed)) == 3
    assert next_url(typed) is not None


JS = Path(__file__).resolve().parents[1] / "js"


def test_fhir_kit_client_operation_and_next_page_work_with_their_defaults(system):
    """fhir-kit-client (JavaScript) POSTs operations with no body or a Parameters body."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "fhir-kit-client").is_dir():
        pytest.skip("fhir-kit-client is not installed: npm ci --prefix tests/js")
    pid = pid_of(system.base, everyone(system))
    run = subprocess.run(
        [node, str(JS / "everything.mjs"), system.base, pid],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["resourceType"] == "Bundle"
    assert got["total"] > 0
    expected = matches(
        httpx.get(
            f"{system.base}/Patient/{pid}/$everything",
            params={"_type": "Encounter", "_count": 1000},
        ).json()
    )
    assert got["encounters"] == len(expected) > 3
    assert got["paged"] == expected


def test_post_search_with_a_form_is_the_same_as_get(system):
    pid = pid_of(system.base, everyone(system))
    got = httpx.get(f"{system.base}/Encounter", params={"patient": pid, "_count": 1000}).json()
    posted = httpx.post(f"{system.base}/Encounter/_search", data={"patient": pid, "_count": "1000"})
    assert posted.status_code == 200, posted.text
    assert matches(posted.json()) == matches(got)


def test_a_post_body_that_is_not_parameters_is_400(system):
    pid = pid_of(system.base, everyone(system))
    r = httpx.post(
        f"{system.base}/Patient/{pid}/$everything",
        content=json.dumps({"resourceType": "Patient"}),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 400


def test_an_unsupported_method_is_405_with_allow(system):
    pid = pid_of(system.base, everyone(system))
    r = httpx.put(f"{system.base}/Patient/{pid}/$everything", content=b"{}")
    assert r.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}


# --- callers, consent and cursors (token mode) ---------------------------------------------


class Gateway:
    def __init__(self, base: str, issuer: Issuer) -> None:
        self.base = base
        self.issuer = issuer

    def token(self, **claims: Any) -> str:
        claims.setdefault("scope", "user/*.cruds")
        return self.issuer.token(aud=self.base, **claims)

    def get(self, url: str, token: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        full = url if url.startswith("http") else f"{self.base}{url}"
        return httpx.get(full, headers=headers, timeout=15, **kw)


@pytest.fixture(scope="module")
def gateway(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("paging")
    db = tmp / "shared.db"
    copy_index(system.env["CARELINK_DATABASE_URL"], db)
    issuer = Issuer()
    extra = {"CARELINK_RESULT_TTL": str(TTL)}
    with token_gateways(system.env, db, issuer, tmp, extra=extra) as started:
        yield Gateway(started[0].base, issuer)


def audit_outcomes(gateway: Gateway, pid: str) -> list[str]:
    """The outcome codes of the patient's audit trail, newest first (without the privacy
    officer's own reads of it, which are audited under the patient too)."""
    officer = gateway.token(role="R0001", purpose_of_use="HOPERAT", sub="privacy-officer")
    r = gateway.get("/AuditEvent", officer, params={"patient": pid, "_count": 1000})
    return [
        e["resource"]["outcome"]
        for e in r.json()["entry"]
        if not any(
            a.get("who", {}).get("identifier", {}).get("value") == "privacy-officer"
            for a in e["resource"]["agent"]
        )
    ]


def test_another_caller_cannot_use_a_cursor(gateway, system):
    alice = gateway.token(sub="clinician-1")
    pid = pid_of(gateway.base, everyone(system), {"Authorization": f"Bearer {alice}"})
    first = gateway.get("/Encounter", alice, params={"patient": pid, "_count": 2})
    link = str(next_url(first.json()))
    before = audit_outcomes(gateway, pid)
    assert gateway.get(link, alice).status_code == 200
    assert audit_outcomes(gateway, pid) == ["0", *before]  # each page access is audited
    unknown = link.replace(parse_qs(urlsplit(link).query)["_cursor"][0], "x" * 32)
    for thief in (
        gateway.token(sub="clinician-2"),  # someone else
        gateway.token(sub="clinician-1", organisation=STRANGER + "9"),  # another organisation
        gateway.token(sub="clinician-1", scope="user/Encounter.rs user/Patient.rs"),  # scopes
        gateway.token(sub="clinician-1", purpose_of_use="ETREAT"),  # purpose
    ):
        stolen = gateway.get(link, thief)
        assert stolen.status_code == 410, stolen.text
        # indistinguishable from a cursor that never existed
        assert stolen.json() == gateway.get(unknown, thief).json()
    assert audit_outcomes(gateway, pid)[:8] == ["4"] * 8  # every attempt audited as refused


def test_an_expired_cursor_is_410_gone(gateway, system):
    alice = gateway.token()
    pid = pid_of(gateway.base, everyone(system), {"Authorization": f"Bearer {alice}"})
    first = gateway.get(f"/Patient/{pid}/$everything", alice, params={"_count": 2})
    link = str(next_url(first.json()))
    time.sleep(TTL + 0.5)  # the stated lifetime passes (not a timing assertion)
    r = gateway.get(link, alice)
    assert r.status_code == 410
    assert "expired" in r.json()["issue"][0]["diagnostics"]


def _deny_acute(pid: str) -> dict[str, Any]:
    deny = {"type": "deny", "actor": [custodian(ACUTE_ODS)]}
    return privacy_consent(pid, {"type": "permit", "provision": [deny]})


def test_the_missing_sources_header_never_names_a_source_consent_hides(gateway, system):
    """No observable of a response depends on data the caller may not see: with acute's
    data withheld by consent, acute failing changes neither header, status nor outcome."""
    person = everyone(system)
    admin = gateway.token(role="R0001")  # a privacy officer records the patient's choice
    stranger = gateway.token(organisation=STRANGER)
    pid = pid_of(gateway.base, person, {"Authorization": f"Bearer {admin}"})
    url = f"/Patient/{pid}/$everything"
    strict = {"Prefer": "partial=fail"}
    system.faults("acute", error_rate=1.0)
    try:
        # the control: before the consent, acute's failure is named
        assert "acute" in missing_names(gateway.get(url, stranger))
        r = httpx.post(
            f"{gateway.base}/Consent",
            content=json.dumps(_deny_acute(pid)),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        try:
            hidden = gateway.get(url, stranger, params={"_count": 1000})
            assert hidden.status_code == 200
            assert MISSING not in hidden.headers
            outcome = [e for e in hidden.json()["entry"] if e["search"]["mode"] == "outcome"]
            assert "acute" not in json.dumps(outcome)
            assert gateway.get(url, stranger, headers=strict).status_code == 200
            search = gateway.get("/Encounter", stranger, params={"patient": pid}, headers=strict)
            assert search.status_code == 200
            assert MISSING not in search.headers
            # a visible source failing too: named, and the hidden one still is not
            system.faults("community", error_rate=1.0)
            both = gateway.get(url, stranger)
            assert missing_names(both) == {"community"}
            refused = gateway.get(url, stranger, headers=strict)
            assert refused.status_code == 503
            assert missing_names(refused) == {"community"}
            assert "acute" not in refused.text
        finally:
            gone = httpx.delete(
                f"{gateway.base}/Consent/{cid}", headers={"Authorization": f"Bearer {admin}"}
            )
            assert gone.status_code == 204
    finally:
        system.heal()


def test_a_consent_change_between_pages_ends_the_cursor(gateway, system):
    person = everyone(system)
    admin = gateway.token(role="R0001")  # a privacy officer records the patient's choice
    stranger = gateway.token(organisation=STRANGER)
    pid = pid_of(gateway.base, person, {"Authorization": f"Bearer {admin}"})
    first = gateway.get(f"/Patient/{pid}/$everything", stranger, params={"_count": 2})
    link = str(next_url(first.json()))
    r = httpx.post(
        f"{gateway.base}/Consent",
        content=json.dumps(_deny_acute(pid)),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 201, r.text
    try:
        after = gateway.get(link, stranger)
        assert after.status_code == 410
        assert "consent" not in after.text.lower()  # the same words as any dead cursor
    finally:
        httpx.delete(
            f"{gateway.base}/Consent/{r.json()['id']}",
            headers={"Authorization": f"Bearer {admin}"},
        )
