"""Adapter for the FHIR R4 REST source (the acute EPR), and FHIR helpers other adapters share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from carelink.errors import SourceBadPayload
from carelink.sources.answer_cache import AnswerCache
from carelink.sources.base import Json, SourceAnswer, SourcePerson, indexed
from carelink.sources.http import (
    Mapped,
    PageCount,
    as_of,
    fetch,
    held_at,
    missing_page,
    read_ahead,
)
from carelink.sources.kind import KindCheck
from carelink.sources.namespacing import namespace, namespaced_id


def parse(data: bytes, source: str) -> Json:
    """A FHIR resource from response bytes, or ``SourceBadPayload``."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SourceBadPayload(source, "response is not JSON") from exc
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise SourceBadPayload(source, "response is not a FHIR resource")
    return doc


async def get_json(
    session: aiohttp.ClientSession, source: str, method: str, url: str, body: bytes | None = None
) -> tuple[Json | None, Any]:
    """One request, parsed; ``(None, headers)`` on 404."""
    data, headers = await fetch(session, source, method, url, body)
    return (None if data is None else parse(data, source)), headers


def bundle_resources(doc: Json, source: str, first: int = 0) -> Mapped:
    """The readable resources of a Bundle, and the entries left out and why.

    One entry without a resource, a resourceType or an id costs only itself
    (``"Observation entry 3: no id"``, counting entries from ``first``); only
    an answer that is not a Bundle at all is a bad payload.
    """
    if doc.get("resourceType") != "Bundle":
        raise SourceBadPayload(source, f"expected a Bundle, got {doc.get('resourceType')}")
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise SourceBadPayload(source, "Bundle.entry is not a list")
    out: list[Json] = []
    skipped: list[str] = []
    for i, e in enumerate(entries, start=first):
        r = e.get("resource") if isinstance(e, dict) else None
        rtype = r.get("resourceType") if isinstance(r, dict) else None
        if not isinstance(r, dict):
            skipped.append(f"entry {i}: no resource")
        elif not isinstance(rtype, str) or not rtype:
            skipped.append(f"entry {i}: no resourceType")
        elif not isinstance(r.get("id"), str) or not r["id"]:
            skipped.append(f"{rtype} entry {i}: no id")
        else:
            out.append(r)
    return Mapped(out, tuple(skipped))


def person_from_patient(source: str, local: str, patient: Json) -> SourcePerson:
    """Index demographics from a FHIR Patient (namespaced here: the caller's fresh copy)."""
    return indexed(source, local, namespace(patient, source, "", ""))


def localise(
    resources: list[Json],
    source: str,
    local_id: str,
    patient_ref: str,
    types: frozenset[str] | None,
) -> list[Json]:
    """Namespace a source's resources, keeping only ``types`` (the Patient always)."""
    own = f"Patient/{local_id}"
    return [
        namespace(r, source, own, patient_ref)
        for r in resources
        if types is None or r["resourceType"] in types or r["resourceType"] == "Patient"
    ]


def about_whom(resources: list[Json], source: str, local_id: str) -> None:
    """A patient's ``$everything`` holds their Patient and no other: an answer with none,
    or with another Patient (a source answering for the wrong person, or with the bytes
    of another's record), is unreadable as a whole (``SourceBadPayload``), so no part of
    another person's record is ever served as this one's."""
    ids = {str(r["id"]) for r in resources if r["resourceType"] == "Patient"}
    if not ids:
        raise SourceBadPayload(source, "$everything without the Patient")
    if ids != {local_id}:
        raise SourceBadPayload(source, "answer is about a different person")


async def read_one(
    session: aiohttp.ClientSession, source: str, url: str, resource_type: str
) -> Json | None:
    """``GET url`` for one resource of ``resource_type``, namespaced; None on 404."""
    doc, _ = await get_json(session, source, "GET", url)
    if doc is None:
        return None
    if doc.get("resourceType") != resource_type:
        raise SourceBadPayload(source, f"expected a {resource_type}, got {doc.get('resourceType')}")
    return namespace(doc, source, "", "")


def held_patient(data: bytes | None, source: str) -> bool:
    """Whether a Patient read alone (None: 404 or 410) is one its source holds now: not
    closed or merged away (``active`` false, as every listing here reads it)."""
    if data is None:
        return False
    doc = parse(data, source)
    if doc.get("resourceType") != "Patient":
        raise SourceBadPayload(source, f"expected a Patient, got {doc.get('resourceType')}")
    return doc.get("active") is not False


