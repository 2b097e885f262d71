"""The input bounds (``limits.judge``, which the gateway's front layer runs) decide from
the request's headers alone, before any route runs: 431 when they are too large, 400 or
413 by the first ``Content-Length``, a counted body when the length is declared or
chunked, else the request as it came (no body)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.api.limits import judge

MAX_BODY, MAX_HEADERS = 100, 120

header = st.one_of(
    st.tuples(st.just(b"content-length"), st.sampled_from([b"0", b"100", b"101", b"abc"])),
    st.tuples(st.just(b"transfer-encoding"), st.just(b"chunked")),
    st.tuples(st.sampled_from([b"accept", b"x-pad"]), st.sampled_from([b"*/*", b"p" * 40])),
)


def expected(headers: list[tuple[bytes, bytes]]) -> str:
    """What the bounds do with a request carrying ``headers``, from their description."""
    if sum(len(k) + len(v) + 4 for k, v in headers) > MAX_HEADERS:
        return "431"
    lengths = [v for k, v in headers if k == b"content-length"]
    if lengths:
        if not lengths[0].isdigit():
            return "400"
        return "413" if int(lengths[0]) > MAX_BODY else "counted"
    return "counted" if any(k == b"transfer-encoding" for k, _ in headers) else "as sent"


@settings(max_examples=300, deadline=None)
@given(st.lists(header, max_size=5))
def test_the_bounds_decide_by_the_headers_as_described(headers):
    verdict = judge({"type": "http", "headers": headers}, MAX_BODY, MAX_HEADERS)
    seen = str(verdict[0]) if isinstance(verdict, tuple) else "counted" if verdict else "as sent"
    assert seen == expected(headers)
