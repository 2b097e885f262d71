"""The GP provider's operations answered ahead of the framework (``PostsFirst``): the
same status, headers and body as the framework's route gives, the same faults in the
same order, and checks made once for a question still made for every request.

Both paths run under uvicorn on loopback ports: the whole app (the raw path first), and
its router alone (the Starlette route, as every request went before)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.responses import Response

from carelink.fhir.gpconnect import (
    INTERACTION_ID,
    JWT_LIFETIME,
    MIGRATE_INTERACTION_ID,
    MIGRATE_OPERATION,
)
from carelink.simulators import gp
from carelink.simulators.base import Behaviour, HeaderMap, http_now, send_answer
from carelink.simulators.fhir_store import PopulationStore
from carelink.simulators.gpconnect_checks import Asked, Refusal, check_headers, check_parameters
from carelink.sources.gpconnect import GPConnectSource
from tests.support.servers import run_app

DATA = Path(__file__).resolve().parents[1] / "data" / "gpconnect"
OP = "/Patient/$gpc.getstructuredrecord"
TIMES = {"date", "last-modified"}


def _nhs(store: PopulationStore, n: int) -> str:
    rec = store.record(store.patient_ids()[n]) or []
    return next(i["value"] for i in rec[0]["identifier"] if i["system"].endswith("nhs-number"))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Behaviour, str, str, list[str]]]:
    behaviour = Behaviour(rng=random.Random(3))
    app = gp.create_app(seed=7, size=40, behaviour=behaviour)
    store = PopulationStore("gp", 7, 40)
    with run_app(app) as raw, run_app(app.router) as routed:
        yield behaviour, raw, routed, [_nhs(store, n) for n in range(3)]


def _request(url: str, nhs: str, **change: Any) -> tuple[dict[str, str], bytes]:
    _, headers, body = GPConnectSource(None, url).request(nhs, None)  # type: ignore[arg-type]
    headers = {**headers, **{k.replace("_", "-"): v for k, v in change.items()}}
    return headers, body


def _what(resp: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    heads = [(k, "" if k in TIMES else v) for k, v in resp.headers.multi_items()]
    return resp.status_code, heads, resp.content


def _allergies(nhs: str, **part: Any) -> bytes:
    doc = json.loads((DATA / "requests/allergies_request1.json").read_text())
    doc["parameter"][0]["valueIdentifier"]["value"] = nhs
    if part:
        doc["parameter"][1]["part"] = [part]
    return json.dumps(doc).encode()


CASES: dict[str, Any] = {
    "full record": {},
    "allergies": {"body": "allergies"},
    "bad trace id": {"Ssp_TraceID": "nope"},
    "no sender": {"Ssp_From": ""},
    "wrong interaction": {"Ssp_InteractionID": "urn:nhs:names:services:gpconnect:x"},
    "no bearer": {"Authorization": "Basic abc"},
    "not a JWT": {"Authorization": "Bearer a.b"},
    "media type": {"Content_Type": "application/json"},
    "not JSON": {"body": b"{"},
    "bad part": {"body": "bad part"},
    "unknown person": {"body": "unknown"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_raw_answer_is_the_routed_one(served, case: str) -> None:
    _, raw, routed, people = served
    change = dict(CASES[case])
    body_kind = change.pop("body", None)
    got = []
    for url in (raw, routed):
        headers, body = _request(url, people[0], **change)
        if body_kind == "allergies":
            body = _allergies(people[0])
        elif body_kind == "bad part":
            body = _allergies(people[0], name="includeResolvedAllergies", valueBoolean="yes")
        elif body_kind == "unknown":
            body = _allergies("9434765919")
        elif isinstance(body_kind, bytes):
            body = body_kind
        got.append(httpx.post(f"{url}{OP}", content=body, headers=headers))
    assert _what(got[0]) == _what(got[1])
    assert got[0].content  # an answer, not an empty one


def test_a_refusal_set_at_run_time_is_answered_on_the_raw_path(served) -> None:
    _, raw, _, people = served
    headers, body = _request(raw, people[1])
    assert httpx.post(f"{raw}{OP}", content=body, headers=headers).status_code == 200
    httpx.post(f"{raw}/_admin/gpconnect", json={"refuse": {people[1]: "NO_PATIENT_CONSENT"}})
    try:
        refused = httpx.post(f"{raw}{OP}", content=body, headers=headers)
        assert refused.status_code == 403
        code = refused.json()["issue"][0]["details"]["coding"][0]["code"]
        assert code == "NO_PATIENT_CONSENT"
        other_headers, other = _request(raw, people[2])
        assert httpx.post(f"{raw}{OP}", content=other, headers=other_headers).status_code == 200
    finally:
        httpx.post(f"{raw}/_admin/gpconnect", json={"refuse": {}})


def test_raw_answers_keep_the_faults_in_their_order(served) -> None:
    behaviour, raw, _, people = served
    headers, body = _request(raw, people[0])
    behaviour.rng, replay = random.Random(11), random.Random(11)
    behaviour.error_rate, behaviour.malformed_rate = 0.3, 0.3
    got, expected = [], []
    try:
        for _ in range(40):
            got.append(httpx.post(f"{raw}{OP}", content=body, headers=headers).status_code)
            replay.random()  # the hang's draw
            expected.append(500 if replay.random() < 0.3 else 200)
        behaviour.error_rate, behaviour.malformed_rate = 0.0, 1.0
        malformed = httpx.post(f"{raw}{OP}", content=body, headers=headers)
        behaviour.malformed_rate, behaviour.down = 0.0, True
        down = httpx.post(f"{raw}{OP}", content=body, headers=headers)
    finally:
        behaviour.error_rate = behaviour.malformed_rate = 0.0
        behaviour.down = False
    assert got == expected
    assert {200, 500} <= set(got)
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    assert down.status_code == 503


def test_a_get_of_the_operation_is_answered_as_before(served) -> None:
    """Only a POST is taken ahead of the routes: a GET finds the read route (404)."""
    _, raw, routed, _ = served
    got = [httpx.get(f"{url}{OP}") for url in (raw, routed)]
    assert _what(got[0]) == _what(got[1])
    assert got[0].status_code == 404


def _claims(now: int) -> dict[str, str]:
    _, headers, _ = GPConnectSource(None, "http://x", clock=lambda: float(now)).request(  # type: ignore[arg-type]
        "9434765919", None
    )
    return headers


def test_a_jwt_accepted_once_is_checked_against_the_clock_every_time() -> None:
    """The headers' verdict is kept for a question; a later clock is another question."""
    issued = 1_800_000_000
    headers = HeaderMap([(k.lower().encode(), v.encode()) for k, v in _claims(issued).items()])
    assert not isinstance(check_headers(headers, INTERACTION_ID, issued), Refusal)
    assert not isinstance(check_headers(headers, INTERACTION_ID, issued), Refusal)
    late = check_headers(headers, INTERACTION_ID, issued + JWT_LIFETIME)
    assert isinstance(late, Refusal)
    assert "expired" in json.dumps(late.outcome)
    early = check_headers(headers, INTERACTION_ID, issued - 61)
    assert isinstance(early, Refusal)
    assert "future" in json.dumps(early.outcome)
    migration = check_headers(headers, INTERACTION_ID, issued, reason="migration")
    assert isinstance(migration, Refusal)


