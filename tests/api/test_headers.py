"""``deps.header``: a request header read straight from the scope is what Starlette's
``request.headers.get`` gives for it, for any headers a request may carry (repeated,
empty, absent)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from carelink.api.deps import header

NAMES = [b"accept", b"prefer", b"authorization", b"x-request-id"]
values = st.sampled_from([b"", b"*/*", b"handling=strict", b"Bearer a.b.c", b"caf\xe9"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=6))
def test_a_header_read_from_the_scope_is_what_starlette_reads(headers):
    request = Request({"type": "http", "headers": headers})
    for name in NAMES:
        assert header(request, name) == request.headers.get(name.decode())
