"""The community trust as a feed: its part of a record read from what it pushed.

The trust's system sends HL7 v2 ADT and ORU messages over MLLP
(``carelink.feeds``); the listener stores them. This adapter serves a
person's part from that store, mapped to FHIR R4 exactly as the live query
adapter (``community.py``) maps a queried batch, so it answers while the
trust's system is down. The answer's ``as_of`` is when the last message about
the person was applied, and its ``version`` changes with every one.

The store is handed in behind ``FeedReader`` (the app passes the
``FeedStore``), so this module knows no database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any, Protocol

import hl7

from carelink.errors import SourceBadPayload, SourceUnavailable
from carelink.sources.answer_cache import AnswerCache
from carelink.sources.base import Json, SourceAnswer, SourcePerson
from carelink.sources.hl7v2 import UNREADABLE, message_resources, person, why_unreadable
from carelink.sources.hl7v2_changes import INDEX_EVENTS, adt_changes, registration
from carelink.sources.http import as_of


class StoredPart(Protocol):
    """A person's stored messages (``carelink.storage.FeedRecord``)."""

    @property
    def local_id(self) -> str: ...
    @property
    def person(self) -> str | None: ...
    @property
    def messages(self) -> Sequence[str]: ...
    @property
    def as_of(self) -> str: ...
    @property
    def version(self) -> str: ...


class FeedReader(Protocol):
    """Reads of the stored feed (``carelink.storage.FeedStore``)."""

    def record(self, source: str, local_id: str) -> StoredPart | None: ...

    def people(self, source: str) -> Iterator[tuple[str, str, str]]: ...

    def messages_after(
        self, source: str, seq: int, kinds: Collection[str], limit: int
    ) -> Iterator[tuple[int, str]]: ...


class CommunityFeedSource:
    """The community source served from its stored HL7 v2 feed."""

    def __init__(self, store: FeedReader, name: str = "community") -> None:
        self.store = store
        self.name = name
        self.cache = AnswerCache()

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
    ) -> SourceAnswer:
        """The person's part as the feed left it; nobody the feed mentioned: empty."""
        try:
            part = await asyncio.to_thread(self.store.record, self.name, local_id)
        except Exception as exc:  # the store is the source here: failing to read it is that
            raise SourceUnavailable(self.name, f"feed store: {type(exc).__name__}") from exc
        if part is None:
            return SourceAnswer([], "absent", as_of({}))
        key = (local_id, patient_ref, types)
        stamp = part.version.encode()  # the feed's version of the part stands for its bytes
        hit = self.cache.lookup(key, stamp)
        if hit is not None:
            return SourceAnswer(hit.resources, part.version, part.as_of, hit.skipped)
        resources, skipped = self._map(part, patient_ref, types)
        kept = self.cache.put(key, stamp, resources, skipped)
        return SourceAnswer(kept, part.version, part.as_of, skipped)

    def _map(
        self, part: StoredPart, patient_ref: str, types: frozenset[str] | None
    ) -> tuple[list[Json], tuple[str, ...]]:
        """Stored messages to FHIR: one that cannot be read costs only its own resources.
        The messages were checked on arrival, so this is rare (a mapping that changed)."""
        out: list[Json] = []
        skipped: list[str] = []
        if part.person is None:
            skipped.append("no demographics message (ADT) received yet")
        else:
            try:
                _, _, patient = person(hl7.parse(part.person), self.name)
                out.append(patient)
            except (*UNREADABLE, hl7.ParseException) as exc:
                skipped.append(f"demographics message: {why_unreadable(exc)}")
        for n, body in enumerate(part.messages, start=1):
            try:
                msg: Any = hl7.parse(body)
                got, left_out = message_resources(msg, self.name, patient_ref)
            except (*UNREADABLE, hl7.ParseException) as exc:
                skipped.append(f"stored message {n}: {why_unreadable(exc)}")
                continue
            skipped.extend(f"stored message {n} {why}" for why in left_out)
            out.extend(r for r in got if types is None or r["resourceType"] in types)
        return out, tuple(skipped)

    async def people(self) -> AsyncIterator[SourcePerson]:
        """Everyone the feed has introduced (their latest demographics), for the index."""
        rows = await asyncio.to_thread(lambda: list(self.store.people(self.name)))
        for _, body, _ in rows:
            try:
                local, nhs, patient = person(hl7.parse(body), self.name)
            except (*UNREADABLE, hl7.ParseException) as exc:
                raise SourceBadPayload(self.name, f"stored ADT: {why_unreadable(exc)}") from exc
            yield registration(self.name, local, nhs, patient)

    async def changes_after(self, cursor: str, limit: int) -> tuple[list[SourcePerson], str]:
        """The records changed by the ADT events stored after ``cursor`` (the sequence of
        the last one taken), at most ``limit`` of them, oldest first. A stored message
        that cannot be read now (it was read on arrival) is passed over, not retried for
        ever. A source's messages commit in the order they are numbered
        (``FeedStore._apply``), so none is numbered below a cursor already taken."""
        after = int(cursor or "0")
        rows = await asyncio.to_thread(
            lambda: list(self.store.messages_after(self.name, after, INDEX_EVENTS, limit))
        )
        out: list[SourcePerson] = []
        for seq, body in rows:
            after = seq
            try:
                out.extend(adt_changes(hl7.parse(body), self.name))
            except (*UNREADABLE, hl7.ParseException):
                continue
        return out, str(after)
