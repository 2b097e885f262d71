"""Checkpoints are written by the gateway as the trail grows, and read back by verify."""

from __future__ import annotations

import pytest

from carelink.audit import AuditTrail, Checkpointer, load_key, load_or_make_key
from carelink.audit.checkpoints import KEY_FILE, latest, read
from carelink.errors import ConfigError
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.audit.test_trail import event


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    db = Database(str(tmp_path / "audit.db"))
    db.migrate()
    yield AuditStore(db)
    db.dispose()


def _trail(store: AuditStore, tmp_path, clock: Clock, every: int = 5) -> AuditTrail:
    key = load_or_make_key(tmp_path / "keys")
    return AuditTrail(store, Checkpointer(tmp_path / "cps", key, every, 300.0, clock))


def test_a_checkpoint_is_written_after_every_n_events(store, tmp_path):
    trail = _trail(store, tmp_path, Clock())
    trail.record([event(1), event(2)])
    assert latest(tmp_path / "cps") is None
    trail.record([event(3), event(4), event(5)])
    first = latest(tmp_path / "cps")
    assert first is not None
    assert read(first)["seq"] == 5
    trail.record([event(i) for i in range(4)])
    assert read(latest(tmp_path / "cps"))["seq"] == 5  # 4 more: not yet
    trail.record([event(1)])
    assert read(latest(tmp_path / "cps"))["seq"] == 10
    assert read(latest(tmp_path / "cps"))["hash"] == store.head()[1]


def test_a_checkpoint_is_written_when_the_interval_passes_and_the_trail_grew(store, tmp_path):
    clock = Clock()
    trail = _trail(store, tmp_path, clock, every=1000)
    assert trail.tick() is False  # nothing yet
    trail.record([event(1)])
    clock.now += 299
    assert trail.tick() is False
    clock.now += 1
    assert trail.tick() is True
    assert read(latest(tmp_path / "cps"))["seq"] == 1
    clock.now += 600
    assert trail.tick() is False  # the trail did not grow: nothing new to vouch for


def test_a_restarted_gateway_continues_from_the_latest_checkpoint(store, tmp_path):
    trail = _trail(store, tmp_path, Clock())
    trail.record([event(i) for i in range(5)])
    again = _trail(store, tmp_path, Clock())
    assert again.checkpointer is not None
    assert again.checkpointer.last_seq == 5


def test_verifying_never_makes_a_key(tmp_path):
    with pytest.raises(ConfigError, match="no audit checkpoint key at"):
        load_key(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_a_key_file_that_is_not_a_key_is_a_configuration_error(tmp_path):
    (tmp_path / KEY_FILE).write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_key(tmp_path)
