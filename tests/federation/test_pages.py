"""Snapshots kept for paging: one caller, one search, one consent, a limited time."""

from __future__ import annotations

import pytest

from carelink.errors import Gone
from carelink.federation.pages import Pages, Snapshot
from carelink.fhir.jsonio import Encodings
from carelink.storage import Database, ResultStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SNAP = Snapshot(
    key="Patient/p1/$everything",
    consent="c0",
    matches=[{"resourceType": "Encounter", "id": f"e{i}"} for i in range(5)],
    includes=[],
    outcome={"resourceType": "OperationOutcome", "issue": []},
    missing=["acute;status=timeout"],
    version="v1",
    last_modified=None,
    break_glass=False,
)


@pytest.fixture
def pages(tmp_path) -> tuple[Pages, Clock]:
    db = Database(str(tmp_path / "pages.db"))
    db.migrate()
    clock = Clock()
    return Pages(ResultStore(db), ttl=600, clock=clock), clock


def test_a_kept_snapshot_comes_back_whole(pages):
    p, _ = pages
    cursor = p.keep(SNAP, "alice")
    assert p.load(cursor, "alice", SNAP.key, "c0") == SNAP


def test_cursors_are_random_and_long(pages):
    p, _ = pages
    cursors = {p.keep(SNAP, "alice") for _ in range(20)}
    assert len(cursors) == 20
    assert all(len(c) >= 32 for c in cursors)


@pytest.mark.parametrize(
    ("cursor", "owner", "key", "consent", "advance"),
    [
        ("other", "alice", SNAP.key, "c0", 0),  # unknown cursor
        (None, "mallory", SNAP.key, "c0", 0),  # another caller
        (None, "alice", "Patient/p2/$everything", "c0", 0),  # another search
        (None, "alice", SNAP.key, "c1", 0),  # consent changed since
        (None, "alice", SNAP.key, "c0", 600),  # expired
        ("", "alice", SNAP.key, "c0", 0),  # empty
    ],
)
def test_anything_but_the_same_caller_search_and_consent_in_time_is_gone(
    pages, cursor, owner, key, consent, advance
):
    p, clock = pages
    kept = p.keep(SNAP, "alice")
    clock.now += advance
    with pytest.raises(Gone):
        p.load(kept if cursor is None else cursor, owner, key, consent)


def test_expiry_is_stated_by_the_ttl(pages):
    p, clock = pages
    kept = p.keep(SNAP, "alice")
    clock.now += 599
    assert p.load(kept, "alice", SNAP.key, "c0").version == "v1"


def test_a_set_written_in_another_shape_is_gone_not_an_error(pages):
    p, clock = pages
    p.store.put("old", "alice", b'{"key": "Patient/p1/$everything"}', clock.now + 60, clock.now)
    with pytest.raises(Gone):
        p.load("old", "alice", SNAP.key, "c0")


def test_a_snapshot_kept_with_its_encodings_is_the_same_stored_bytes(pages):
    """The matches' JSON made once (``Encodings``) is stored as it would be made again."""
    store, _ = pages
    with_bytes = store.keep(SNAP, owner="o", encodings=Encodings(SNAP.matches))
    plain = store.keep(SNAP, owner="o")
    now = store.clock()
    assert store.store.get(with_bytes, "o", now) == store.store.get(plain, "o", now)
    assert store.load(with_bytes, "o", SNAP.key, SNAP.consent) == SNAP