def test_a_kept_header_verdict_does_not_pass_a_bad_trace_id() -> None:
    issued = 1_800_000_100
    good = _claims(issued)
    raw = [(k.lower().encode(), v.encode()) for k, v in good.items()]
    assert not isinstance(check_headers(HeaderMap(raw), INTERACTION_ID, issued), Refusal)
    bad = [(k, b"not-a-uuid" if k == b"ssp-traceid" else v) for k, v in raw]
    refused = check_headers(HeaderMap(bad), INTERACTION_ID, issued)
    assert isinstance(refused, Refusal)
    assert "Ssp-TraceID" in json.dumps(refused.outcome)


def test_parameters_read_once_are_read_again_for_another_body_or_day() -> None:
    body = _allergies("9434765919")
    first = check_parameters(body, date(2026, 1, 1))
    assert isinstance(first, Asked)
    assert check_parameters(body, date(2026, 1, 1)) is first
    other = check_parameters(_allergies("9690937286"), date(2026, 1, 1))
    assert isinstance(other, Asked)
    assert other.nhs_number == "9690937286"
    tomorrow = (date(2026, 1, 1) + timedelta(days=1)).isoformat()
    period = {"name": "investigationSearchPeriod", "valuePeriod": {"start": tomorrow}}
    doc = json.loads(_allergies("9434765919"))
    doc["parameter"].append({"name": "includeInvestigations", "part": [period]})
    dated = json.dumps(doc).encode()
    assert isinstance(check_parameters(dated, date(2026, 1, 2)), Asked)
    refused = check_parameters(dated, date(2026, 1, 1))
    assert isinstance(refused, Refusal)
    assert "future" in json.dumps(refused.outcome)


