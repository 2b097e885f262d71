"""AuditEvents made for many callers in any order carry each one's own agents: the
parts made once per caller and server (``audit.events._agents``) never mix callers,
and an event is what a fresh one for the same request would be."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.audit import events
from carelink.audit.events import Access, Who, audit_event, columns

names = st.sampled_from(["dr-a", "dr-b", "nurse-c"])
callers = st.one_of(
    st.none(),
    st.builds(
        Who,
        names,
        st.sampled_from([None, "R8000", "R8013"]),
        st.sampled_from([None, "RXX01", "RYY02"]),
        st.sampled_from([None, "TREAT", "ETREAT"]),
    ),
)
servers = st.sampled_from(["http://a.example/fhir", "http://b.example/fhir"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(callers, servers, st.sampled_from(["p1", "p2", None])), max_size=30))
def test_each_event_has_its_own_callers_agents(requests):
    for caller, server, patient in requests:
        access = Access("read", "/fhir/Patient/x", "rid", "2026-12-01T00:00:00.000Z", server)
        made = audit_event(access, caller, patient, "0")
        events._AGENTS.clear()  # the same event made with nothing remembered
        fresh = audit_event(access, caller, patient, "0")
        assert orjson.dumps(made) == orjson.dumps(fresh)
        user = next((a for a in made["agent"] if a["requestor"]), None)
        if caller is None:
            assert user is None
        else:
            assert user is not None
            assert user["who"]["identifier"]["value"] == caller.subject
            assert user["who"].get("display") == caller.organisation
            assert columns(made)[3] == caller.subject
        assert made["agent"][-1]["network"]["address"] == server
