"""``PageCount``: a listing read to the total its pages state, whatever the pages.

Invariant: a listing counted as whole has held exactly its last stated total of
distinct pages' items, never a total smaller than one stated before it; any other
sequence of pages fails with a source error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.errors import SourceError
from carelink.sources.http import PageCount


def _read(pages: list[tuple[int, int | None]]) -> bool:
    """Count ``pages`` (items, stated total) in turn: True once the count says whole."""
    count = PageCount("acute")
    for n, (items, total) in enumerate(pages):
        if count.page(items, total, content=f"page {n}".encode()):
            return True
    count.ended()
    return True


def test_a_listing_that_grows_while_read_is_read_to_its_new_total():
    assert _read([(5, 12), (5, 13), (3, 13)])


def test_a_listing_that_stops_at_its_first_total_after_growing_fails():
    with pytest.raises(SourceError, match="ended after 10 of its 13"):
        _read([(5, 12), (5, 13)])


def test_a_listing_that_shrinks_while_read_fails():
    with pytest.raises(SourceError, match="shrank while it was read"):
        _read([(5, 12), (5, 11), (1, 11)])


@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.one_of(st.none(), st.integers(0, 30))),
        min_size=1,
        max_size=8,
    )
)
def test_whole_only_with_the_last_total_seen_and_none_smaller(pages):
    try:
        whole = _read(pages)
    except SourceError:
        return
    assert whole
    read, last, stated = 0, None, []
    for items, total in pages:
        if total is not None:
            last = total
        if total is not None:
            stated.append(total)
        read += items
        if (last is not None and read == last) or (items == 0):
            break
    if stated and pages[0][1] is not None:
        assert read == last, (pages, read, last)
        assert stated == sorted(stated), pages
