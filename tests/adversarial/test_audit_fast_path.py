"""The request path's audit rows (``RequestEvents.rows``: bytes and columns written by hand,
never built as a dict), attacked from outside.

- in process (hypothesis): for hostile callers, queries, request ids, reasons and patient
  ids, a row is byte for byte the general builder's AuditEvent (``audit_event``) with its
  id, its columns are read from that event, no caller string changes the body's shape,
  and the writer process's frame carries it unchanged into SQLite and PostgreSQL;
- through a real gateway (SQLite and PostgreSQL, real simulators): every row written
  for requests with hostile tokens, query strings, paths, X-Request-ID and User-Agent is
  the general builder's event for what the client sent, its columns agree with its body,
  and the patient's audit view lists each disclosure;
- each tampering with those stored rows (a row moved to another patient by column, body
  or both, its time changed, two rows swapped, one deleted, a rewrite with every hash
  recomputed but nothing re-signed) is reported by ``carelink audit verify`` and by
  ``audit.verify`` behind it.
"""

from __future__ import annotations

import base64
import calendar
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.audit.checkpoints import latest, load_key, read
from carelink.audit.events import Access, RequestEvents, Who, audit_event, columns
from carelink.audit.verify import verify
from carelink.audit.writer import frame_rows, rows_frame
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database
from carelink.storage.audit_store import (
    CHAIN,
    GENESIS,
    AuditStore,
    NewEvent,
    agent_key,
    row_hash,
)
from carelink.storage.tables import audit_events
from tests.integration.conftest import System
from tests.support.gateways import BOTH_DATABASES, IndexDatabase, person_id, token_gateways
from tests.support.procs import carelink
from tests.support.tokens import ISSUER, Issuer

#: caller-controlled text meant to break out of a JSON string or pass for another field
INJECTIONS = [
    '"',
    "\\",
    '\\"',
    '","outcome":"0","x":"',
    '"}]},{"what":{"reference":"Patient/someone-else"},"role":{"code":"1"}}',
    '"},"requestor":true,"who":{"identifier":{"value":"root"}}',
    "\u0000\u001f\u007f",
    "\u2028\u2029",
    "\ud7ff\ue000\U0010ffff\U0001f600",
    "Patient/other",
    "%22%5C%00",
    "</script><!--",
]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # any code point
hostile = st.one_of(
    _TEXT,
    st.sampled_from(INJECTIONS),
    st.builds(lambda s, n: s * n, st.sampled_from(INJECTIONS), st.integers(50, 600)),  # long
)
#: issuers a caller's subject is said to be of: the gateway's own, an identity provider's,
#: none, and hostile ones (an issuer is the operator's configuration, but its text is
#: still text)
issuers = st.one_of(
    st.sampled_from(["", "urn:carelink:local-issuer", "https://idp.example"]), hostile
)
callers = st.one_of(
    st.none(),
    st.builds(
        Who,
        hostile,
        st.one_of(st.none(), hostile),
        st.one_of(st.none(), hostile),
        hostile,
        issuers,
        st.one_of(st.none(), hostile),
        st.one_of(st.none(), hostile),
    ),
)
requests = st.tuples(
    st.builds(
        Access,
        st.sampled_from(["read", "search-type", "operation", "create", "history-instance"]),
        hostile,
        hostile,
        hostile,
        hostile,
    ),
    callers,
    st.sampled_from(["0", "4", "8"]),
    st.one_of(st.none(), hostile),
    st.lists(st.tuples(st.one_of(st.none(), hostile), st.booleans()), min_size=1, max_size=3),
)
_KEYS = {"resourceType", "type", "subtype", "action", "recorded", "outcome", "agent"}
_KEYS |= {"source", "entity", "purposeOfEvent", "outcomeDesc", "id"}


def _said(event: dict[str, Any], access: Access, caller: Who | None, patient: str | None) -> None:
    """Every caller-controlled string is where it belongs, and the body has no other shape
    than an event's (what an injected string would change)."""
    assert set(event) <= _KEYS
    assert event["recorded"] == access.recorded
    entities = event["entity"]
    assert len(entities) == (3 if patient else 2)
    if patient:
        assert entities[0]["what"] == {"reference": f"Patient/{patient}"}
    assert base64.b64decode(entities[-2]["query"]).decode() == access.query
    assert entities[-1]["what"] == {"identifier": {"value": access.request_id}}
    agents = event["agent"]
    context = caller is not None and caller.patient is not None
    assert [a.get("requestor") for a in agents] == (
        [False, False] if caller is None else [False, True, *([False] if context else []), False]
    )
    assert agents[-1]["network"]["address"] == access.server
    if caller is not None:
        named = {"system": caller.issuer} if caller.issuer else {}
        assert agents[1]["who"]["identifier"] == {**named, "value": caller.subject}
        assert agents[0]["who"].get("identifier") == (
            None if caller.client_id is None else {**named, "value": caller.client_id}
        )
        if context:
            assert agents[2]["who"] == {"reference": f"Patient/{caller.patient}"}


