"""The request id: accepted when well formed, else replaced; bound for one request."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.observability import accept_request_id, bind, current_request_id, unbind
from carelink.observability.context import REQUEST_ID, instant, note_source, sources_asked


@pytest.mark.parametrize(
    "good", ["abc", "7f1c2a9e-0b1d-4c7e-9a53-2f9d1c0e8b11", "trace:01.02_x+y=/z", "a" * 128]
)
def test_a_well_formed_id_is_kept(good):
    assert accept_request_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [None, "", "a" * 129, "has space", "semi;colon", "new\nline", 'quote"', "<script>", "ü"],
)
def test_a_missing_or_malformed_id_is_replaced_by_a_uuid4(bad):
    made = accept_request_id(bad)
    assert made != bad
    assert uuid.UUID(made).version == 4


@given(st.text(max_size=300))
def test_whatever_is_sent_the_id_used_is_safe_and_bounded(sent):
    used = accept_request_id(sent)
    assert REQUEST_ID.fullmatch(used)
    assert len(used) <= 128


def test_the_id_is_bound_for_the_request_and_its_tasks_then_unbound():
    async def request() -> tuple[str | None, str | None]:
        bound = bind("req-1")
        try:
            inner = await asyncio.create_task(_read())  # a task the request starts sees it
            return current_request_id(), inner
        finally:
            unbind(bound)

    async def _read() -> str | None:
        note_source("gp", "ok", 1.0)
        return current_request_id()

    assert asyncio.run(request()) == ("req-1", "req-1")
    assert current_request_id() is None


def test_sources_noted_outside_a_request_go_nowhere():
    note_source("gp", "ok", 1.0)
    assert sources_asked() == []
    bound = bind("r")
    note_source("gp", "timeout", 500.0)
    assert [(c.source, c.outcome) for c in sources_asked()] == [("gp", "timeout")]
    unbind(bound)
    assert sources_asked() == []


def _instant(moment: float, places: int) -> str:
    """A FHIR instant made from scratch: the second's date and time, then the fraction
    of the second cut (not rounded) to ``places`` digits."""
    second = int(moment)
    digits = int((moment - second) * 10**places)
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)) + f"{digits:0{places}d}Z"


@given(
    st.lists(
        st.one_of(
            st.floats(0, 4_102_444_800),  # 1970 to 2100
            st.integers(0, 4_102_444_800).map(float),  # whole seconds
            st.integers(0, 4_102_444_800).map(lambda s: s + 0.9999999),
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([3, 6]),
)
def test_an_instant_is_its_second_then_the_fraction_cut_to_its_places(moments, places):
    """Whatever second came before (the date and time part is kept from one call to the
    next while the second is the same)."""
    for moment in moments:
        assert instant(moment, places) == _instant(moment, places)
