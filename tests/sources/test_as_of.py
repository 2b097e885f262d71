"""A source answer's as-of instant, from its ``Last-Modified`` header."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from carelink.sources.http import as_of

INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.mark.parametrize(
    ("header", "instant"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", "2015-10-21T07:28:00Z"),
        ("Mon, 30 Nov 2026 23:59:59 GMT", "2026-11-30T23:59:59Z"),
    ],
)
def test_last_modified_is_the_as_of_instant_every_time(header, instant):
    assert as_of({"Last-Modified": header}) == instant
    assert as_of({"Last-Modified": header}) == instant  # parsed once, the same answer


@pytest.mark.parametrize("headers", [{}, {"Last-Modified": "yesterday"}, {"Last-Modified": ""}])
def test_without_a_readable_last_modified_the_data_is_as_of_now(headers):
    got = as_of(headers)
    assert INSTANT.fullmatch(got)
    when = datetime.strptime(got, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=5)