@settings(max_examples=1500, deadline=None)
@given(st.lists(requests, min_size=1, max_size=4))
def test_a_fast_row_is_the_general_builders_event_whatever_the_caller_sends(batch):
    for access, caller, outcome, reason, patients in batch:
        made = RequestEvents(access, caller, outcome, reason)
        rows = []
        for patient, glass in patients:
            event_id = uuid.uuid4().hex
            row = made.rows([patient], lambda e=event_id: e, (), glass)[0]
            general = {
                **audit_event(access, caller, patient, outcome, reason, glass),
                "id": event_id,
            }
            assert row[4] == orjson.dumps(general)
            stored = orjson.loads(row[4])
            assert (
                row[:4]
                == columns(stored)
                == (
                    access.recorded,
                    patient or None,
                    outcome,
                    agent_key(caller.subject, caller.issuer) if caller else None,
                )
            )
            _said(stored, access, caller, patient or None)
            rows.append(row)
        assert frame_rows(rows_frame(rows)) == rows  # the writer process's frame


#: strings a stored column can hold on both databases (PostgreSQL text takes no NUL;
#: the gateway's columns are index ids, printable token claims and its own instants)
_COLUMN_SAFE = [s for s in INJECTIONS if "\u0000" not in s] + ["\u00e9" * 64]


def test_hostile_rows_are_stored_and_read_back_unchanged_and_verify(database_url):
    """Rows with hostile strings everywhere, appended as the writer appends them, read back
    byte for byte with the same columns, and the trail verifies."""
    db = Database(database_url)
    db.migrate()
    store = AuditStore(db)
    try:
        made = []
        for i, text in enumerate(_COLUMN_SAFE):
            access = Access("read", text * 3, text, f"2026-12-01T00:00:{i:02d}.000000Z", text)
            who = Who(text[:200], text, text, text, text, text, text[:64])
            for patient in (text[:64], None):
                made += RequestEvents(access, who, "4", text).rows(
                    [patient], lambda i=i: f"e{i}", (), True
                )
        store.append([NewEvent(*row) for row in frame_rows(rows_frame(made))])
        back = list(store.rows())
        assert [(r.recorded, r.patient_id, r.outcome, r.agent, r.event) for r in back] == made
        assert verify(back) == []
    finally:
        store.close()
        db.dispose()


# --- through a real gateway ----------------------------------------------------------

EVERY = 5
#: token claims that are valid text (printable, at most 200 characters) and JSON-special
CLAIMS = {
    "sub": 'dr "q" \\ }]},{"x":"\u00e9\u4e2d\U0001f600',
    "role": 'R8000"}]',
    "organisation": 'RXX01","who":{"identifier":{"value":"someone-else"}}',
    "purpose_of_use": "TREAT",  # a direct-care purpose: anything else is refused
}
#: a purpose of use meant to pass for break-glass (refused: not a direct-care purpose)
PURPOSE = 'TREAT"}]}],"purposeOfEvent":[{"coding":[{"code":"BTG'

#: a break-glass reason (kept with the grant; the event says BTG, never the free text)
REASON = 'unconscious"}],"outcome":"0","x":"\\\t\u2028\U0001f600 ' * 4
AGENT = 'Mozilla/5.0 "}]},{"x":1} \\ \u00e9'
BAD_ID = '"}],"x":"\\'  # refused by the gateway's pattern: a new id is made
ODD_ID = "a/b+c=d:e.f-_" + "z" * 100  # allowed by the pattern, at its odd edge
ODD_QUERY = "_count=5&x=" + quote('"}]\\\u00e9<>', safe="") + "&y=%E9%FF%22"
NUL_QUERY = "x=" + quote('"}]\u0000', safe="")  # a control character: refused (400)


@dataclass
class Sent:
    """One request as the client made it, and what its audit rows should say."""

    interaction: str
    path: str  # as sent, percent-encoded
    query: str  # the raw query string sent ('' for none)
    claims: dict[str, Any] | None
    patients: list[str | None]
    outcome: str
    #: refused before its token was looked at (the URL's bounds): no caller is known
    unverified: bool = False
    body: Any = None  # a JSON body: POSTed
    glass: bool = False  # marked as access under break-glass
    request_id: str = ""  # the id the answer carried
    started: float = 0.0
    ended: float = 0.0


