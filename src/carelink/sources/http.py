"""HTTP plumbing every source adapter shares: one request, its body or a source error,
and the answer's as-of time. Sessions are made once per source by the app and passed in.
Each request carries the gateway request's ``X-Request-ID`` (when there is one), so a
source's own logs can be joined to the gateway's and to the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, TypeVar

import aiohttp

from carelink.errors import SourceUnavailable
from carelink.observability.context import HEADER, current_request_id
from carelink.sources.answer_cache import AnswerCache, Key, digest
from carelink.sources.base import Json, SourceAnswer

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
    try:
        async with session.request(method, url, data=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status == 404:
                return None, resp.headers
            if resp.status >= 400:
                raise SourceUnavailable(source, f"HTTP {resp.status}")
            return data, resp.headers
    except aiohttp.ClientError as exc:
        raise SourceUnavailable(source, type(exc).__name__) from exc


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
    cache.put(key, data, mapped.resources, mapped.skipped)
    version = etag or digest(data).hex()
    return SourceAnswer(mapped.resources, version, as_of(headers), mapped.skipped)


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
