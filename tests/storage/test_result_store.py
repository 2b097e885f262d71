"""Stored result sets: found only by their owner, only until they expire, swept on write."""

from __future__ import annotations

import pytest

from carelink.storage import Database, ResultStore


def _store(url: str) -> ResultStore:
    db = Database(url)
    db.migrate()
    return ResultStore(db)


def test_a_set_is_found_by_its_owner_until_it_expires(database_url):
    store = _store(database_url)
    store.put("c1", "owner-a", b"body", expires=100.0, now=0.0)
    assert store.get("c1", "owner-a", now=99.0) == b"body"
    assert store.get("c1", "owner-b", now=99.0) is None
    assert store.get("c1", "owner-a", now=100.0) is None
    assert store.get("nope", "owner-a", now=0.0) is None


def test_writing_sweeps_expired_sets(database_url):
    store = _store(database_url)
    store.put("old", "o", b"1", expires=10.0, now=0.0)
    store.put("new", "o", b"2", expires=50.0, now=20.0)
    assert store.sweep(now=20.0) == 0  # "old" already went when "new" was written
    assert store.get("new", "o", now=20.0) == b"2"
    assert store.sweep(now=60.0) == 1
    assert store.get("new", "o", now=20.0) is None


def test_large_bodies_survive_byte_for_byte(database_url):
    store = _store(database_url)
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    store.put("big", "o", body, expires=10.0, now=0.0)
    assert store.get("big", "o", now=1.0) == body


def test_a_failed_write_keeps_nothing_of_itself_and_leaves_the_store_usable(database_url):
    """The sweep and the insert are one transaction: when the insert fails (an id
    already taken), the expired set the sweep deleted is back, and the next write on
    the connection the pool hands out again commits as usual."""
    store = _store(database_url)
    store.put("old", "o", b"1", expires=10.0, now=0.0)
    store.put("taken", "o", b"2", expires=100.0, now=0.0)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store.put("taken", "o", b"3", expires=100.0, now=20.0)
    assert store.get("old", "o", now=5.0) == b"1"  # the sweep was rolled back
    assert store.get("taken", "o", now=5.0) == b"2"
    store.put("next", "o", b"4", expires=100.0, now=20.0)
    assert store.get("next", "o", now=21.0) == b"4"
    assert store.get("old", "o", now=5.0) is None  # swept by the write that committed
