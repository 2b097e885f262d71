"""Read one resource by type and id: find whose record holds it, federate, pick it out.

Resource ids are the gateway's (``acute-123``), handed out in Bundles; the
``resource_locations`` table, written whenever a person is federated, says
whose record each came from. Patient data is found by federating that person
for the one type (consent is the caller's business: the API applies it to
what this returns). Shared resources (Practitioner, Organization ...) are
not patient data: they are read from the source named by the id's prefix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from carelink.errors import SourceTimeout
from carelink.federation.record import Federated, SharedRecord
from carelink.fhir.shared_types import SHARED_TYPES
from carelink.sources.base import SharedReader
from carelink.sources.namespacing import namespaced_id
from carelink.storage import IndexStore, PersonRow

Json = dict[str, Any]


@dataclass(frozen=True)
class Located:
    """A resource of a person's record, with the federation it was found in."""

    person_id: str
    resource: Json
    federated: Federated


def is_shared(resource_type: str) -> bool:
    """Is the type outside every patient's compartment (read without patient consent)?"""
    return resource_type in SHARED_TYPES


def person_of(record: SharedRecord, resource_type: str, resource_id: str) -> str | None:
    """The person whose record held the resource when the gateway last federated it."""
    if record.locations is None:
        return None
    return record.locations.person_of(resource_type, resource_id)


async def locate(
    record: SharedRecord,
    person: PersonRow,
    resource_type: str,
    resource_id: str,
    deadline: float | None = None,
) -> Located | None:
    """The resource from ``person``'s record (found by ``person_of``) as the sources give it
    now, or None when the record no longer holds it (deleted at the source, or the source
    not answering now). Provenance is found among the record's Provenance (which needs the
    whole record: its targets are every resource of a source).
    """
    if resource_type == "Provenance":
        fed = await record.federate(person.id, None, deadline, person)
        pool = fed.provenance
    else:
        types = frozenset({resource_type, "Patient"})
        fed = await record.federate(person.id, types, deadline, person)
        pool = fed.resources
    hit = next(
        (r for r in pool if r["resourceType"] == resource_type and r["id"] == resource_id), None
    )
    return None if hit is None else Located(person.id, hit, fed)


def retired_patient(index: IndexStore, person_id: str) -> Json | None:
    """The Patient a client holding a retired person id reads (FHIR R4 Patient.link): not
    active, ``replaced-by`` each live person its records went to. None when the id was
    never retired (or its records went nowhere): unknown, as before."""
    successors = index.successors(person_id)
    if not successors:
        return None
    return {
        "resourceType": "Patient",
        "id": person_id,
        "active": False,
        "link": [
            {"other": {"reference": f"Patient/{s}"}, "type": "replaced-by"} for s in successors
        ],
    }


def source_of(record: SharedRecord, resource_id: str) -> tuple[str, str] | None:
    """(source, local id) named by a gateway id ``<source>-<local>``; None if no source is.

    Long local ids were hashed into the gateway id and cannot be recovered.
    """
    for name in sorted(record.fanout.sources, key=len, reverse=True):
        if resource_id.startswith(f"{name}-"):
            local = resource_id[len(name) + 1 :]
            if namespaced_id(name, local) == resource_id:
                return name, local
    return None


async def read_shared(record: SharedRecord, resource_type: str, resource_id: str) -> Json | None:
    """A shared resource (Practitioner, Organization ...) from the source its id names.

    Raises the source's ``SourceError`` when it cannot answer (``SourceTimeout``
    after the federation's time budget).
    """
    found = source_of(record, resource_id)
    if found is None:
        return None
    name, local = found
    source = record.fanout.sources.get(name)
    if not isinstance(source, SharedReader):
        return None
    try:
        return await asyncio.wait_for(
            source.read_shared(resource_type, local), record.fanout.budget
        )
    except TimeoutError as exc:
        raise SourceTimeout(name, "no answer within the time budget") from exc
