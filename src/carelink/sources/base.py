"""The ``Source`` protocol: what federation needs from any source system adapter.

An adapter takes its HTTP session and base URL (injected, as httpx takes a
transport), speaks the source's native interface and returns FHIR R4 dicts:

- ids namespaced per source (``<source>-<local id>``) so two sources never
  collide, and every reference inside the source's answer rewritten to match;
- the person's own references (``subject``, ``patient``, ``beneficiary`` ...)
  pointing at the gateway's merged Patient (``patient_ref``);
- ``meta.source`` naming the source, sensitivity carried in ``meta.security``.

Adapters raise ``SourceUnavailable`` / ``SourceBadPayload`` when the answer as
a whole cannot be had or read; one unreadable resource, message or record
costs only itself: it is left out and named in ``SourceAnswer.skipped``.
Federation owns timeouts and circuit breaking.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.fhir.search import fold
from carelink.storage import (
    BIRTH_DATE_LENGTH,
    GENDER_LENGTH,
    LOCAL_ID_LENGTH,
    NAME_LENGTH,
    POSTCODE_LENGTH,
    SOURCE_LENGTH,
)

Json = dict[str, Any]

#: ``meta.source`` for resources from source ``name``
SOURCE_URI = "urn:carelink:source:{name}"
#: identifier system for a source's local patient ids
LOCAL_ID_SYSTEM = "https://carelink.example/Id/{name}"

_REMEMBER: ContextVar[bool] = ContextVar("carelink_answer_cache_remember", default=True)


@contextmanager
def bulk_read() -> Iterator[None]:
    """Within this block (and the tasks it starts), answers are not added to any cache:
    neither an adapter's answer cache nor federation's record memo. An extract, which
    reads each person once, runs inside it."""
    token = _REMEMBER.set(False)
    try:
        yield
    finally:
        _REMEMBER.reset(token)


def remembering() -> bool:
    """Whether answers made now may be kept (False inside ``bulk_read()``)."""
    return _REMEMBER.get()


SENSITIVITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SENSITIVITY_DISPLAY = {
    "PSY": "psychiatry disorder information sensitivity",
    "ETH": "substance abuse information sensitivity",
    "STD": "sexually transmitted disease information sensitivity",
    "HIV": "HIV/AIDS information sensitivity",
    "SEX": "sexuality and reproductive health information sensitivity",
    "SDV": "sexual assault, abuse, or domestic violence information sensitivity",
}


def holdable_key(source: str, local_id: str) -> bool:
    """Can the index hold (and look up) a record by this key? Not when it is longer than
    its columns, or holds a NUL (PostgreSQL takes none in text, not even to compare)."""
    return (
        len(local_id) <= LOCAL_ID_LENGTH
        and len(source) <= SOURCE_LENGTH
        and "\x00" not in local_id
        and "\x00" not in source
    )


@dataclass(frozen=True)
class SourcePerson:
    """One person as a source knows them, for building the patient index."""

    source: str
    local_id: str
    nhs_number: str | None
    given: str
    family: str
    birth_date: str | None  # ISO date
    gender: str | None  # FHIR administrative gender
    postcode: str | None
    address_line: str | None
    patient: Json  # the source's Patient, as FHIR R4 (namespaced id)
    #: the demographics ``__post_init__`` left out, by field name (a build counts them)
    left_out: tuple[str, ...] = field(default=(), compare=False)
    #: a record a change listing's entry carries beside the record the entry is about
    #: (an HL7 v2 A40's survivor, beside the record merged into it): listed again by any
    #: other entry about it, so not a sign the listing moved (``update.held_mark``)
    echo: bool = field(default=False, compare=False)

    @property
    def keyable(self) -> bool:
        """Can the index hold this record's key (its source's name and its id there)?
        One that cannot is left out of the index and counted, never stored cut short
        (PostgreSQL refused the whole build for one such record; SQLite kept it)."""
        return holdable_key(self.source, self.local_id)

    def __post_init__(self) -> None:
        """Leave out a demographic the patient index cannot hold (a name, or its fold,
        longer than the name columns; a birth date, gender or postcode longer than
        theirs; any of them holding a NUL, which PostgreSQL stores in no text): the
        record is still indexed, and ``patient`` keeps what the source sent, but nobody
        is linked or found by that field; ``left_out`` names it. Without this, one record
        from outside stopped a PostgreSQL build (SQLite kept the value)."""
        left = list(self.left_out)
        for name in ("given", "family"):
            value: str = getattr(self, name)
            # ASCII folds to its own length (a fold costs ~2 us, on every record listed)
            too_long = len(value) > NAME_LENGTH or "\x00" in value  # no NUL in stored text
            if too_long or (not value.isascii() and len(fold(value)) > NAME_LENGTH):
                object.__setattr__(self, name, "")
                left.append(name)
        for name, limit in (
            ("birth_date", BIRTH_DATE_LENGTH),
            ("gender", GENDER_LENGTH),
            ("postcode", POSTCODE_LENGTH),
        ):
            held: str | None = getattr(self, name)
            if held is not None and (len(held) > limit or "\x00" in held):
                object.__setattr__(self, name, None)
                left.append(name)
        if len(left) != len(self.left_out):
            object.__setattr__(self, "left_out", tuple(left))


@dataclass(frozen=True)
class SourceAnswer:
    """One source's part of a person's record."""

    #: a tuple when it is a remembered answer (``AnswerCache``): handed on as it is
    resources: Sequence[Json]
    version: str  # changes whenever the source's data for the person changes
    as_of: str  # FHIR instant: when the source says the data was current
    #: what the adapter could not read and left out, one line each ("Observation entry
    #: 3: no id"); the rest of the answer still counts. Never quotes patient data.
    skipped: tuple[str, ...] = ()
    #: what the source said about its answer (a GP Connect List's warning that items
    #: were withheld, a parameter it did not recognise), one line each
    notes: tuple[str, ...] = ()


@runtime_checkable
class Source(Protocol):
    """A source system, as federation sees it."""

    name: str  # "acute" | "gp" | "community" | "social-care" | ...

    async def fetch_record(
        self,
        local_id: str,
        patient_ref: str,
        types: frozenset[str] | None,
        nhs_number: str | None = None,
    ) -> SourceAnswer:
        """The person's record at this source; ``types`` narrows resource types when given.

        ``nhs_number`` is passed when the index knows it: sources keyed on it
        (GP Connect) use it, others ignore it.
        """
        ...

    def people(self) -> AsyncIterator[SourcePerson]:
        """Every person the source holds (for ``carelink index build``)."""
        ...


@runtime_checkable
class ChangeLister(Protocol):
    """A source that can list the people it made or changed since an instant (for
    ``carelink index update``). A record merged into another comes with the Patient's
    ``active`` false and a ``replaced-by`` link to the survivor."""

    name: str

    def changed_since(self, instant: str) -> AsyncIterator[SourcePerson]:
        """Records made or changed after ``instant`` (a FHIR instant), oldest first."""
        ...


@runtime_checkable
class HoldsCheck(Protocol):
    """A source that can say, of one record asked for alone, whether it holds it now."""

    name: str

    async def holds(self, local_id: str) -> bool:
        """Whether the source holds the record ``local_id`` now (not deleted, not merged
        away), asked of that record alone rather than read from a listing. For
        ``reconcile``, before it counts as gone a record the listing lacked: a listing
        read a page at a time by offset while the source registers one person and
        removes another skips the person at a page's edge, its total unchanged."""
        ...


