"""People a simulator has been told of since it started, and when.

The synthetic population never changes by itself; a test or benchmark that
needs a source to change (a new registration, a corrected name or address, a
merge, a superseded NHS number, a person gone) tells the simulator over HTTP.
The acute EPR takes ``PUT``/``DELETE /fhir/Patient/{id}`` as a FHIR server
does; the others, whose own interfaces have no such call, take the same R4
Patient at ``PUT``/``DELETE /_admin/patients/{id}`` (``admin_routes``). A
merged-away record is a Patient with ``active`` false and a ``replaced-by``
link to the survivor; a superseded NHS number stays as an identifier with
``use`` ``old`` beside the new one.

Each simulator serves the people changed here in place of the generated ones,
and lists what changed since an instant in its own idiom (FHIR
``_lastUpdated``, HL7 v2 ADT events, the council's change list, GP event
messages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Json = dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


def parse_instant(text: str) -> datetime:
    """A FHIR instant (or ISO date-time) as an aware datetime; ``ValueError`` if not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Changed:
    """One person's latest change: when, and their Patient now (None: gone from the source)."""

    local: str
    stamp: datetime
    patient: Json | None

    @property
    def instant(self) -> str:
        """``stamp`` as a FHIR instant with microseconds."""
        return self.stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")

    @property
    def merged_into(self) -> str | None:
        """The local id of the record this one was merged into, if it was."""
        if self.patient is None or self.patient.get("active") is not False:
            return None
        for link in self.patient.get("link", []):
            ref = str((link.get("other") or {}).get("reference", ""))
            if link.get("type") == "replaced-by" and ref.startswith("Patient/"):
                return ref.removeprefix("Patient/")
        return None


class PatientChanges:
    """The people changed since start, by local id, each with their latest change."""

    def __init__(
        self, clock: Callable[[], datetime] = _now, on_change: Callable[[], None] | None = None
    ) -> None:
        self.clock = clock
        self.on_change = on_change  # e.g. forget answers cached before the change
        self.latest: dict[str, Changed] = {}  # in order of change, oldest first
        #: the lists last made by ``listed``/``present``, by kind, with the number of
        #: changes they reflect: a simulator lists a population of up to a million a page
        #: at a time, and remaking the whole list for every page made listing quadratic
        self._made: dict[str, tuple[int, list[str]]] = {}
        self._count = 0  # changes made since start

    def _keep(self, local: str, patient: Json | None) -> Changed:
        stamp = self.clock()
        last = next(reversed(self.latest.values()), None)
        if last is not None and stamp <= last.stamp:  # changes strictly in order
            stamp = last.stamp + timedelta(microseconds=1)
        changed = Changed(local, stamp, patient)
        self.latest.pop(local, None)
        self.latest[local] = changed
        self._count += 1
        if self.on_change is not None:
            self.on_change()
        return changed

    def put(self, local: str, patient: Json) -> Json:
        """Keep a copy of ``patient`` as the current version of ``local``, stamped now, and
        return it. The copy shares nothing with ``patient``: a caller that goes on using
        its object (or puts it again for someone else) cannot change what is served under
        this change's stamp without a change listed. What is returned, and what
        ``patient`` and ``since`` hand out, is the kept object itself: served as it is,
        never to be changed."""
        changed = self._keep(local, patient)
        own: Json = orjson.loads(orjson.dumps(patient))  # a deep copy of JSON data
        stored = {
            **own,
            "id": local,
            "meta": {**own.get("meta", {}), "lastUpdated": changed.instant},
        }
        self.latest[local] = Changed(local, changed.stamp, stored)
        return stored

    def delete(self, local: str) -> None:
        """``local`` is no longer held by the source."""
        self._keep(local, None)

    def patient(self, local: str, generated: Callable[[str], Json | None]) -> Json | None:
        """The current Patient of ``local``: the changed one, none when deleted, else
        the generated one."""
        changed = self.latest.get(local)
        return generated(local) if changed is None else changed.patient

    def listed(self, generated: list[str]) -> list[str]:
        """The local ids the source lists now: the generated ones less those deleted,
        then those added since start (``generated`` itself while nothing has changed).
        ``generated`` is the same population at every call."""
        if not self.latest:
            return generated
        made = self._made.get("listed")
        if made is not None and made[0] == self._count:
            return made[1]
        ids = [i for i in generated if i not in self.latest or self.latest[i].patient is not None]
        known = set(ids)
        ids += [
            c.local for c in self.latest.values() if c.patient is not None and c.local not in known
        ]
        self._made["listed"] = (self._count, ids)
        return ids

    def present(self, generated: list[str]) -> list[str]:
        """What ``listed`` lists less the records merged into another (a source's
        patient list holds a merged-away record no more)."""
        listed = self.listed(generated)
        if not self.latest:
            return listed
        made = self._made.get("present")
        if made is not None and made[0] == self._count:
            return made[1]
        ids = [i for i in listed if i not in self.latest or self.latest[i].merged_into is None]
        self._made["present"] = (self._count, ids)
        return ids

    def since(self, instant: str) -> list[Changed]:
        """The latest changes made strictly after ``instant`` (a FHIR instant), oldest
        first; ``ValueError`` when ``instant`` is not one."""
        cut = parse_instant(instant)
        return [c for c in self.latest.values() if c.stamp > cut]


def admin_routes(changes: PatientChanges) -> list[Route]:
    """``PUT``/``DELETE /_admin/patients/{id}``: change a person of a running simulator
    whose own interface cannot (an R4 Patient in the body)."""

    async def put(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return Response(b"body is not JSON", status_code=400)
        if not isinstance(body, dict) or body.get("resourceType") != "Patient":
            return Response(b"body must be an R4 Patient", status_code=400)
        stored = changes.put(request.path_params["id"], body)
        return Response(orjson.dumps(stored), media_type="application/json")

    async def delete(request: Request) -> Response:
        changes.delete(request.path_params["id"])
        return Response(status_code=204)

    return [
        Route("/_admin/patients/{id}", put, methods=["PUT"]),
        Route("/_admin/patients/{id}", delete, methods=["DELETE"]),
    ]
