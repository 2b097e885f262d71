"""An event written straight to bytes (``RequestEvents.row``, the request path's) is the
event itself: byte for byte what ``orjson.dumps`` writes for ``RequestEvents.event`` with
its ``id`` last, and its columns what ``columns`` reads from that event, for every
caller, interaction, outcome, patient and break-glass, in any order, whatever the
request's query and id hold."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.audit import events
from carelink.audit.events import Access, RequestEvents, Who, columns, row_of

texts = st.text(max_size=12)  # quotes, backslashes, control characters, any code point
callers = st.one_of(
    st.none(),
    st.builds(
        Who,
        st.sampled_from(["dr-a", 'dr "b"', "nurse\\c", "\u00e9"]),
        st.sampled_from([None, "", "R8000"]),
        st.sampled_from([None, "", "RXX01", "Y\u0000"]),
        st.sampled_from([None, "", "TREAT", "ETREAT"]),
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
            row = made.row(patient, event_id, break_glass)
            assert row[4] == orjson.dumps(event)
            assert row[:4] == columns(event)
            assert row == row_of(event)
            assert orjson.loads(row[4]) == event


def test_a_row_names_its_patient_and_requesting_user():
    """The columns stored beside an event are this event's: its patient and its user,
    none when it has none."""
    access = Access("read", "/fhir/Patient/p1", "rid", "2026-12-01T00:00:00Z", "b")
    made = RequestEvents(access, Who("dr", "R8000", "RXX01", "TREAT"), "0")
    assert made.row("p1", "e1")[:4] == ("2026-12-01T00:00:00Z", "p1", "0", "dr")
    assert made.row(None, "e2")[1] is None
    assert RequestEvents(access, None, "4").row("p1", "e3")[3] is None


def test_a_requests_access_is_immutable():
    """``Access`` (a named tuple, made once a request) cannot be changed once made."""
    access = Access("read", "/fhir/Patient/p1", "rid", "2026-12-01T00:00:00Z", "b")
    try:
        access.recorded = "later"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("an Access can be changed")
