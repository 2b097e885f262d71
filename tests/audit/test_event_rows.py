"""An event written straight to bytes (``RequestEvents.rows``, the request path's) is the
event itself: byte for byte what ``orjson.dumps`` writes for ``RequestEvents.event`` with
its ``id`` last, and its columns what ``columns`` reads from that event, for every
caller, interaction, outcome, patient and break-glass, in any order, whatever the
request's query and id hold."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.audit import events
from carelink.audit.events import Access, RequestEvents, Row, Who, columns, row_of
from carelink.storage.audit_store import Shared, agent_key, whole


def _row(made: RequestEvents, patient: str | None, event_id: str, glass: bool = False) -> Row:
    """The oracle: the event made as a dict, with ``event_id`` as its ``id`` (last),
    serialised by ``orjson`` with the columns ``columns`` reads from it."""
    return row_of({**made.event(patient, glass), "id": event_id})


def _one(made: RequestEvents, patient: str | None, event_id: str, glass: bool = False) -> Row:
    """The request path's row for one patient."""
    return made.rows([patient], lambda: event_id, (), glass)[0]


texts = st.text(max_size=12)  # quotes, backslashes, control characters, any code point
callers = st.one_of(
    st.none(),
    st.builds(
        Who,
        st.sampled_from(["dr-a", 'dr "b"', "nurse\\c", "\u00e9"]),
        st.sampled_from([None, "", "R8000"]),
        st.sampled_from([None, "", "RXX01", "Y\u0000"]),
        st.sampled_from([None, "", "TREAT", "ETREAT"]),
        st.sampled_from(["", "https://idp.example", "urn:carelink:local-issuer", 'i"|\\']),
        st.sampled_from([None, "dr-a", 'c"l\\|']),
        st.sampled_from([None, "p1", 'p"2']),
    ),
)
accesses = st.builds(
    Access,
    st.sampled_from(["read", "search-type", "operation", "create"]),
    texts,
    texts,
    st.sampled_from(["2026-12-01T00:00:00.000001Z", 'a"b', ""]),
    st.sampled_from(["http://a.example/fhir", "http://b.example/fhir"]),
)
requests = st.tuples(
    accesses,
    callers,
    st.sampled_from(["0", "4", "8"]),
    st.one_of(st.none(), st.just(""), texts),
    st.lists(st.tuples(st.one_of(st.none(), texts), st.booleans(), texts), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6), st.booleans())
def test_a_row_is_its_event_serialised_with_the_columns_read_from_it(batch, forget):
    for access, caller, outcome, reason, patients in batch:
        if forget:  # made with nothing remembered, or after other callers' frames
            events._FRAMES.clear()
        made = RequestEvents(access, caller, outcome, reason)
        for patient, break_glass, event_id in patients:
            event = {**made.event(patient, break_glass), "id": event_id}
            row = _one(made, patient, event_id, break_glass)
            assert row[4] == orjson.dumps(event)
            assert row[:4] == columns(event)
            assert row == row_of(event)
            assert orjson.loads(row[4]) == event


@settings(max_examples=200, deadline=None)
@given(
    requests,
    st.lists(st.one_of(st.none(), texts), max_size=5),
    st.sets(texts, max_size=3),
    st.booleans(),
)
def test_a_requests_rows_are_its_rows_one_by_one(request, patients, marked, every):
    """``RequestEvents.rows`` (a search's events, in one loop) gives each patient their
    event's row with the next event id, break-glass when the whole request is or the
    patient is among those marked; nothing else."""
    access, caller, outcome, reason, _ = request
    made = RequestEvents(access, caller, outcome, reason)
    ids = iter(f"e{i}" for i in range(len(patients)))
    rows = made.rows(patients, lambda: next(ids), marked, every)
    one_by_one = [_row(made, p, f"e{i}", every or p in marked) for i, p in enumerate(patients)]
    assert [(*r[:4], whole(r[4])) for r in rows] == one_by_one
    for row, patient in zip(rows, patients, strict=True):
        glass = orjson.loads(whole(row[4])).get("purposeOfEvent") == events._BREAK_GLASS
        assert glass == (every or patient in marked)
    # several people's events in pieces, sharing one object: stored once
    pieces = [r[4] for r in rows if isinstance(r[4], Shared)]
    expected = [p for p in patients if p and len(patients) > 1 and not (every or p in marked)]
    assert len(pieces) == len(expected)
    assert len({id(s.fragments) for s in pieces}) <= 1


def test_a_row_names_its_patient_and_requesting_user():
    """The columns stored beside an event are this event's: its patient and its user,
    none when it has none."""
    access = Access("read", "/fhir/Patient/p1", "rid", "2026-12-01T00:00:00Z", "b")
    made = RequestEvents(access, Who("dr", "R8000", "RXX01", "TREAT"), "0")
    assert _one(made, "p1", "e1")[:4] == ("2026-12-01T00:00:00Z", "p1", "0", agent_key("dr", ""))
    assert _one(made, None, "e2")[1] is None
    assert _one(RequestEvents(access, None, "4"), "p1", "e3")[3] is None


#: callers each ``auth.Principal.identity`` tells apart from the first, by one field
_DR = Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example")
_APART = [
    Who("dr-1", "R8000", "RXX01", "TREAT", "urn:carelink:local-issuer"),
    Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example", client_id="dr-1"),
    Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example", patient="p1"),
    Who("dr-1", "R8000", "RXX01", "TREAT", ""),
]


def test_callers_one_identity_field_apart_never_share_an_agent_or_a_cached_frame():
    """Each caller's rows are their own event's, made after the first caller's frame and
    agents were cached (a cache keyed without the issuer, client id or patient context
    would hand out the first caller's bytes), and no two callers' agents are the same."""
    access = Access("read", "/fhir/Patient/p1", "rid", "2026-12-01T00:00:00Z", "b")
    seen = []
    for caller in [_DR, *_APART]:
        made = RequestEvents(access, caller, "0")
        row = _one(made, "p1", "e1")
        assert row == _row(made, "p1", "e1")
        seen.append(orjson.loads(row[4])["agent"])
    assert all(seen[i] != seen[j] for i in range(len(seen)) for j in range(i))
    who = [orjson.loads(_one(RequestEvents(access, c, "0"), "p1", "e")[4]) for c in (_DR, *_APART)]
    assert who[0]["agent"][1]["who"]["identifier"] == {
        "system": "https://idp.example",
        "value": "dr-1",
    }
    assert who[1]["agent"][1]["who"]["identifier"]["system"] == "urn:carelink:local-issuer"
    assert who[2]["agent"][0]["who"]["identifier"] == {
        "system": "https://idp.example",
        "value": "dr-1",
    }
    assert who[3]["agent"][2]["who"] == {"reference": "Patient/p1"}
    columns_of = {columns(w)[3] for w in who[:2]}
    assert len(columns_of) == 2  # the stored agent column tells the issuers apart


def test_a_requests_access_is_immutable():
    """``Access`` (a named tuple, made once a request) cannot be changed once made."""
    access = Access("read", "/fhir/Patient/p1", "rid", "2026-12-01T00:00:00Z", "b")
    try:
        access.recorded = "later"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("an Access can be changed")
