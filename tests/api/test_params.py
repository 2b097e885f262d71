"""POST bodies as search parameters: FHIR Parameters resources."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from carelink.api import params as P
from carelink.api.bodies import CONTROL
from carelink.api.params import Prefer, parameters_of, prefer
from carelink.errors import InvalidRequest, UnsupportedFormat

names = st.sampled_from(["start", "end", "_since", "_type", "_count"])
values = st.one_of(
    # a FHIR string: no control character but tab, CR and LF (others are refused, below)
    st.tuples(st.just("valueString"), st.text(max_size=20).filter(lambda t: not CONTROL.search(t))),
    st.tuples(st.just("valueDate"), st.dates().map(str)),
    st.tuples(st.just("valueInteger"), st.integers(0, 10_000)),
)


@given(st.lists(st.tuples(names, values), max_size=8))
def test_every_parameter_comes_back_as_text_in_order(pairs):
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": n, kind: v} for n, (kind, v) in pairs],
    }
    got = parameters_of(orjson.dumps(body))
    expected: dict[str, list[str]] = {}
    for n, (_, v) in pairs:
        expected.setdefault(n, []).append(str(v))
    assert got == expected


@given(st.text(max_size=10), st.sampled_from("\x00\x01\x08\x0b\x1f"), st.text(max_size=10))
def test_a_parameter_holding_a_control_character_is_refused(before, control, after):
    body = {"resourceType": "Parameters", "parameter": [{"name": "start", "valueString": ""}]}
    body["parameter"][0]["valueString"] = before + control + after
    with pytest.raises(InvalidRequest, match="control characters"):
        parameters_of(orjson.dumps(body))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"resourceType": "Patient"}',
        b'{"resourceType": "Parameters", "parameter": {"name": "x"}}',
        b'{"resourceType": "Parameters", "parameter": [{"name": "x"}]}',
        b'{"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}',
        b'{"resourceType": "Parameters", "parameter": [{"name": "x", "valueBoolean": true}]}',
        b'{"resourceType": "Parameters", "parameter": [{"name": "x", "valueCoding": {}}]}',
        b'{"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "a", '
        b'"valueInteger": 1}]}',
        b'{"resourceType": "Parameters", "parameter": ["x"]}',
    ],
)
def test_what_is_not_a_simple_parameters_body_is_400(body):
    with pytest.raises(InvalidRequest):
        parameters_of(body)


def _request(*headers: tuple[bytes, bytes]) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": list(headers)})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), Prefer(False, None, False)),
        (((b"prefer", b"handling=strict"),), Prefer(True, None, False)),
        (((b"prefer", b"wait=2.5, partial=fail"),), Prefer(False, 2.5, True)),
        (((b"accept", b"*/*"), (b"prefer", b"partial=allow")), Prefer(False, None, False)),
        (
            ((b"prefer", b"handling=strict"), (b"prefer", b"partial=fail")),
            Prefer(True, None, False),
        ),
    ],
)
def test_prefer_is_read_once_per_request_from_its_first_header(headers, expected):
    """What the first ``Prefer`` header asks, parsed once: a request that asks again gets
    the very same answer. Fails when the kept answer is another request's or is not kept."""
    request = _request(*headers)
    got = prefer(request)
    assert got == expected
    assert prefer(request) is got
    assert prefer(_request((b"prefer", b"handling=strict, wait=1"))) == Prefer(True, 1.0, False)


@pytest.mark.parametrize("value", [b"partial=maybe", b"wait=soon", b"wait=0"])
def test_an_unreadable_prefer_is_refused_every_time_it_is_asked(value):
    request = _request((b"prefer", value))
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            prefer(request)


RANGES = [
    "*/*",
    "application/*",
    "json",
    "application/json",
    "application/fhir+json",
    "application/json+fhir",
    "text/html",
    "application/xml",
    "application/fhir+xml",
    "*/*x",
    "application/jsonx",
    "Application/JSON",
    "text/*",
    "",
]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(RANGES),
            st.sampled_from(["", ";q=0.9", "; charset=utf-8", ";"]),
            st.sampled_from(["", " ", "  "]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_an_accept_header_is_met_when_one_of_its_ranges_admits_fhir_json(ranges):
    """``check_accept`` (with its short cut for a header that is one range alone) refuses
    exactly the headers none of whose ranges, parameters and spaces aside, admits FHIR
    JSON."""
    accept = ",".join(f"{pad}{kind}{params}{pad}" for kind, params, pad in ranges)
    admitted = {"*/*", "application/*", *P.JSON_FORMATS}
    met = any(a.split(";")[0].strip() in admitted for a in accept.split(","))
    try:
        P.check_accept(accept)
    except UnsupportedFormat:
        assert not met, accept
    else:
        assert met, accept


_QUERY_TEXT = st.text(alphabet=st.sampled_from("aZ09_.~- &=+%/é|\n"), max_size=6)


@given(st.lists(st.tuples(_QUERY_TEXT, _QUERY_TEXT), max_size=5))
def test_a_query_string_is_what_urlencode_writes(pairs):
    """``query_string`` (the links' parameters) writes what ``urlencode`` writes, whether
    every name and value is plain or some need quoting."""
    assert P.query_string(pairs) == urlencode(pairs)