@dataclass
class Served:
    base: str
    env: dict[str, str]
    url: str  # the database
    issuer: Issuer
    pid: str
    other: str  # another person in the index
    sent: list[Sent]


def _call(base: str, issuer: Issuer, sent: Sent, request_id: str) -> None:
    headers = {"X-Request-ID": request_id, "User-Agent": AGENT.encode()}
    if sent.claims is not None:
        headers["Authorization"] = f"Bearer {issuer.token(aud=base, **sent.claims)}"
    url = base + sent.path + ("?" + sent.query if sent.query else "")
    sent.started = time.time()
    if sent.body is None:
        r = httpx.get(url, headers=headers, timeout=30)
    else:
        headers["Content-Type"] = "application/fhir+json"
        r = httpx.post(url, headers=headers, content=orjson.dumps(sent.body), timeout=30)
    sent.ended = time.time()
    assert (r.status_code < 300) == (sent.outcome == "0"), (sent.path, r.status_code, r.text)
    assert r.status_code in (200, 201, 400, 401, 403, 404), (sent.path, r.status_code, r.text)
    sent.request_id = r.headers["X-Request-ID"]


def _script(base: str, issuer: Issuer, system: System) -> tuple[str, str, list[Sent]]:
    people = [p for p in system.population if {"gp", "acute"} <= p.sources]
    plain = issuer.token(aud=base)
    pid, other = (
        person_id(base, f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}", plain) for person in people[:2]
    )
    nhs = quote(f"{NHS_NUMBER_SYSTEM}|{people[0].nhs_number}", safe="")
    narrow = {**CLAIMS, "scope": "user/Observation.rs"}
    odd_path = "/Patient/" + quote('x"}]\\\u00e9', safe="")
    sent = [
        Sent("search-type", "/Patient", f"identifier={nhs}", CLAIMS, [pid], "0"),
        Sent("read", f"/Patient/{pid}", "", CLAIMS, [pid], "0"),
        Sent("operation", f"/Patient/{pid}/$everything", "", CLAIMS, [pid], "0"),
        Sent("read", f"/Patient/{pid}", ODD_QUERY, CLAIMS, [pid], "0"),
        Sent("read", f"/Patient/{pid}", "", narrow, [pid], "4"),
        Sent("read", f"/Patient/{pid}", "", {**CLAIMS, "purpose_of_use": PURPOSE}, [pid], "4"),
        Sent("read", odd_path, ODD_QUERY, CLAIMS, [None], "4"),
        Sent("read", f"/Patient/{pid}", NUL_QUERY, CLAIMS, [pid], "4", unverified=True),
        Sent("read", f"/Patient/{other}", "", None, [other], "4"),
    ]
    glass = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
            {"name": "purpose", "valueCode": "ETREAT"},
            {"name": "reason", "valueString": REASON},
        ],
    }
    clinician = {**CLAIMS, "role": "R8000"}  # a role that may break glass
    sent.append(Sent("operation", "/Patient/$break-glass", "", clinician, [pid], "0", body=glass))
    sent[-1].glass = True
    for i, s in enumerate(sent):
        _call(base, issuer, s, BAD_ID if i % 2 else f"{ODD_ID}-{i}")
    # further events, so that a checkpoint is signed past every row above
    for i in range(EVERY + 1):
        _call(base, issuer, Sent("read", f"/Patient/{other}", "", CLAIMS, [other], "0"), f"f{i}")
    return pid, other, sent


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def served(
    request: pytest.FixtureRequest, system: System, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"fast-path-{request.param}")
    extra = {
        "CARELINK_AUDIT_CHECKPOINTS": str(tmp / "checkpoints"),
        "CARELINK_AUDIT_KEYS": str(tmp / "audit-keys"),
        "CARELINK_AUDIT_CHECKPOINT_EVERY": str(EVERY),
    }
    issuer = Issuer()
    with ExitStack() as stack:
        url = stack.enter_context(IndexDatabase(request.param, system, tmp))
        extra["CARELINK_DATABASE_URL"] = url  # a URL, not the path it is taken for
        [started] = stack.enter_context(
            token_gateways(system.env, tmp / "unused.db", issuer, tmp, extra=extra)
        )
        pid, other, sent = _script(started.base, issuer, system)
        yield Served(started.base, started.env, url, issuer, pid, other, sent)


_COLUMNS = ("seq", "recorded", "patient_id", "outcome", "event", "prev_hash", "hash", "agent")


