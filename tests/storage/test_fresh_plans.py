"""A fresh PostgreSQL database is not planned as if its tables stayed empty.

The invariant attacked: on a freshly migrated database, the audit trail's reads by key
(the append's head and its last event's hash) are planned through the key's index. A
table analysed while empty is planned as empty, a whole-table scan, and a connection
keeps such a plan (prepared once) while the trail grows: a fresh install's gateway
slowed by half as its trail filled.
"""

from __future__ import annotations

import sqlalchemy as sa

from carelink.storage import Database


def test_a_fresh_databases_trail_is_read_by_key_through_its_index(postgres_url):
    db = Database(postgres_url)
    db.migrate()
    with db.engine.connect() as conn:
        plans = [
            "\n".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN {sql}")))
            for sql in (
                "SELECT hash FROM audit_events WHERE seq = 5",
                "SELECT coalesce(max(seq), 0) FROM audit_events",
            )
        ]
    db.dispose()
    for plan in plans:
        assert "Index" in plan, plan
        assert "Seq Scan on audit_events" not in plan, plan
