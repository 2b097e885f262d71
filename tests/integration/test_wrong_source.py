"""``index build`` against a source URL that serves the wrong kind of system."""

from __future__ import annotations

import sqlite3

import pytest

from tests.integration.conftest import System
from tests.support.procs import carelink


@pytest.mark.parametrize(
    ("name", "actually"), [("acute", "community"), ("community", "acute"), ("gp", "social-care")]
)
def test_a_source_url_of_the_wrong_kind_of_system_is_named_and_the_index_kept(
    system: System, tmp_path, name: str, actually: str
):
    db = tmp_path / "index.db"
    env = {**system.env, "CARELINK_DATABASE_URL": str(db)}
    wrong = {**system.sources, name: system.sources[actually]}
    env["CARELINK_SOURCES"] = ",".join(f"{k}={v}" for k, v in wrong.items())
    r = carelink(["index", "build"], env)
    assert r.returncode == 4, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"carelink: source error: {name}: ")
    assert system.sources[actually] in lines[0]
    assert "index built" not in r.stdout
    with sqlite3.connect(db) as conn:  # nothing half-built was stored
        assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)
