"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from carelink.storage import Database
from tests.support.system import (  # noqa: F401  (the whole systems, shared)
    feed_system,
    system,
)


def _postgres_url() -> str | None:
    return os.environ.get("CARELINK_TEST_POSTGRES_URL")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database URL with a schema of its own (dropped afterwards), so runs
    never collide; the test is skipped when no server is configured."""
    base = _postgres_url()
    if not base:
        pytest.skip("CARELINK_TEST_POSTGRES_URL is not set")
    schema = f"carelink_test_{uuid.uuid4().hex[:12]}"
    admin = Database(base)
    with admin.engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh database of each kind: a real SQLite file, and PostgreSQL when configured."""
    if request.param == "sqlite":
        return str(tmp_path / "carelink.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """``database_url``'s database, migrated (disposed of afterwards)."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()
