"""HTTP plumbing every source adapter shares: one request, its body or a source error,
and the answer's as-of time. Sessions are made once per source by the app and passed in.
Each request carries the gateway request's ``X-Request-ID`` (when there is one), so a
source's own logs can be joined to the gateway's and to the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, TypeVar

import aiohttp

from carelink.errors import SourceBadPayload, SourceUnavailable
from carelink.observability.context import HEADER, current_request_id
from carelink.sources.answer_cache import AnswerCache, Key, digest
from carelink.sources.base import Json, SourceAnswer
from carelink.sources.http1 import Client, Http1Error

FHIR_JSON = "application/fhir+json"
T = TypeVar("T")


def as_of(headers: Any) -> str:
    """The data's as-of instant from ``Last-Modified`` (or now)."""
    raw = headers.get("Last-Modified")
    stamp = _instant_of(raw) if raw else None
    return stamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def _instant_of(raw: str) -> str | None:
    """An HTTP date as a FHIR instant, parsed once per value (a source's answers share a
    handful of ``Last-Modified`` values); None when it is not a date."""
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


#: the lean client (``sources.http1``) that sends a session's plain-HTTP requests, for
#: the sessions the app gave one (``lean``), by the session's id while it lives (a plain
#: dict: a weak-keyed one makes a weak reference on every look-up); every other request
#: goes through aiohttp
_LEAN: dict[int, Client] = {}


def lean(session: aiohttp.ClientSession, client: Client) -> aiohttp.ClientSession:
    """``session``, its plain-HTTP requests (``Client.takes``) sent by ``client`` from
    now on (``close_session`` closes both)."""
    key = id(session)
    _LEAN[key] = client
    # forgotten as the session goes, before its id can be another object's
    weakref.finalize(session, _forget, key, client)
    return session


def lean_client(session: aiohttp.ClientSession) -> Client | None:
    """The lean client that sends ``session``'s plain-HTTP requests, if it was given one."""
    return _LEAN.get(id(session))


def _forget(key: int, client: Client) -> None:
    if _LEAN.get(key) is client:
        del _LEAN[key]


async def close_session(session: aiohttp.ClientSession) -> None:
    """Close ``session`` and its lean client's connections."""
    client = _LEAN.pop(id(session), None)
    if client is not None:
        client.close()
    await session.close()


