"""Adapter for the council's social-care case-management API (its own JSON)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from carelink.errors import SourceBadPayload
from carelink.sources.answer_cache import AnswerCache
from carelink.sources.base import SourceAnswer, SourcePerson
from carelink.sources.http import answer, fetch
from carelink.sources.social_care_map import patient, record


def _load(data: bytes, source: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SourceBadPayload(source, "response is not JSON") from exc


class SocialCareSource:
    """The council's API: ``/api/v2/persons`` and ``/api/v2/persons/{ref}/case``."""

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

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
    ) -> SourceAnswer:
        """The person's case; an unknown person is an empty answer, not an error."""
        data, headers = await fetch(
            self.session, self.name, "GET", f"{self.base}/persons/{local_id}/case"
        )
        return answer(
            self.cache,
            (local_id, patient_ref, types),
            data,
            headers,
            lambda body: [
                r
                for r in record(_load(body, self.name), self.name, patient_ref)
                if types is None or r["resourceType"] in types or r["resourceType"] == "Patient"
            ],
        )

    async def people(self) -> AsyncIterator[SourcePerson]:
        """Everyone the council holds, page by page."""
        page = 1
        while True:
            data, _ = await fetch(
                self.session,
                self.name,
                "GET",
                f"{self.base}/persons?page={page}&pageSize={self.page_size}",
            )
            doc = _load(data or b"{}", self.name)
            if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
                raise SourceBadPayload(self.name, "person list without items")
            for item in doc["items"]:
                p = patient(item, self.name)
                address = (p.get("address") or [{}])[0]
                yield SourcePerson(
                    source=self.name,
                    local_id=str(item["personRef"]),
                    nhs_number=item.get("nhsNo") or None,
                    given=str(item["forename"]),
                    family=str(item["surname"]),
                    birth_date=p["birthDate"],
                    gender=p.get("gender"),
                    postcode=address.get("postalCode"),
                    address_line=(address.get("line") or [None])[0],
                    patient=p,
                )
            if page * self.page_size >= int(doc.get("totalItems", 0)) or not doc["items"]:
                return
            page += 1