class AcuteSource:
    """The hospital EPR, spoken to in FHIR R4 REST (``$everything`` with paging)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        name: str = "acute",
        page_size: int = 1000,
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/fhir"
        self.name = name
        self.page_size = page_size
        self.cache = AnswerCache()
        self.kind = KindCheck(session, name, "acute", base_url)

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
    ) -> SourceAnswer:
        """Follow ``$everything``'s next links; versions of all pages make the version."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        url: str | None = f"{self.base}/Patient/{local_id}/$everything?_count={self.page_size}"
        if types:
            url = f"{url}&_type={','.join(sorted(types | {'Patient'}))}"
        key = (local_id, patient_ref, types)
        resources: list[Json] = []
        skipped: list[str] = []
        entries = 0
        versions: list[str] = []
        stamp = ""
        first = True
        while url:
            data, headers = await fetch(self.session, self.name, "GET", url)
            if data is None:
                return SourceAnswer([], "absent", as_of(headers))
            stamp = stamp or as_of(headers)
            versions.append(headers.get("ETag", ""))
            if first:
                first_body = data
                cached = self.cache.lookup(key, first_body)
                if cached is not None:
                    return SourceAnswer(cached.resources, versions[0], stamp, cached.skipped)
            doc = parse(data, self.name)
            page = bundle_resources(doc, self.name, entries)
            entries += len(doc.get("entry", []))
            resources.extend(page.resources)
            skipped.extend(page.skipped)
            url = next(
                (lk["url"] for lk in doc.get("link", []) if lk.get("relation") == "next"), None
            )
            single_page = first and url is None
            first = False
        about_whom(resources, self.name, local_id)
        out = localise(resources, self.name, local_id, patient_ref, types)
        left_out = tuple(skipped)
        # a one-page answer is remembered by its bytes (and answered with as remembered)
        kept = self.cache.put(key, first_body, out, left_out) if single_page else out
        return SourceAnswer(kept, "|".join(versions), stamp, left_out)

    async def read_shared(self, resource_type: str, local_id: str) -> Json | None:
        """``GET /fhir/{type}/{id}`` for a Practitioner, Organization ..."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        url = f"{self.base}/{resource_type}/{quote(local_id, safe='')}"
        return await read_one(self.session, self.name, url, resource_type)

    async def holds(self, local_id: str) -> bool:
        """``GET /Patient/{id}``: held unless 404, 410 or inactive (``HoldsCheck``)."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        url = f"{self.base}/Patient/{quote(local_id, safe='')}"
        return held_patient(await held_at(self.session, self.name, url), self.name)

    async def people(self) -> AsyncIterator[SourcePerson]:
        """Page through ``GET /Patient``."""
        async for p in self._listing(f"{self.base}/Patient?_count={self.page_size}"):
            yield p

    async def changed_since(self, instant: str) -> AsyncIterator[SourcePerson]:
        """Patients made or changed after ``instant`` (``GET /Patient?_lastUpdated=gt...``);
        a merged-away record comes with ``active`` false and a ``replaced-by`` link."""
        since = quote("gt" + instant, safe="")
        async for p in self._listing(
            f"{self.base}/Patient?_lastUpdated={since}&_count={self.page_size}"
        ):
            yield p

    async def _listing(self, first: str) -> AsyncIterator[SourcePerson]:
        async for doc in read_ahead(self._pages(first)):
            for patient in bundle_resources(doc, self.name).resources:
                yield person_from_patient(self.name, str(patient["id"]), patient)

    async def _pages(self, first: str) -> AsyncIterator[Json]:
        """A searchset's Bundle and its next pages."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        async for doc in searchset_pages(self.session, self.name, first):
            yield doc


def next_page(doc: Json) -> str | None:
    """The URL of a searchset's next page, if any."""
    return next((lk["url"] for lk in doc.get("link", []) if lk.get("relation") == "next"), None)


async def searchset_pages(
    session: aiohttp.ClientSession, source: str, first: str
) -> AsyncIterator[Json]:
    """A searchset's Bundle and its next pages, to the last. A page that answers 404 (a
    paging link that expired) or a next link back to a page already read fails the
    listing: taken for its end, a build would replace the index with the people read so
    far and an update would move its watermark past changes it never read; followed,
    the listing would be read for ever. So does a listing whose ``Bundle.total`` its
    matches do not add up to (``PageCount``: a page past the end answered empty and
    without a next link, a total that shrank between pages)."""
    url: str | None = first
    seen: set[str] = set()
    count = PageCount(source)
    while url:
        if url in seen:
            raise SourceBadPayload(
                source, "a listing's next link leads back to a page already read"
            )
        seen.add(url)
        doc, _ = await get_json(session, source, "GET", url)
        if doc is None:
            raise missing_page(source)
        count.page(matches(doc), stated_total(doc))
        yield doc
        url = next_page(doc)
    count.ended()


def matches(doc: Json) -> int:
    """How many of a searchset page's entries are matches (not includes or outcomes),
    the entries its ``Bundle.total`` counts."""
    entries = doc.get("entry")
    if not isinstance(entries, list):
        return 0
    return sum(
        1
        for e in entries
        if not isinstance(e, dict)
        or not isinstance(e.get("search"), dict)
        or e["search"].get("mode", "match") == "match"
    )


def stated_total(doc: Json) -> int | None:
    """A searchset's ``Bundle.total``, when it states one."""
    total = doc.get("total")
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def source_patient_id(source: str, local: str) -> str:
    """The gateway id of a source's Patient."""
    return namespaced_id(source, local)
