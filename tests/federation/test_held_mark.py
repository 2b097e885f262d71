"""Property: a change listing read by offset while it moves never costs a change.

A model of the sources' change listings: each record once, at its latest change, oldest
first, read ``per_page`` at a time by offset; between any two pages any records (read or
not) change again, and so move to the end. The guarantee ``update.held_mark`` keeps:
**every record the listing held when its read began, at the stamp it had then, was either
read, or is listed again by the next update** (its stamp after the watermark the update
moves to); the watermark never goes back past the one the read began from, and moves all
the way when no record was listed twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.federation.update import OVERLAP, held_mark, instant
from carelink.sources.base import SourcePerson

START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def _parsed(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _person(local: str, stamp: datetime | None) -> SourcePerson:
    patient: dict[str, object] = {"resourceType": "Patient", "id": local}
    if stamp is not None:
        patient["meta"] = {"lastUpdated": instant(stamp)}
    return SourcePerson("acute", local, None, "Ann", "Lee", None, None, None, None, patient)


@settings(max_examples=400, deadline=None)
@given(
    count=st.integers(1, 30),
    per_page=st.integers(1, 7),
    # before which page (by number) which records (by position at the start) change again
    moves=st.lists(st.tuples(st.integers(1, 8), st.integers(0, 29)), max_size=6),
    stamped=st.booleans(),
    gap=st.integers(0, 5_000),  # ms between changes: ties when 0
)
def test_no_record_is_lost_to_a_listing_that_moves_under_its_read(
    count, per_page, moves, stamped, gap
):
    since = START
    stamps = {f"p{i:02d}": since + timedelta(milliseconds=1 + i * gap) for i in range(count)}
    at_start = dict(stamps)
    clock = since + timedelta(hours=1)  # the read begins an hour after the watermark
    mark = instant(clock - OVERLAP)
    listed: list[SourcePerson] = []
    offset, page = 0, 0
    while True:
        for before, which in moves:
            local = f"p{which:02d}"
            if before == page and local in stamps:
                clock += timedelta(milliseconds=1)
                stamps[local] = clock  # changed again: to the end of the listing
        order = sorted(stamps, key=lambda k: (stamps[k], k))
        chunk = order[offset : offset + per_page]
        if not chunk:
            break
        listed += [_person(k, stamps[k] if stamped else None) for k in chunk]
        offset += per_page
        page += 1
    held = held_mark(listed, instant(since), mark)
    read = {p.local_id for p in listed}
    assert _parsed(held) >= since
    if len(read) == len(listed):  # nothing listed twice: the watermark moves all the way
        assert held == mark
    for local, stamp in at_start.items():
        assert local in read or stamp > _parsed(held), (local, held)
