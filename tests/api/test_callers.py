"""The caller as consent, the audit trail and GP Connect see them, made once per caller
(``deps.actor``, ``deps._who``, ``deps.requester``): always what making them afresh from
that caller gives, whichever callers came before."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.api.deps import _who, actor, requester
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
        assert actor(caller) == actor.__wrapped__(caller)
        assert _who(caller) == _who.__wrapped__(caller)
        made = requester(caller)
        assert (made.user_id, made.organisation_ods) == (
            caller.subject,
            caller.organisation or "UNK",
        )
