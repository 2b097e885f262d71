"""Listing patients reads only PIDs, and reads them as the full parse does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.errors import SourceBadPayload
from carelink.simulators import community as sim
from carelink.simulators import population as pop
from carelink.sources.hl7v2 import person, split_messages, split_registrations

STAMP = datetime(2026, 11, 1, tzinfo=UTC)
names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


def _listing(people: list[pop.Person]) -> bytes:
    w = sim.Writer(STAMP)
    for p in people:
        sim.add_person(w, p, pop.local_id("community", p.index))
    return w.batch()


def test_a_listing_of_the_simulated_population_reads_as_the_full_parse_reads_it():
    data = _listing(list(pop.people(5, 300)))
    fast = [person(m, "community") for m in split_registrations(data, "community")]
    full = [person(m, "community") for m in split_messages(data, "community")]
    assert fast == full
    assert len(fast) == 300


@given(family=names, given_name=names)
def test_names_with_delimiters_or_escapes_read_the_same_either_way(family, given_name):
    p = next(pop.people(3, 1))
    p = pop.Person(**{**vars(p), "family": family or "X", "given": given_name or "Y"})
    data = _listing([p])
    fast = [person(m, "community") for m in split_registrations(data, "community")]
    assert fast == [person(m, "community") for m in split_messages(data, "community")]


@pytest.mark.parametrize("bad", [b"", b"PID|1\r", b"\xff\xfe"])
def test_an_unreadable_listing_is_a_bad_payload(bad):
    with pytest.raises(SourceBadPayload):
        split_registrations(bad, "community")
