"""The caller as consent, the audit trail and GP Connect see them, made once per caller
and kept with it (``deps.actor``, ``deps._who``, ``deps.requester``, the audit's frames
``deps._frame_of``): always what making them afresh from that caller gives, whichever
callers came before."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.api.deps import _actor, _frame_of, _who, actor, requester
from carelink.audit.events import frame
from carelink.auth import Principal

callers = st.builds(
    Principal,
    st.sampled_from(["dr-a", "dr-b"]),
    st.sampled_from([None, "R8000", "R8013"]),
    st.sampled_from([None, "RXX01", "B00001"]),
    st.sampled_from([frozenset({"user/*.rs"}), frozenset({"user/Patient.rs"})]),
    st.sampled_from([None, "TREAT", "ETREAT"]),
    st.sampled_from([None, "p1"]),
    st.sampled_from(["", "https://issuer.example"]),
    st.sampled_from([None, "dr-a"]),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(callers, min_size=1, max_size=20))
def test_each_caller_is_seen_as_itself(requests):
    for caller in requests:
        # the same functions without their memo (``lru_cache``'s ``__wrapped__``)
        assert actor(caller) == _actor.__wrapped__(caller)
        assert actor(caller) is actor(caller)  # kept
        assert _who(caller) == _who.__wrapped__(caller)
        made = requester(caller)
        assert (made.user_id, made.organisation_ods) == (
            caller.subject,
            caller.organisation or "UNK",
        )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            callers,
            st.sampled_from(["read", "search-type", "operation"]),
            st.sampled_from(["0", "4", "8"]),
            st.sampled_from([None, "HTTP 404", "withheld by consent"]),
            st.sampled_from(["http://a.example/fhir", "http://b.example/fhir"]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_audit_frame_kept_with_a_caller_is_the_one_made_afresh(requests):
    for caller, interaction, outcome, reason, server in requests:
        kept = _frame_of(caller, server, interaction, outcome, reason)
        assert kept == frame(_who.__wrapped__(caller), server, interaction, outcome, reason)
    assert _frame_of(None, "http://a.example/fhir", "read", "0", None) == frame(
        None, "http://a.example/fhir", "read", "0", None
    )
