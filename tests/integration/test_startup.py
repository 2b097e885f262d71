"""Starting on PostgreSQL: many processes at once on a brand-new database, and a worker
that cannot start stopping the server with a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database
from carelink.storage.migrations import MIGRATIONS
from tests.support.procs import carelink, env, free_port, own_files, running, workers_of
from tests.support.tcp_proxy import proxy_to, with_host

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
#: every migration's number (they need not be contiguous)
NUMBERS = sorted(n for n, _, _ in MIGRATIONS)


@pytest.fixture
def new_database() -> Iterator[str]:
    """A database of its own on the test server, created empty and dropped afterwards."""
    base = os.environ.get("CARELINK_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("CARELINK_TEST_POSTGRES_URL is not set")
    name = f"i13_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(
        Database(base).url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(base)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}", query=""))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _settings(tmp: Path, url: str) -> dict[str, str]:
    return {"CARELINK_DATABASE_URL": url, "CARELINK_AUTH": "development", **own_files(tmp)}


def _versions(url: str) -> list[int]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version"))
            return [int(r[0]) for r in rows]
    finally:
        db.dispose()


def test_four_upgrades_at_once_on_a_new_database_migrate_it_once(new_database, tmp_path):
    settings = _settings(tmp_path, new_database)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "carelink", "db", "upgrade"],
            env=env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    applied = sorted(int(out.split("(")[1].split()[0]) for _, out, _ in results)
    # one process migrated, the others found it done
    assert applied == [0, 0, 0, len(MIGRATIONS)]
    assert _versions(new_database) == NUMBERS


def test_serve_with_four_workers_starts_on_a_new_database(new_database, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    settings = _settings(tmp_path, new_database)
    with running(
        ["serve", "--workers", "4", "--port", str(port)], f"{base}/metadata", settings
    ) as p:
        deadline = time.monotonic() + 30
        while len(workers_of(p.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = workers_of(p.pid)
        assert len(workers) == 4
        # every worker has its own database connections; each new connection may land on
        # any of them, and every answer (index read and audit write) is a 200
        for _ in range(40):
            with httpx.Client() as client:
                r = client.get(
                    f"{base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|9000000009"}
                )
            assert r.status_code == 200, r.text
        assert workers_of(p.pid) == workers  # none died and was replaced
    assert _versions(new_database) == NUMBERS


def test_a_worker_that_cannot_start_stops_the_server_non_zero(new_database, tmp_path):
    target = urlsplit(new_database)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        proxy.allow(1)  # the parent's checks get in; the workers find the database gone
        url = with_host(new_database, "127.0.0.1", proxy.port)
        settings = {**_settings(tmp_path, url), "CARELINK_DB_CONNECT_TIMEOUT": "2"}
        start = time.monotonic()
        r = carelink(["serve", "--workers", "2", "--port", str(free_port())], settings, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("carelink: worker process")
    assert "could not start" in r.stderr.strip().splitlines()[-1]
    # no endless respawning, and the operator is told when the workers fail, not after
    # the supervisor's whole 30 s health-check timeout (it waited 30 s until stop 34)
    assert time.monotonic() - start < 25
