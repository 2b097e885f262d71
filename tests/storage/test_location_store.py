"""Where each resource handed out lives, in SQLite and PostgreSQL."""

from __future__ import annotations

from carelink.storage import LocationStore


def test_a_recorded_resource_names_its_person_and_an_unknown_one_nobody(db):
    store = LocationStore(db)
    assert store.record("p1", [("Observation", "acute-1"), ("Encounter", "gp-2")], "T1") == 2
    assert store.person_of("Observation", "acute-1") == "p1"
    assert store.person_of("Encounter", "gp-2") == "p1"
    assert store.person_of("Encounter", "acute-1") is None  # the type is part of the key
    assert store.person_of("Observation", "acute-9") is None
    store.close()


def test_the_first_time_seen_is_kept_and_the_latest_person_wins(db):
    first, second = LocationStore(db), LocationStore(db)  # two gateway processes
    first.record("p1", [("Condition", "gp-1")], "2026-01-01T00:00:00Z")
    assert second.record("p2", [("Condition", "gp-1"), ("Condition", "gp-1")], "2026-02-02") == 1
    assert first.person_of("Condition", "gp-1") == "p2"
    seen = first.first_seen_of("p2")  # the person moved, the first sighting stays
    assert seen["Condition/gp-1"] == "2026-01-01T00:00:00Z"
    assert "Condition/gp-404" not in seen
    first.close()
    second.close()


def test_a_process_writes_a_resource_it_has_recorded_only_once(db):
    store = LocationStore(db)
    store.record("p1", [("Observation", "acute-1")], "T1")
    assert store.record("p1", [("Observation", "acute-1")], "T2") == 0
    assert store.record("p1", [("Observation", "acute-1"), ("Observation", "acute-2")], "T2") == 1
    store.close()


def test_what_a_process_has_not_written_yet_is_told_without_a_write(db):
    """The request path asks first, and hands a write to a thread only when one is new."""
    store = LocationStore(db)
    pairs = [("Observation", "acute-1"), ("Observation", "acute-1"), ("Encounter", "gp-2")]
    assert store.unwritten(pairs) == [("Observation", "acute-1"), ("Encounter", "gp-2")]
    store.record("p1", pairs[:1], "T1")
    assert store.unwritten(pairs) == [("Encounter", "gp-2")]
    store.record("p1", pairs, "T1")
    assert store.unwritten(pairs) == []
    store.close()
