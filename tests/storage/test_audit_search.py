"""Audit search: exact counts, keyset pages that reach every event, filters in SQL."""

from __future__ import annotations

import orjson
import pytest

from carelink.storage import Database
from carelink.storage.audit_search import AuditQuery, AuditSearch
from carelink.storage.audit_store import AuditStore, NewEvent, agent_key

ISSUERS = ("https://idp.example", "urn:carelink:local-issuer")


@pytest.fixture
def search(database_url):
    db = Database(database_url)
    db.migrate()
    rows = [
        NewEvent(
            f"2026-01-{1 + i // 10:02d}T00:00:{i % 10:02d}.000000Z",
            "p1" if i % 2 else ("p2" if i % 3 else None),
            "4" if i % 5 == 0 else "0",
            agent_key(f"user-{i % 3}", ISSUERS[i % 2]),
            orjson.dumps({"n": i}),
        )
        for i in range(30)
    ]
    AuditStore(db).append(rows)
    yield AuditSearch(db)
    db.dispose()


def _walk(search: AuditSearch, q: AuditQuery, size: int) -> list[int]:
    seen, before = [], None
    while page := search.page(q, size, before):
        seen += [orjson.loads(e)["n"] for _, e in page]
        before = page[-1][0]
    return seen


def test_paging_by_keyset_reaches_every_event_newest_first(search):
    q = AuditQuery(patient="p1")
    assert search.count(q) == 15
    assert _walk(search, q, 4) == list(range(29, 0, -2))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (AuditQuery(agent="user-0"), [i for i in range(30) if i % 3 == 0]),
        (AuditQuery(agent="user-0", issuer=ISSUERS[1]), [i for i in range(30) if i % 6 == 3]),
        (AuditQuery(agent="user-0", issuer=""), []),
        (AuditQuery(agent="user-", issuer=None), []),
        (AuditQuery(has_patient=False), [i for i in range(30) if i % 2 == 0 and i % 3 == 0]),
        (AuditQuery(outcomes=("4",)), [0, 5, 10, 15, 20, 25]),
        (
            AuditQuery(recorded=((("2026-01-02", None),), ((None, "2026-01-03"),))),
            list(range(10, 20)),
        ),
        (
            AuditQuery(recorded=(((None, "2026-01-02"), ("2026-01-03", None)),)),
            [*range(10), *range(20, 30)],
        ),
    ],
)
def test_filters(search, query, expected):
    assert search.count(query) == len(expected)
    assert sorted(_walk(search, query, 7)) == expected