def _table(url: str) -> list[dict[str, Any]]:
    """Every stored row, as stored (the event as bytes)."""
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            found = conn.execute(
                sa.text(f"SELECT {', '.join(_COLUMNS)}, chain FROM audit_events ORDER BY seq")  # noqa: S608
            ).all()
    finally:
        db.dispose()
    return [{**r._asdict(), "event": bytes(r.event)} for r in found]


def _request_id(event: dict[str, Any]) -> str:
    return str(event["entity"][-1]["what"]["identifier"]["value"])


def _who(claims: dict[str, Any] | None) -> Who | None:
    if claims is None:
        return None
    return Who(
        claims["sub"],
        claims["role"],
        claims["organisation"],
        claims["purpose_of_use"],
        ISSUER,
        claims.get("client_id"),
        claims.get("patient"),
    )


def test_every_row_is_the_general_builders_event_for_what_the_client_sent(served: Served):
    stored = _table(served.url)
    by_request: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for row in stored:
        event = orjson.loads(row["event"])
        kept = (row["recorded"], row["patient_id"], row["outcome"], row["agent"])
        assert kept == columns(event), row["seq"]  # every indexed column agrees with its body
        by_request.setdefault(_request_id(event), []).append((row, event))
    prefix = httpx.URL(served.base).path
    for s in served.sent:
        rows = by_request[s.request_id]
        assert [row["patient_id"] for row, _ in rows] == s.patients, (s, rows)
        who = None if s.unverified else _who(s.claims)
        query = unquote(prefix + s.path) + ("?" + s.query if s.query else "")
        for (row, event), patient in zip(rows, s.patients, strict=True):
            recorded = row["recorded"]
            stamp = calendar.timegm(time.strptime(recorded[:19], "%Y-%m-%dT%H:%M:%S"))
            assert s.started - 1 <= stamp <= s.ended + 1  # when: the gateway's clock, then
            assert re.fullmatch(r"[0-9a-f]{32}", event["id"])
            reason = event.get("outcomeDesc")
            assert (reason is None) == (s.outcome == "0")
            access = Access(s.interaction, query, s.request_id, recorded, served.base)
            general = audit_event(access, who, patient, s.outcome, reason, s.glass)
            assert row["event"] == orjson.dumps({**general, "id": event["id"]}), s.path
            _said(event, access, who, patient)
    everything = b"".join(row["event"] for row in stored)
    assert BAD_ID.encode() not in everything
    assert b"unconscious" not in everything


def test_a_request_refused_before_routing_is_filed_under_the_person_its_path_names(
    served: Served,
):
    """A read of ``/Patient/{id}`` refused by the input bounds (a NUL in its query), before
    any route saw it: filed under that person as a read, not under nobody as a search."""
    [refused] = [s for s in served.sent if s.query == NUL_QUERY]
    found = [
        (row["patient_id"], orjson.loads(row["event"]))
        for row in _table(served.url)
        if _request_id(orjson.loads(row["event"])) == refused.request_id
    ]
    assert [(p, e["subtype"][0]["code"], e["outcome"]) for p, e in found] == [
        (served.pid, "read", "4")
    ]


def _officer(served: Served) -> str:
    return served.issuer.token(
        aud=served.base, role="R0001", purpose_of_use="HOPERAT", sub="privacy-officer"
    )


def test_the_patients_audit_view_lists_every_disclosure_about_them(served: Served):
    officer = {"Authorization": f"Bearer {_officer(served)}"}
    for pid in (served.pid, served.other):
        seen: list[str] = []
        page = httpx.get(
            f"{served.base}/AuditEvent", params={"patient": pid, "_count": 3}, headers=officer
        )
        total = page.json()["total"]
        while True:
            assert page.status_code == 200, page.text
            seen += [_request_id(e["resource"]) for e in page.json().get("entry", [])]
            following = [x["url"] for x in page.json()["link"] if x["relation"] == "next"]
            if not following:
                break
            page = httpx.get(following[0], headers=officer)
        assert len(seen) == total == len(set(seen))
        about = [s.request_id for s in served.sent if pid in s.patients]
        assert about
        assert set(about) <= set(seen)


# --- tampering with the stored rows -------------------------------------------------


def _rehash(rows: list[dict[str, Any]], start: int = 0) -> None:
    """What an intruder with the database (but not the signing key) can do: number the
    rows again from ``start`` on and recompute every hash, so the chain holds."""
    prev = rows[start - 1]["hash"] if start else GENESIS
    first = rows[0]["seq"]
    for i in range(start, len(rows)):
        row = rows[i]
        row["seq"] = first + i
        row["prev_hash"] = prev
        row["hash"] = prev = row_hash(
            prev,
            row["seq"],
            row["recorded"],
            row["patient_id"],
            row["outcome"],
            row["agent"],
            row["event"],
        )
        row["chain"] = CHAIN


