"""Work a caller gave up waiting for commits nothing (``Database.run`` and ``bounded``).

The guarantee: a request answered 503 because its database work took too long made no
change, however that work ends. Here the work itself is slow (it waits past the
caller's limit before it writes), on a real SQLite file and on PostgreSQL; the frozen
network is ``test_lost_connections``'s attack."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from carelink.errors import StorageUnavailable
from carelink.storage import Database

LIMIT = 0.3


@pytest.mark.parametrize("how", ["run", "bounded"])
def test_slow_work_given_up_on_commits_nothing_and_the_next_call_commits(database_url, how):
    db = Database(database_url, statement_timeout=LIMIT)
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE given_up (n int)"))
    done: list[BaseException | None] = []

    def write(n: int, late: float) -> None:
        time.sleep(late)
        try:
            with db.engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO given_up VALUES (:n)"), {"n": n})
        except BaseException as exc:
            done.append(exc)
            raise
        done.append(None)

    async def call(n: int, late: float) -> None:
        if how == "run":
            await db.run(write, n, late)
        else:
            db.bounded(write, n, late)

    try:
        with pytest.raises(StorageUnavailable):
            asyncio.run(call(1, LIMIT + 0.4))  # given up on, then it writes
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(done) == 1, done
        assert isinstance(done[0], StorageUnavailable), done
        time.sleep(5 * LIMIT)  # the given-up call no longer makes the next ones fail
        asyncio.run(call(2, 0.0))  # answered in time: committed
        with db.engine.connect() as conn:
            rows = [r[0] for r in conn.execute(sa.text("SELECT n FROM given_up"))]
    finally:
        db.dispose()
    assert rows == [2], f"committed: {rows}"
