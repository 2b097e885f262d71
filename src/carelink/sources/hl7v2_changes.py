"""HL7 v2 ADT events as changes to a person at the community trust.

The same events arrive two ways: asked for (``GET /hl7/changes?since=``, the
live adapter) and pushed (the MLLP feed, stored by ``carelink feed listen``).
Either way each message becomes the records the patient index must look at:

- ``ADT^A28`` add person, ``ADT^A31`` update person, ``ADT^A04`` register and
  ``ADT^A08`` update patient, when they carry the person's name in PID-5: the
  record as the PID now has it;
- ``ADT^A40`` merge: the survivor (PID) as it now is, and the retired local id
  (MRG-1) as an inactive record ``replaced-by`` the survivor;
- ``ADT^A29`` delete person information: the local id as an inactive record.

Other events (visits, results, problems) change no one's demographics.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from carelink.sources.base import Json, SourcePerson, indexed, retired
from carelink.sources.hl7v2 import field, message_type, person, person_id, prior_id
from carelink.sources.namespacing import namespaced_id

#: events whose PID says who the person now is
PERSON_EVENTS = frozenset({"ADT^A28", "ADT^A31", "ADT^A04", "ADT^A08"})
MERGE = "ADT^A40"
DELETE = "ADT^A29"
#: every event that changes someone in the index
INDEX_EVENTS = PERSON_EVENTS | {MERGE, DELETE}


def registration(source: str, local: str, nhs: str | None, patient: Json) -> SourcePerson:
    """A person as a PID has them (``hl7v2.person``'s answer), for the patient index."""
    return SourcePerson(
        **{**vars(indexed(source, local, patient, first_line=True)), "nhs_number": nhs}
    )


def _current(msg: Any, source: str) -> SourcePerson | None:
    """The person the PID names, when it carries their name (a short PID does not)."""
    if not field(msg, msg.segment("PID"), 5)[0][0]:
        return None
    return registration(source, *person(msg, source))


def adt_changes(msg: Any, source: str) -> list[SourcePerson]:
    """The records one ADT message changes (none for an event that changes no one).
    Raises what ``hl7v2.person`` raises when a PID cannot be read."""
    kind = message_type(msg)
    if kind in PERSON_EVENTS:
        found = _current(msg, source)
        return [found] if found else []
    if kind == MERGE:
        survivor = person_id(msg)
        old = prior_id(msg)
        # the survivor as it is now, beside the entry's own record: the one merged away
        out = [replace(p, echo=True) for p in (_current(msg, source),) if p]
        if old and survivor and old != survivor:
            out.append(retired(source, old, namespaced_id(source, survivor)))
        return out
    if kind == DELETE:
        local = person_id(msg)
        return [retired(source, local)] if local else []
    return []


def hl7_dtm(instant: str) -> str:
    """A FHIR instant as an HL7 DTM in UTC to the ten-thousandth of a second."""
    moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y%m%d%H%M%S.") + f"{moment.microsecond // 100:04d}+0000"