def _moved_body(row: dict[str, Any], pid: str, other: str) -> None:
    row["event"] = row["event"].replace(f"Patient/{pid}".encode(), f"Patient/{other}".encode())


def _swap(rows: list[dict[str, Any]], i: int, *keys: str) -> None:
    for key in keys:
        rows[i][key], rows[i + 1][key] = rows[i + 1][key], rows[i][key]


_ALL = ("recorded", "patient_id", "outcome", "event", "prev_hash", "hash", "agent")
EARLIER = "2020-01-01T00:00:00.000000Z"

#: each attack: what it does to the rows (``i``: the row of a read of ``pid``) and what
#: verification must say about the row at ``i`` (an index into the rows as first stored;
#: of the row after it for a deletion, of the checkpoint when every hash was recomputed)
ATTACKS: dict[str, tuple[Any, str]] = {
    "moved by column": (
        lambda rows, i, p, o: rows[i].update(patient_id=o),
        "patient_id differs from its event (edited)",
    ),
    "moved by body": (
        lambda rows, i, p, o: _moved_body(rows[i], p, o),
        "content does not match its hash (edited)",
    ),
    "moved by column and body": (
        lambda rows, i, p, o: (_moved_body(rows[i], p, o), rows[i].update(patient_id=o)),
        "content does not match its hash (edited)",
    ),
    "moved by column and body, every hash recomputed": (
        lambda rows, i, p, o: (
            _moved_body(rows[i], p, o),
            rows[i].update(patient_id=o),
            _rehash(rows, i),
        ),
        "record differs from the checkpoint (rewritten)",
    ),
    "time changed in the column": (
        lambda rows, i, p, o: rows[i].update(recorded=EARLIER),
        "recorded differs from its event (edited)",
    ),
    "time changed in column and body": (
        lambda rows, i, p, o: rows[i].update(
            recorded=EARLIER,
            event=rows[i]["event"].replace(rows[i]["recorded"].encode(), EARLIER.encode()),
        ),
        "content does not match its hash (edited)",
    ),
    "agent changed in the column": (
        lambda rows, i, p, o: rows[i].update(agent="someone-else"),
        "agent differs from its event (edited)",
    ),
    "two rows swapped": (
        lambda rows, i, p, o: _swap(rows, i, *_ALL),
        "does not follow the record before it (deleted, inserted or reordered)",
    ),
    "two bodies swapped": (
        lambda rows, i, p, o: _swap(rows, i, "event"),
        "content does not match its hash (edited)",
    ),
    "one row deleted": (
        lambda rows, i, p, o: rows.pop(i),
        "a record is missing or was inserted",  # said of the row after it
    ),
    "one row deleted, the rest renumbered and rehashed": (
        lambda rows, i, p, o: (rows.pop(i), _rehash(rows, i)),
        "checkpoint",  # rewritten, or truncated before it: which depends on the tail
    ),
}


def _store(url: str, rows: list[dict[str, Any]]) -> None:
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_events"))
            conn.execute(audit_events.insert(), rows)
    finally:
        db.dispose()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_tampering_with_a_fast_row_is_reported(served: Served, attack: str):
    tamper, problem = ATTACKS[attack]
    original = _table(served.url)
    checkpoint = read(latest(Path(served.env["CARELINK_AUDIT_CHECKPOINTS"])) or Path("none"))
    key = load_key(Path(served.env["CARELINK_AUDIT_KEYS"])).public_key()
    db = Database(served.url)
    try:
        assert verify(AuditStore(db).rows(), checkpoint, key) == []
        read_of = served.sent[1].request_id  # GET /Patient/{pid}: one row, about pid
        i = next(
            n for n, r in enumerate(original) if _request_id(orjson.loads(r["event"])) == read_of
        )
        seq = original[i]["seq"]
        assert seq < int(checkpoint["seq"])
        rows = [dict(r) for r in original]
        tamper(rows, i, served.pid, served.other)
        _store(served.url, rows)
        try:
            found = verify(AuditStore(db).rows(), checkpoint, key)
            cli = carelink(["audit", "verify"], served.env)
        finally:
            _store(served.url, original)
    finally:
        db.dispose()
    at = int(checkpoint["seq"]) if "checkpoint" in problem else seq + ("missing" in problem)
    assert [f for f in found if f.seq == at and problem in f.problem], found
    assert cli.returncode == 5, cli.stdout + cli.stderr
    assert re.search(f"^record {at}: .*{re.escape(problem)}", cli.stdout, re.M), cli.stdout