async def send(
    session: aiohttp.ClientSession,
    source: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, Any, bytes]:
    """Status, headers and whole body of one request, by the session's lean client when
    it takes the URL (a GET or POST: answers with bodies), else by aiohttp; a failure to
    make it or read the answer is ``SourceUnavailable`` naming what failed."""
    client = _LEAN.get(id(session))
    if client is not None and method in ("GET", "POST"):
        found = client.target(url)
        if found is not None:
            try:
                got = await client.request(method, url, headers, body, found)
            except Http1Error as exc:
                raise SourceUnavailable(source, str(exc)) from exc
            return got.status, got.headers, got.body
    try:
        async with session.request(method, url, data=body, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()
    except aiohttp.ClientError as exc:
        raise SourceUnavailable(source, type(exc).__name__) from exc


async def fetch(
    session: aiohttp.ClientSession,
    source: str,
    method: str,
    url: str,
    body: bytes | None = None,
    accept: str = FHIR_JSON,
) -> tuple[bytes | None, Any]:
    """One request's body; ``(None, headers)`` on 404; source errors raised as such."""
    headers = {"Accept": accept}
    request_id = current_request_id()
    if request_id is not None:
        headers[HEADER] = request_id
    if body is not None:
        headers["Content-Type"] = FHIR_JSON
    status, got, data = await send(session, source, method, url, headers, body)
    if status == 404:
        return None, got
    if status >= 400:
        raise SourceUnavailable(source, f"HTTP {status}")
    return data, got


async def held_at(
    session: aiohttp.ClientSession, source: str, url: str, accept: str = FHIR_JSON
) -> bytes | None:
    """The body of ``GET url``, one record asked for alone, or None when the source says
    it holds no such record (404; 410, a record deleted); other errors raised as such."""
    status, _, data = await send(session, source, "GET", url, {"Accept": accept}, None)
    if status in (404, 410):
        return None
    if status >= 400:
        raise SourceUnavailable(source, f"HTTP {status}")
    return data


def missing_page(source: str) -> SourceBadPayload:
    """The error for a page of a listing that answered 404 (a paging link that expired,
    or a listing the source does not offer). Never the listing's end: a build would
    replace the index with the people read so far, and an update would move its
    watermark past changes it never read."""
    return SourceBadPayload(source, "a listing page answered 404: it cannot be read to its end")


async def listing_page(
    session: aiohttp.ClientSession, source: str, url: str, accept: str
) -> tuple[bytes, Any]:
    """One page of a listing, its body and headers; a 404 is ``missing_page``."""
    data, headers = await fetch(session, source, "GET", url, accept=accept)
    if data is None:
        raise missing_page(source)
    return data, headers


class PageCount:
    """A listing's items counted, page by page, against the total its pages state.

    A listing is read to its true end or not at all: a short one cannot be told from one
    cut off (a page past the end, an empty page, the last page's entries lost), and a
    listing that moved while it was read may have skipped an item (a record gone from a
    page already read shifts the next one back onto it, under offset paging). Taken for
    whole, a build would leave people out, an update would move its watermark past
    changes it never read and ``reconcile --fix`` would retire people who still exist;
    failed (``SourceBadPayload``), the index and the watermark stay as they were and the
    next run reads the listing again. So:

    - the listing ends when its stated total has been seen; an empty page (or the last
      page, for a listing that links its pages) before that fails it;
    - more items than the total fails it, and so does a page stating a smaller total
      than an earlier page did: something left a page already read, and under offset
      paging the item after it moved back onto that page, unread. A larger total is
      taken as the listing's from then on: a listing in change order grows at its end
      (a change made during the read), and failing it would fail every update of a
      source that changes while a long listing is read, after an outage for ever. An
      item an insertion pushed forward is read twice, which an update applies twice
      to the same effect and a build refuses (its staging's unique key);
    - a page whose items are those of a page already read (a source that lost its place
      and started again) fails it.

    A listing whose first page states no total is read to its last page (``total``
    None), and a later page that states none is taken to say the first page's."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.seen = 0
        self.pages = 0
        self.total: int | None = None
        self._read: set[bytes] = set()

    def _fail(self, why: str) -> SourceBadPayload:
        return SourceBadPayload(self.source, f"listing {why}: it cannot be read to its end")

    def page(self, items: int, total: int | None, content: bytes | None = None) -> bool:
        """Count a page of ``items`` that states ``total`` (``content``: its items' bytes,
        to know a page read before); True when every item the listing holds is seen.
        An empty page before then fails the listing."""
        if self.pages == 0:
            self.total = total
        elif total is not None and self.total is not None and total != self.total:
            if total < self.total:
                raise self._fail(f"shrank while it was read (total {self.total}, then {total})")
            self.total = total
        self.pages += 1
        if content is not None and items:
            mark = hashlib.blake2b(content, digest_size=16).digest()
            if mark in self._read:
                raise self._fail("repeats a page already read")
            self._read.add(mark)
        self.seen += items
        if self.total is not None and self.seen > self.total:
            raise self._fail(f"holds more than its total ({self.seen} of {self.total})")
        if self.total is not None and self.seen == self.total:
            return True
        if not items:
            self.ended()
            return True
        return False

    def ended(self) -> None:
        """The source says the listing ends here: it must have listed its total."""
        if self.total is not None and self.seen != self.total:
            raise self._fail(f"ended after {self.seen} of its {self.total} items")


@dataclass(frozen=True)
class Mapped:
    """An adapter's reading of one answer: the resources, and what it had to leave out."""

    resources: list[Json]
    skipped: tuple[str, ...] = ()


def answer(
    cache: AnswerCache,
    key: Key,
    data: bytes | None,
    headers: Any,
    build: Callable[[bytes], Mapped],
) -> SourceAnswer:
    """A source's answer from a response body: empty when the person is not known there
    (404), reused when the bytes are the ones mapped last time, else ``build(data)``."""
    if data is None:
        return SourceAnswer([], "absent", as_of(headers))
    etag = headers.get("ETag", "")
    hit = cache.lookup(key, data)
    if hit is not None:
        version = etag or hit.fingerprint.hex()
        return SourceAnswer(hit.resources, version, as_of(headers), hit.skipped)
    mapped = build(data)
    kept = cache.put(key, data, mapped.resources, mapped.skipped)
    version = etag or digest(data).hex()
    return SourceAnswer(kept, version, as_of(headers), mapped.skipped)


async def read_ahead(pages: AsyncIterator[T]) -> AsyncIterator[T]:
    """The pages of a listing, each next one asked for as soon as the one before is
    handed out: the source prepares it while the caller works on this one. One page
    ahead, never more (a listing is read in bounded memory); an error asking for the
    next page is raised where that page would have come."""

    async def following() -> T:
        return await anext(pages)

    ahead = asyncio.ensure_future(following())
    try:
        while True:
            try:
                page = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(following())
            await asyncio.sleep(0)  # let the request go out before the caller's work
            yield page
    finally:
        ahead.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await ahead
