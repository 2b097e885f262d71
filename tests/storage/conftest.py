"""Fixtures shared by the storage tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from carelink.storage import Database, IndexStore

Store = TypeVar("Store", bound=Any)


def opened(database_url: str, make: Callable[[Database], Store]) -> Iterator[Store]:
    """A store of ``make``'s kind on a fresh, migrated database, closed after."""
    db = Database(database_url)
    db.migrate()
    s = make(db)
    yield s
    s.close()
    db.dispose()


@pytest.fixture
def index_store(database_url: str) -> Iterator[IndexStore]:
    """An empty, migrated patient index on a fresh database of each kind."""
    yield from opened(database_url, IndexStore)
