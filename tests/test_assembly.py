"""``assembly.sources_open``: the adapters over sessions that are closed however the
block ends."""

from __future__ import annotations

import asyncio

import pytest

from carelink.assembly import sources_open
from carelink.settings import Settings
from carelink.sources.http import lean_client


def _settings() -> Settings:
    return Settings.from_env({"CARELINK_SOURCES": "acute=http://127.0.0.1:9,gp=http://127.0.0.1:9"})


def test_the_sessions_are_open_in_the_block_and_closed_after_it(tmp_path):
    db = Settings.from_env({"CARELINK_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}).database()

    async def run() -> list:
        async with sources_open(_settings(), db) as sources:
            assert sorted(sources) == ["acute", "gp"]
            sessions = [s.session for s in sources.values()]
            assert not any(s.closed for s in sessions)
            assert all(lean_client(s) for s in sessions)  # plain HTTP: the lean client's
        return sessions

    try:
        sessions = asyncio.run(run())
    finally:
        db.dispose()
    assert all(s.closed for s in sessions)
    assert not any(lean_client(s) for s in sessions)


def test_the_sessions_are_closed_when_the_block_raises(tmp_path):
    db = Settings.from_env({"CARELINK_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}).database()
    seen: list = []

    async def run() -> None:
        async with sources_open(_settings(), db) as sources:
            seen.extend(s.session for s in sources.values())
            raise RuntimeError("the work failed")

    try:
        with pytest.raises(RuntimeError, match="the work failed"):
            asyncio.run(run())
    finally:
        db.dispose()
    assert len(seen) == 2
    assert all(s.closed for s in seen)