@runtime_checkable
class CursorLister(Protocol):
    """A source whose changes are read in the order it stored them, from a cursor (the
    stored HL7 v2 feed: the sequence of the last message taken), not from an instant."""

    name: str

    async def changes_after(self, cursor: str, limit: int) -> tuple[list[SourcePerson], str]:
        """Records changed by at most ``limit`` changes stored after ``cursor`` (``""``:
        from the first), oldest first, and the cursor to ask from next time."""
        ...


@runtime_checkable
class SharedReader(Protocol):
    """A source that also serves resources outside patients' compartments
    (Practitioner, Organization, Location ...), by the source's own id."""

    async def read_shared(self, resource_type: str, local_id: str) -> Json | None:
        """The resource, namespaced like the source's records, or None if unknown."""
        ...


def nhs_number_of(patient: Json) -> str | None:
    """A Patient's current NHS number (one kept with ``use`` old is superseded)."""
    return next(
        (
            i.get("value")
            for i in patient.get("identifier", [])
            if i.get("system") == NHS_NUMBER_SYSTEM and i.get("use") != "old"
        ),
        None,
    )


def indexed(source: str, local_id: str, patient: Json, first_line: bool = False) -> SourcePerson:
    """A FHIR Patient's demographics as the patient index reads them (the first name
    and address; ``first_line``: only that address's first line, as HL7 v2's XAD-1)."""
    name = (patient.get("name") or [{}])[0]
    address = (patient.get("address") or [{}])[0]
    lines = address.get("line", [])
    line = (lines[0] if lines else None) if first_line else " ".join(lines)
    return SourcePerson(
        source=source,
        local_id=local_id,
        nhs_number=nhs_number_of(patient),
        given=" ".join(name.get("given", [])),
        family=name.get("family", ""),
        birth_date=patient.get("birthDate"),
        gender=patient.get("gender"),
        postcode=address.get("postalCode"),
        address_line=line or None,
        patient=patient,
    )


def retired(source: str, local_id: str, survivor_patient_id: str | None = None) -> SourcePerson:
    """A record a change listing says is gone: merged into the record whose gateway
    Patient id is ``survivor_patient_id`` (a ``replaced-by`` link), or closed (none)."""
    patient: Json = {"resourceType": "Patient", "active": False}
    if survivor_patient_id:
        patient["link"] = [
            {"type": "replaced-by", "other": {"reference": f"Patient/{survivor_patient_id}"}}
        ]
    return SourcePerson(source, local_id, None, "", "", None, None, None, None, patient)


def source_uri(name: str) -> str:
    """``meta.source`` value for source ``name``."""
    return SOURCE_URI.format(name=name)


def local_id_system(name: str) -> str:
    """Identifier system of source ``name``'s local patient ids."""
    return LOCAL_ID_SYSTEM.format(name=name)


def security_labels(sensitivity: str | None) -> list[Json]:
    """``meta.security`` for a sensitivity code (plus confidentiality R), or nothing."""
    if not sensitivity:
        return []
    return [
        {
            "system": SENSITIVITY_SYSTEM,
            "code": sensitivity,
            "display": SENSITIVITY_DISPLAY.get(sensitivity, sensitivity),
        },
        {"system": CONFIDENTIALITY_SYSTEM, "code": "R", "display": "restricted"},
    ]
