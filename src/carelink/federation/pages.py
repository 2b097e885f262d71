"""Paging over one result: every page of a search is cut from one stored answer.

The first page of a search fans out once, filters for the caller, and keeps
what it found as a ``Snapshot`` under a random cursor id (192 bits from
``secrets``). Later pages read the snapshot instead of asking the sources
again, so a source that fails or recovers between pages neither drops nor
repeats anything. A snapshot belongs to the caller who made it (a digest of
their identity, scopes and purpose): any other caller, an unknown id and an
expired one all get the same ``Gone``, so a stranger cannot even tell whether
a cursor is live. Snapshots are kept ``ttl`` seconds, then swept.

Example::

    pages = Pages(ResultStore(db), ttl=600)
    cursor = pages.keep(snapshot, owner="9f2c...")
    again = pages.load(cursor, owner="9f2c...")  # the same snapshot, or Gone
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import orjson

from carelink.errors import Gone
from carelink.fhir.jsonio import Encodings
from carelink.storage import ResultStore

Json = dict[str, Any]

GONE = (
    "this paging cursor is unknown, has expired or is no longer valid for this caller; "
    "run the search again for a fresh first page"
)


@dataclass(frozen=True)
class Snapshot:
    """One search's answer, as the caller who asked may see it."""

    key: str  # what was asked (path and patient), so a cursor is not replayed elsewhere
    consent: str  # digest of the patient's consent when made; a change ends the cursor
    matches: list[Json]
    includes: list[Json]
    outcome: Json
    missing: list[str]  # X-Carelink-Missing-Sources items
    version: str  # the sources' data versions, for ETags
    last_modified: str | None
    break_glass: bool


class Pages:
    """Keep and load snapshots in the shared store."""

    def __init__(
        self,
        store: ResultStore,
        ttl: float,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.new_id = new_id

    def keep(self, snapshot: Snapshot, owner: str, encodings: Encodings | None = None) -> str:
        """Store ``snapshot`` for ``owner``; return its cursor id. ``encodings`` give the
        JSON of resources made already (``Federated.encodings``; the same bytes)."""
        cursor = self.new_id()
        now = self.clock()
        # fields by hand: dataclasses.asdict would deep-copy every resource first
        parts = {f.name: getattr(snapshot, f.name) for f in fields(snapshot)}
        if encodings is not None:  # the matches' JSON, made once while they are the same
            parts["matches"] = encodings.array(snapshot.matches)
        body = orjson.dumps(parts)
        self.store.put(cursor, owner, body, now + self.ttl, now)
        return cursor

    def load(self, cursor: str, owner: str, key: str, consent: str) -> Snapshot:
        """The snapshot behind ``cursor`` for this owner, search and consent, or ``Gone``."""
        body = self.store.get(cursor, owner, self.clock()) if cursor else None
        if body is None:
            raise Gone(GONE)
        try:
            snapshot = Snapshot(**orjson.loads(body))
        except (TypeError, orjson.JSONDecodeError):  # written by another gateway version
            raise Gone(GONE) from None
        if snapshot.key != key or snapshot.consent != consent:
            # a consent change ends the cursor (never serve what consent now withholds),
            # with the same words as any other dead cursor, so nothing says why
            raise Gone(GONE)
        return snapshot
