"""The GP system, spoken to as a GP Connect Access Record: Structured 1.6 consumer.

``fetch_record`` posts the STU3 ``Parameters`` (``gpconnect_request``) to
``{base}/Patient/$gpc.getstructuredrecord`` with the Spine headers and the
JWT naming the caller (``on_behalf_of``), reads the STU3 Bundle as R4
(``gpconnect_record``), and answers like every adapter: namespaced R4
resources, the entries it could not use in ``skipped``, the provider's warnings
in ``notes``. An error answer becomes the ``SourceError`` that says what
happened (``gpconnect_errors``). A person without a traced NHS number is never
sent: GP Connect identifies patients by NHS number only, and a local id in its
place would be a wrong-patient risk (``SourceNotAsked``). Every request goes to the
provider; an answer byte-for-byte the same as its last answer to the same question
is not read and converted again (``answer_cache``, as for the other sources).

``people`` and ``read_shared`` use the simulator's ``GET /Patient`` and
``GET /{type}/{id}`` (GP Connect's Foundations reads), in STU3 too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from urllib.parse import quote

import aiohttp
import orjson

from carelink.errors import SourceBadPayload, SourceNotAsked
from carelink.fhir.gpconnect import METADATA_INTERACTION_ID, OPERATION, SSP_INTERACTION_ID
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, is_valid
from carelink.observability.context import HEADER, current_request_id
from carelink.sources.answer_cache import AnswerCache
from carelink.sources.base import Json, SourceAnswer, SourcePerson
from carelink.sources.fhir_rest import (
    get_json,
    held_patient,
    localise,
    parse,
    person_from_patient,
    searchset_pages,
)
from carelink.sources.gpconnect_errors import failure
from carelink.sources.gpconnect_record import read_structured
from carelink.sources.gpconnect_request import (
    Consumer,
    Period,
    areas_for,
    current_period,
    current_requester,
    headers,
    parameters_json,
)
from carelink.sources.http import as_of, held_at, read_ahead, send
from carelink.sources.kind import KindCheck
from carelink.sources.namespacing import namespace
from carelink.sources.stu3 import listed_patient, to_r4

NO_NHS_NUMBER = "not sent: no traced NHS number (GP Connect finds patients by NHS number only)"


def _today() -> date:
    return datetime.now(UTC).date()


def about_whom(resources: list[Json], source: str, nhs_number: str) -> Json:
    """A structured record's one Patient, which must carry the NHS number asked for: a
    record with none, with two, or about someone else (a practice answering for the wrong
    person) is unreadable as a whole (``SourceBadPayload``), so no part of another
    person's record is ever served as this one's (as ``fhir_rest.about_whom`` for
    ``$everything``)."""
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    if not patients:
        raise SourceBadPayload(source, "structured record without a Patient")
    numbers = {
        str(i.get("value", "")).replace(" ", "")
        for i in patients[0].get("identifier") or ()
        if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM
    }
    if len(patients) > 1 or nhs_number not in numbers:
        raise SourceBadPayload(source, "structured record is about a different person")
    return patients[0]


class GPConnectSource:
    """A GP practice system behind GP Connect (``base_url``: the provider's FHIR base,
    through the Spine Secure Proxy when there is one)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        name: str = "gp",
        consumer: Consumer | None = None,
        page_size: int = 1000,
        clock: Callable[[], float] = time.time,
        today: Callable[[], date] = _today,
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.name = name
        self.consumer = consumer or Consumer()
        self.page_size = page_size
        self.clock = clock
        self.today = today
        self.cache = AnswerCache()
        self.kind = KindCheck(session, name, "gp", base_url, self._metadata_headers)

    def request(
        self, nhs_number: str, types: frozenset[str] | None, period: Period | None = None
    ) -> tuple[str, dict[str, str], bytes]:
        """URL, headers and body of one structured record request (no I/O)."""
        requester = current_requester() or self.consumer.fallback
        hdrs = headers(self.consumer, requester, self.base, int(self.clock()))
        request_id = current_request_id()
        if request_id is not None:
            hdrs[HEADER] = request_id
        body = parameters_json(nhs_number, types, period, self.today())
        return f"{self.base}/Patient/{OPERATION}", hdrs, body

    def _metadata_headers(self) -> dict[str, str]:
        """Spine headers of the Foundations "read metadata" interaction (the first-contact
        check's question, ``sources.kind``)."""
        hdrs = headers(
            self.consumer,
            current_requester() or self.consumer.fallback,
            self.base,
            int(self.clock()),
        )
        hdrs[SSP_INTERACTION_ID] = METADATA_INTERACTION_ID
        del hdrs["Content-Type"]
        return hdrs

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
        period: Period | None = None,
    ) -> SourceAnswer:
        """The structured record of the person with ``nhs_number``, as R4."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        if not nhs_number or not is_valid(nhs_number):
            raise SourceNotAsked(self.name, NO_NHS_NUMBER)
        if not areas_for(types):
            # nothing asked that a clinical area holds: the index has the demographics
            return SourceAnswer([], "no-area", as_of({}))
        url, hdrs, body = self.request(nhs_number, types, period or current_period())
        status, got, data = await send(self.session, self.name, "POST", url, hdrs, body)
        if status >= 400:
            raise failure(self.name, status, data)
        version = got.get("ETag", "") or orjson.dumps(len(data)).decode()
        # the same question answered with the same bytes reads as it did last time
        key = (f"{nhs_number}|{period}", patient_ref, types)
        cached = self.cache.lookup(key, data)
        if cached is not None:
            return SourceAnswer(cached.resources, version, as_of(got), cached.skipped, cached.notes)
        reading = read_structured(parse(data, self.name), self.name)
        patient = about_whom(reading.resources, self.name, nhs_number)
        out = localise(reading.resources, self.name, str(patient["id"]), patient_ref, types)
        skipped, notes = tuple(reading.skipped), tuple(dict.fromkeys(reading.notes))
        kept = self.cache.put(key, data, out, skipped, notes)
        return SourceAnswer(kept, version, as_of(got), skipped, notes)

    async def read_shared(self, resource_type: str, local_id: str) -> Json | None:
        """``GET /{type}/{id}`` (Practitioner, Organization, Location), as R4."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        url = f"{self.base}/{resource_type}/{quote(local_id, safe='')}"
        doc, _ = await get_json(self.session, self.name, "GET", url)
        if doc is None:
            return None
        converted = to_r4(doc).resource
        if converted.get("resourceType") != resource_type:
            raise SourceBadPayload(
                self.name, f"expected a {resource_type}, got {doc.get('resourceType')}"
            )
        return namespace(converted, self.name, "", "")

    async def holds(self, local_id: str) -> bool:
        """``GET /Patient/{id}`` of the practice: held unless 404, 410 or inactive
        (``HoldsCheck``)."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        url = f"{self.base}/Patient/{quote(local_id, safe='')}"
        return held_patient(await held_at(self.session, self.name, url), self.name)

    async def people(self) -> AsyncIterator[SourcePerson]:
        """Page through the practice list (``GET /Patient``), as R4."""
        async for r in self._resources(f"{self.base}/Patient?_count={self.page_size}"):
            if r.get("resourceType") == "Patient" and r.get("id"):
                patient = listed_patient(r)  # parsed here, ours to change
                yield person_from_patient(self.name, str(patient["id"]), patient)

    async def changed_since(self, instant: str) -> AsyncIterator[SourcePerson]:
        """The practice's registration events after ``instant`` (``GET
        /Bundle?_lastUpdated=gt...``: STU3 message Bundles, each a MessageHeader and the
        Patient as it is now), as R4 records: a merged one inactive with a
        ``replaced-by`` link, a deregistered one inactive, a superseded NHS number kept
        with ``use`` old. An event without its Patient fails the listing: skipping it
        would lose a change."""
        since = quote("gt" + instant, safe="")
        url = f"{self.base}/Bundle?_lastUpdated={since}&_count={self.page_size}"
        async for message in self._resources(url):
            entries = message.get("entry") if message.get("type") == "message" else None
            patients = [
                e["resource"]
                for e in entries or []
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == "Patient"
                and e["resource"].get("id")
            ]
            if len(patients) != 1:
                raise SourceBadPayload(self.name, "registration event without one Patient")
            patient = listed_patient(patients[0])
            yield person_from_patient(self.name, str(patient["id"]), patient)

    async def _resources(self, first: str) -> AsyncIterator[Json]:
        """The resources of a searchset and its next pages, each page asked for while
        the one before is read (``read_ahead``)."""
        async for doc in read_ahead(self._pages(first)):
            for e in doc.get("entry", []):
                r = e.get("resource") if isinstance(e, dict) else None
                if isinstance(r, dict):
                    yield r

    async def _pages(self, first: str) -> AsyncIterator[Json]:
        """A searchset and its next pages (once the far end has been confirmed to be a
        GP Connect provider)."""
        if not self.kind.confirmed:
            await self.kind.ensure()
        async for doc in searchset_pages(self.session, self.name, first):
            yield doc


def parse_answer(data: bytes, source: str) -> Json:
    """A structured record's bytes as JSON (``SourceBadPayload`` when not FHIR)."""
    return parse(data, source)
