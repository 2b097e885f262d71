"""A PostgreSQL server older than the audit append needs is refused before anything is
migrated, with a line that says what is needed (its ``sha256`` came in PostgreSQL 11)."""

from __future__ import annotations

import pytest

from carelink.errors import ConfigError
from carelink.storage import Database
from carelink.storage.database import refuse_old_server


@pytest.mark.parametrize("version", [(10, 23), (9, 6, 24)])
def test_a_server_before_11_is_refused_saying_what_is_needed(version):
    with pytest.raises(ConfigError) as raised:
        refuse_old_server(version)
    shown = ".".join(str(v) for v in version)
    assert str(raised.value) == (
        f"PostgreSQL {shown} is too old: carelink needs PostgreSQL 11 or newer"
    )


@pytest.mark.parametrize("version", [(11, 0), (15, 19), (18, 1), None, ("unknown",)])
def test_11_and_newer_or_a_version_not_known_pass(version):
    refuse_old_server(version)


def test_the_server_the_tests_run_on_migrates(database_url):
    """The check sits in ``migrate`` and lets this server (SQLite: not asked) through."""
    db = Database(database_url)
    try:
        assert db.migrate() > 0
    finally:
        db.dispose()
