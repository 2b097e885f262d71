"""Adapter for the community and mental-health trust (HL7 v2 over HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp

from carelink.errors import SourceBadPayload
from carelink.sources.answer_cache import AnswerCache
from carelink.sources.base import Json, SourceAnswer, SourcePerson
from carelink.sources.hl7v2 import (
    HL7_ER7,
    UNREADABLE,
    message_resources,
    message_type,
    person,
    person_id,
    read_batch,
    split_registrations,
    why_unreadable,
)
from carelink.sources.hl7v2_changes import adt_changes, hl7_dtm, registration
from carelink.sources.http import (
    Mapped,
    PageCount,
    answer,
    fetch,
    held_at,
    listing_page,
    read_ahead,
)
from carelink.sources.kind import KindCheck


class CommunitySource:
    """``GET /hl7/record?pid=`` for a record, ``GET /hl7/patients`` for the index."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        name: str = "community",
        page_size: int = 500,
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/hl7"
        self.name = name
        self.page_size = page_size
        self.cache = AnswerCache()
        self.kind = KindCheck(session, name, "community", base_url)

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
    ) -> SourceAnswer:
        """The person's messages as FHIR; an unknown person is an empty answer."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        data, headers = await fetch(
            self.session, self.name, "GET", f"{self.base}/record?pid={local_id}", accept=HL7_ER7
        )
        return answer(
            self.cache,
            (local_id, patient_ref, types),
            data,
            headers,
            lambda body: self._map(body, local_id, patient_ref, types),
        )

    def _map(
        self, data: bytes, local_id: str, patient_ref: str, types: frozenset[str] | None
    ) -> Mapped:
        """Messages to FHIR, refusing an answer about anyone but the person asked for.

        One message or segment that cannot be read costs only its own resources
        (left out and named); the person's ADT^A28 cannot be done without, and a
        message about someone else makes the whole answer suspect.
        """
        messages, unreadable = read_batch(data, self.name)
        skipped = list(unreadable)
        out: list[Json] = []
        for n, msg in enumerate(messages, start=1):
            kind = message_type(msg)
            if kind == "ADT^A28":
                out.insert(0, self._person(msg, local_id))
                continue
            try:
                owner = person_id(msg)
            except UNREADABLE:
                skipped.append(f"message {n} {kind}: no PID, so no one's")
                continue
            if owner != local_id:
                raise SourceBadPayload(self.name, "answer is about a different person")
            try:
                got, left_out = message_resources(msg, self.name, patient_ref)
            except UNREADABLE as exc:
                skipped.append(f"message {n} {kind}: {why_unreadable(exc)}")
                continue
            skipped.extend(f"message {n} {why}" for why in left_out)
            out.extend(r for r in got if types is None or r["resourceType"] in types)
        if not out or out[0]["resourceType"] != "Patient":
            raise SourceBadPayload(self.name, "record without the person's ADT^A28")
        return Mapped(out, tuple(skipped))

    def _person(self, msg: Any, local_id: str) -> Json:
        """The Patient of the person's ADT^A28: without it the answer is no one's."""
        try:
            local, _, patient = person(msg, self.name)
        except (IndexError, KeyError, ValueError, TypeError) as exc:
            raise SourceBadPayload(self.name, f"unreadable ADT^A28 ({type(exc).__name__})") from exc
        if local != local_id:
            raise SourceBadPayload(self.name, "answer is about a different person")
        return patient

    async def holds(self, local_id: str) -> bool:
        """``GET /hl7/record?pid=``: held unless the trust answers 404 or 410 (no such
        patient, or merged away) (``HoldsCheck``)."""
        url = f"{self.base}/record?pid={quote(local_id, safe='')}"
        return await held_at(self.session, self.name, url, accept=HL7_ER7) is not None

    async def people(self) -> AsyncIterator[SourcePerson]:
        """Everyone the trust holds, page by page, each page asked for while the one
        before is read (``read_ahead``)."""
        async for messages in read_ahead(self._patient_pages()):
            for msg in messages:
                yield registration(self.name, *person(msg, self.name))

    async def _patient_pages(self) -> AsyncIterator[list[Any]]:
        """The patient listing's pages, each as its messages split for ``person`` only
        (``split_registrations``), until ``X-Total-Count`` are seen (``_paged``)."""
        split = partial(split_registrations, source=self.name)
        async for messages in self._paged(f"{self.base}/patients?", split):
            yield messages

    async def changed_since(self, instant: str) -> AsyncIterator[SourcePerson]:
        """The trust's ADT events after ``instant`` (``GET /hl7/changes?since=DTM``), page
        by page, as the records they change (``hl7v2_changes``). A message that cannot be
        read fails the listing (``SourceBadPayload``): skipping it would lose a change."""
        since = quote(hl7_dtm(instant), safe="")
        async for messages in self._paged(f"{self.base}/changes?since={since}&", self._read):
            for msg in messages:
                try:
                    changed = adt_changes(msg, self.name)
                except UNREADABLE as exc:
                    raise SourceBadPayload(
                        self.name, f"change listing: {why_unreadable(exc)}"
                    ) from exc
                for p in changed:
                    yield p

    async def _paged(
        self, url: str, read: Callable[[bytes], list[Any]]
    ) -> AsyncIterator[list[Any]]:
        """A paged listing's batches (``url`` ends with ``?`` or ``&``), each as its
        messages (``read``), until the ``X-Total-Count`` the pages state is seen.

        Read to that count or failed (``SourceBadPayload``): a page answered 404, a batch
        without its trailer or whose ``BTS`` count is not its messages' (cut off), a
        message that cannot be parsed, an empty batch before the count (a short listing
        cannot be told from one cut off), more messages than the count, a count
        smaller than an earlier page's (the listing shrank while it was read), a page
        that repeats one read before (``PageCount``). Taken for the listing's end, a
        build would leave people out and an update move its watermark past changes it
        never read."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        count = PageCount(self.name)
        page = 1
        while True:
            data, headers = await listing_page(
                self.session, self.name, f"{url}page={page}&page_size={self.page_size}", HL7_ER7
            )
            first = data.find(b"MSH")
            messages = read(data) if first >= 0 else []
            self._whole(data, len(messages))
            done = count.page(len(messages), self._total(headers), data[max(first, 0) :])
            yield messages
            if done:
                return
            page += 1

    def _read(self, data: bytes) -> list[Any]:
        """A change listing page's messages, parsed; one that cannot be is a bad payload
        (skipping it would lose a change)."""
        messages, unreadable = read_batch(data, self.name)
        if unreadable:
            raise SourceBadPayload(self.name, f"change listing {unreadable[0]}")
        return messages

    def _whole(self, data: bytes, messages: int) -> None:
        """A listing page's batch must be whole: ended by its ``BTS`` and ``FTS`` trailer,
        the ``BTS`` count its ``messages`` (a batch cut off loses its last messages)."""
        tail = data[-256:].replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        ends = tail.rstrip(b"\r").rsplit(b"\r", 2)[-2:]
        if len(ends) != 2 or not ends[0].startswith(b"BTS|") or not ends[1].startswith(b"FTS"):
            raise SourceBadPayload(self.name, "listing batch without its trailer (cut off)")
        if ends[0].split(b"|")[1].strip() != str(messages).encode():
            raise SourceBadPayload(self.name, "listing batch whose BTS count is not its messages'")

    def _total(self, headers: Any) -> int:
        raw = headers.get("X-Total-Count")
        if raw is None:
            raise SourceBadPayload(self.name, "listing page without X-Total-Count")
        try:
            return int(raw)
        except ValueError as exc:
            raise SourceBadPayload(self.name, "X-Total-Count is not a number") from exc
