"""Adapter for the council's social-care case-management API (its own JSON, not FHIR).

The HTTP here is two calls: a person's case (``/api/v2/persons/{ref}/case``)
for the shared record and the paged person list (``/api/v2/persons``) for
the patient index. Everything the council's fields mean lives in
``social_care_map``, so the mapping is tested without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from carelink.errors import SourceBadPayload
from carelink.sources.answer_cache import AnswerCache
from carelink.sources.base import SourceAnswer, SourcePerson, retired
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
from carelink.sources.namespacing import namespaced_id
from carelink.sources.social_care_map import ACTIVE, read_case, source_person

JSON = "application/json"


def _load(data: bytes, source: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SourceBadPayload(source, "response is not JSON") from exc


class SocialCareSource:
    """The council's API as a ``Source``; sessions and timeouts belong to the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        name: str = "social-care",
        page_size: int = 500,
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/api/v2"
        self.name = name
        self.page_size = page_size
        self.cache = AnswerCache()
        self.kind = KindCheck(session, name, "social-care", base_url)

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
    ) -> SourceAnswer:
        """The person's case as FHIR; an unknown person is an empty answer, not an error.

        ``types`` narrows the case's resources; the council's Patient always
        comes along, since it is what ties the answer to the person.
        """
        if not self.kind.confirmed:
            await self.kind.ensure()
        data, headers = await fetch(
            self.session, self.name, "GET", f"{self.base}/persons/{local_id}/case", accept=JSON
        )
        return answer(
            self.cache,
            (local_id, patient_ref, types),
            data,
            headers,
            lambda body: self._map(body, local_id, patient_ref, types),
        )

    def _map(
        self, body: bytes, local_id: str, patient_ref: str, types: frozenset[str] | None
    ) -> Mapped:
        """A case to FHIR, refusing an answer about anyone but the person asked for; an
        item that cannot be read is left out and named."""
        doc = _load(body, self.name)
        if isinstance(doc, dict) and doc.get("personRef") not in (None, local_id):
            raise SourceBadPayload(self.name, "answer is about a different person")
        resources, skipped = read_case(doc, self.name, patient_ref)
        kept = [
            r
            for r in resources
            if types is None or r["resourceType"] in types or r["resourceType"] == "Patient"
        ]
        return Mapped(kept, skipped)

    async def holds(self, local_id: str) -> bool:
        """``GET /persons/{ref}``: held unless the council answers 404 or 410 (no such
        person, or merged away) or the case is CLOSED, as its listings read one
        (``HoldsCheck``)."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        url = f"{self.base}/persons/{quote(local_id, safe='')}"
        body = await held_at(self.session, self.name, url, accept=JSON)
        if body is None:
            return False
        doc = _load(body, self.name)
        if not isinstance(doc, dict):
            raise SourceBadPayload(self.name, "a person read alone is not a JSON object")
        return ACTIVE.get(str(doc.get("caseStatus") or "OPEN")) is not False

    async def people(self) -> AsyncIterator[SourcePerson]:
        """Everyone the council holds, page by page until ``totalItems`` are seen
        (``_pages``: a list that ends short of it fails)."""
        async for item in self._items(f"{self.base}/persons?"):
            yield source_person(item, self.name)

    async def changed_since(self, instant: str) -> AsyncIterator[SourcePerson]:
        """The council's change list after ``instant`` (``/persons/changes?since=``):
        a person created or updated as they now are, a merged one inactive with a
        ``replaced-by`` link to the record it went into, a deleted one inactive."""
        url = f"{self.base}/persons/changes?since={quote(instant, safe='')}&"
        async for item in self._items(url):
            kind = item.get("changeType") if isinstance(item, dict) else None
            ref = item.get("personRef") if isinstance(item, dict) else None
            if not isinstance(ref, str) or not ref:
                raise SourceBadPayload(self.name, "change without a personRef")
            if kind in ("created", "updated") and isinstance(item.get("person"), dict):
                yield source_person(item["person"], self.name)
            elif kind == "merged" and isinstance(item.get("mergedInto"), str):
                yield retired(self.name, ref, namespaced_id(self.name, item["mergedInto"]))
            elif kind == "deleted":
                yield retired(self.name, ref)
            else:
                raise SourceBadPayload(self.name, "change of an unknown kind or without its person")

    async def _items(self, url: str) -> AsyncIterator[Any]:
        """The items of a paged council list (``url`` ends with ``?`` or ``&``), each page
        asked for while the one before is read (``read_ahead``)."""
        async for items in read_ahead(self._pages(url)):
            for item in items:
                yield item

    async def _pages(self, url: str) -> AsyncIterator[list[Any]]:
        """The item lists of a paged council list's pages, once the far end has been
        confirmed to be the council's API, until ``totalItems`` items are seen.

        The list is read to that count or fails (``SourceBadPayload``, through
        ``PageCount``): an empty page before it (a short list cannot be told from one
        cut off), more items than it, a page stating a smaller ``totalItems`` than
        an earlier one (the list shrank while it was read: a person gone from a page already read
        shifts the next one back onto it, unread), a page that repeats one read before.
        Taken for the list's end, a build would leave people out, an update would move
        its watermark past changes it never read and ``reconcile --fix`` would retire
        people the council still holds. The items are counted, not the pages: a council
        that serves fewer a page than asked for is still read to the end."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        count = PageCount(self.name)
        page = 1
        while True:
            data, _ = await listing_page(
                self.session, self.name, f"{url}page={page}&pageSize={self.page_size}", JSON
            )
            doc = _load(data, self.name)
            items = doc.get("items") if isinstance(doc, dict) else None
            total = doc.get("totalItems") if isinstance(doc, dict) else None
            if not isinstance(items, list) or not isinstance(total, int) or isinstance(total, bool):
                raise SourceBadPayload(self.name, "list without items and totalItems")
            done = count.page(len(items), total, orjson.dumps(items))
            yield items
            if done:
                return
            page += 1