def test_header_map_reads_as_starlette_headers_do() -> None:
    from starlette.datastructures import Headers

    raw = [(b"x-a", b"1"), (b"ssp-from", b"first"), (b"ssp-from", b"second"), (b"x-b", b"\xe9")]
    mine, theirs = HeaderMap(raw), Headers(raw=raw)
    for name in ("X-A", "Ssp-From", "ssp-from", "x-b", "absent"):
        assert mine.get(name) == theirs.get(name)
    assert mine.get("absent", "") == ""


def test_send_answer_sends_what_a_starlette_response_sends() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    extra = [(b"etag", b'"abc"'), (b"last-modified", http_now().encode())]
    asyncio.run(send_answer(send, 404, b'{"x":1}', "application/fhir+json", extra))
    made = Response(
        b'{"x":1}',
        status_code=404,
        media_type="application/fhir+json",
        headers={"ETag": '"abc"', "Last-Modified": extra[1][1].decode()},
    )
    assert sent[0]["status"] == 404
    assert sent[0]["headers"] == made.raw_headers
    assert sent[1]["body"] == made.body


REQUESTS = sorted((DATA / "requests").glob("*.json"))
#: header changes drawn for the oracle test: none, a header gone, a value that is wrong
HEADER_CHANGES: list[dict[str, str | None]] = [
    {},
    {"Ssp-TraceID": None},
    {"Ssp-From": None},
    {"Ssp-To": "not-an-asid"},
    {"Ssp-InteractionID": MIGRATE_INTERACTION_ID},
    {"Authorization": None},
    {"Authorization": "Bearer a.b.c"},
    {"Content-Type": "application/fhir+xml"},
    {"Accept": "application/xml"},
]


@st.composite
def drawn_requests(draw: Any, people: list[str]) -> tuple[str, dict[str, str | None], bytes]:
    """An operation, header changes and a body: a published request with a drawn NHS
    number (the population's, unknown, a bad check digit), or bytes that are not one."""
    op = draw(st.sampled_from([OP, f"/Patient/{MIGRATE_OPERATION}"]))
    change = draw(st.sampled_from(HEADER_CHANGES))
    nhs = draw(st.sampled_from([*people, "9434765919", "9434765918", "12345"]))
    kind = draw(st.sampled_from(["published", "published", "garbage", "empty"]))
    if kind == "garbage":
        return op, change, draw(st.binary(max_size=40))
    if kind == "empty":
        return op, change, b""
    doc = json.loads(draw(st.sampled_from(REQUESTS)).read_text())
    for p in doc.get("parameter", []):
        if p.get("name") == "patientNHSNumber":
            p["valueIdentifier"]["value"] = nhs
    return op, change, json.dumps(doc).encode()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_drawn_requests_are_answered_alike_on_both_paths(served, data: st.DataObject) -> None:
    """The Starlette routes stay the oracle of the raw path over drawn requests: either
    operation, published request bodies with the population's and other NHS numbers,
    bodies that are not JSON, headers missing or wrong."""
    _, raw, routed, people = served
    op, change, body = data.draw(drawn_requests(people))
    got = []
    for url in (raw, routed):
        headers, _ = _request(url, people[0])
        for name, value in change.items():
            headers.pop(name, None)
            if value is not None:
                headers[name] = value
        got.append(httpx.post(f"{url}{op}", content=body, headers=headers))
    assert _what(got[0]) == _what(got[1])
