"""The rows of the patient index as frozen values, and the making of them from the
driver's tuples on the request path (``IndexStore``'s reads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, TypeVar

from carelink.storage.tables import persons


@dataclass(frozen=True)
class PersonRow:
    """One person in the index; ``patient`` is the merged Patient as JSON bytes."""

    id: str
    nhs_number: str | None
    family: str
    given: str
    family_folded: str
    given_folded: str
    birth_date: str | None
    gender: str | None
    postcode: str | None
    patient: bytes
    version: str
    #: ``patient`` carries nothing a consent policy finds a sensitive category by
    #: (``consent.policy.unmarked``) and is the Patient of ``id``: decided by whoever
    #: makes the row from the Patient it writes (False decides nothing: a search then
    #: parses the Patient and asks consent about it)
    plain: bool = False


class FoundPerson(NamedTuple):
    """A person as a search reads them (``IndexStore.find_with_consents``): the id, the
    merged Patient as JSON bytes, and whether it is ``PersonRow.plain``. A search decides
    and shows nothing from the index's other columns, and reading them cost more than the
    Patient (eleven driver values made for each person found)."""

    id: str
    patient: bytes
    plain: bool = False


@dataclass(frozen=True)
class LinkRow:
    """A person's record at one source; ``patient`` is that source's Patient as JSON bytes."""

    source: str
    local_id: str
    person_id: str
    patient_id: str
    method: str  # "nhs-number" | "demographic" | "unmatched"
    score: float | None
    patient: bytes


@dataclass(frozen=True)
class ReviewRow:
    """A near miss: a record scored between the review and match thresholds."""

    source: str
    local_id: str
    candidate_id: str | None
    score: float
    explanation: str
    demographics: str


@dataclass(frozen=True)
class FieldsRow:
    """A linked record's linking fields and the values it is looked up by (``record_fields``)."""

    source: str
    local_id: str
    nhs: str | None  # the valid NHS number, if any
    given: str
    family: str
    birth_date: str | None
    gender: str | None
    postcode: str | None
    day: str
    names_ym: str
    pc: str


def person_and_consents(
    rows: Sequence[tuple[Any, ...]], sort: bool = False
) -> tuple[PersonRow, list[tuple[str, bytes]]] | None:
    """A person read with their active consents (one row per consent, or one without),
    the consents in id order (``sort``: put in it here; else read in it)."""
    if not rows:
        return None
    width = len(persons.c)
    consents = [(str(r[width]), bytes(r[width + 1])) for r in rows if r[width] is not None]
    if sort and len(consents) > 1:
        consents.sort(key=_first)  # ids are unique: the bodies are never compared
    return person_row(rows[0][:width]), consents


def _first(consent: tuple[str, bytes]) -> str:
    return consent[0]


R = TypeVar("R")
_PERSON_FIELDS = tuple(f.name for f in fields(PersonRow))
_LINK_FIELDS = tuple(f.name for f in fields(LinkRow))


def _row(cls: type[R], names: tuple[str, ...], values: list[Any]) -> R:
    """``cls(*values)`` for a frozen dataclass without fields of its own making: its
    attributes set in one step. A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, and the request path makes a row per person and link it
    reads (the equal row: ``tests/storage/test_index_store.py``)."""
    row = object.__new__(cls)
    row.__dict__.update(zip(names, values, strict=True))
    return row


def person_row(row: tuple[Any, ...]) -> PersonRow:
    """A ``PersonRow`` of a row of ``persons``, as ``PersonRow(*row)`` makes it, its
    fields set in one step: a frozen dataclass's ``__init__`` sets its twelve fields one
    by one through ``object.__setattr__``, more than twice the time of this."""
    values = list(row)
    values[9] = bytes(values[9])  # sqlite3 and psycopg give bytes / memoryview
    values[11] = bool(values[11])  # sqlite3 gives 0 / 1
    return _row(PersonRow, _PERSON_FIELDS, values)


def link_row(row: tuple[Any, ...]) -> LinkRow:
    values = list(row)
    values[6] = bytes(values[6])
    return _row(LinkRow, _LINK_FIELDS, values)
