"""A FHIR R4 server whose records a test changes while the gateway reads them.

Serves outside data (the vendored Synthea export, read with the simulators' own file
loader) as an acute EPR does: ``/fhir/metadata``, the Patient listing, each patient's
``$everything`` (``_type`` honoured, one page) and reads of shared resources. The test
holds the ``ChangingFhir`` and changes ``records`` (same ids, new content), points one
patient's answer at another's bytes (``same_as``), or makes the server answer
alternate requests from two versions of the data (``alternate``), as a source changing
while a request is under way does, or fail them (``fault``: an HTTP 500, an answer
that is not JSON, a JSON answer that is not a Bundle, or one ``slow`` seconds late).
Bodies are byte-for-byte the same for the same content (no timestamps), so the
gateway's answer cache and record memo see "the same answer" exactly when the content
is the same.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.simulators.base import etag_for
from carelink.simulators.fhir_server import (
    FHIR_JSON,
    capability,
    not_found,
    resource_read,
    searchset,
)
from carelink.simulators.fhir_store import FileStore

Json = dict[str, Any]


class ChangingFhir:
    """Records per local Patient id (Patient first), changeable between and during requests."""

    def __init__(self, data: Path, patients: int) -> None:
        store = FileStore(data)
        smallest = sorted(store.patient_ids(), key=lambda p: len(store.record(p) or []))
        #: local id -> the Patient and everything in its compartment, as served now
        self.records: dict[str, list[Json]] = {
            p: copy.deepcopy(store.record(p) or []) for p in smallest[:patients]
        }
        #: local id -> another local id whose answer is sent, byte for byte, instead
        self.same_as: dict[str, str] = {}
        #: when set, every other ``$everything`` is answered from these records instead
        self.alternate: dict[str, list[Json]] | None = None
        #: when set, every ``$everything`` fails so: ``500``, ``not-json``, ``not-bundle``,
        #: ``slow`` (answered, ``slow`` seconds late)
        self.fault: str | None = None
        self.slow = 3.0
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/fhir/metadata", capability("a FHIR R4 server", "4.0.1", ["Patient"], [])),
                Route("/fhir/Patient", self._patients),
                Route("/fhir/Patient/{id}/$everything", self._everything),
                Route("/fhir/{type}/{id}", resource_read(store)),
            ]
        )

    def _records_now(self) -> dict[str, list[Json]]:
        with self._lock:
            turn = next(self._turn)
        if self.alternate is not None and turn % 2:
            return self.alternate
        return self.records

    @staticmethod
    def _answer(body: Json) -> Response:
        """``fhir_response`` without ``Last-Modified``: nothing in an answer moves with the
        clock, so the same content is the same answer."""
        data = orjson.dumps(body)
        return Response(data, media_type=FHIR_JSON, headers={"ETag": etag_for(data)})

    async def _patients(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/") + "/fhir"
        patients = [r[0] for r in self.records.values()]
        return self._answer(searchset(base, patients, len(patients), {}))

    async def _everything(self, request: Request) -> Response:
        local = request.path_params["id"]
        if self.fault == "500":
            return Response(b"internal error", status_code=500, media_type="text/plain")
        if self.fault == "not-json":
            return Response(b"<html>maintenance</html>", media_type=FHIR_JSON)
        if self.fault == "not-bundle":
            return self._answer({"resourceType": "OperationOutcome", "issue": []})
        if self.fault == "slow":
            await asyncio.sleep(self.slow)
        records = self._records_now()
        record = records.get(self.same_as.get(local, local))
        if record is None:
            return not_found("Patient")
        asked = request.query_params.get("_type")
        types = set(asked.split(",")) if asked else None
        served = [r for r in record if types is None or r["resourceType"] in types]
        base = str(request.base_url).rstrip("/") + "/fhir"
        return self._answer(searchset(base, served, len(served), {}))


def built_env(database: str, sources: str) -> dict[str, str]:
    """The settings of an index build (and a gateway) over ``sources`` (``name=url,...``)
    into ``database``: a budget nothing times out in, so answers depend on content alone."""
    return {
        "CARELINK_DATABASE_URL": database,
        "CARELINK_SOURCES": sources,
        "CARELINK_BUDGET": "20",
        "CARELINK_AUTH": "development",
    }
