"""Synthetic people as a source would list them (for building a patient index in tests)."""

from __future__ import annotations

import orjson

from carelink.fhir.search import fold
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson
from carelink.storage import PersonRow


def as_listed_by(source: str, people: list[pop.Person]) -> list[SourcePerson]:
    """Each person as ``source`` lists them: its local id, their demographics, a Patient."""
    return [
        SourcePerson(
            source,
            pop.local_id(source, p.index),
            p.nhs_number,
            p.given,
            p.family,
            p.birth_date.isoformat(),
            p.gender,
            p.postcode,
            None,
            {
                "resourceType": "Patient",
                "id": pop.local_id(source, p.index),
                "name": [{"family": p.family, "given": [p.given]}],
            },
        )
        for p in people
    ]


def person_row(
    pid: str,
    birth_date: str | None = "1936-05-12",
    family: str = "Hartley",
    given: str = "Ada",
    gender: str | None = "female",
    postcode: str | None = "LS11 6AD",
    nhs_number: str | None = None,
) -> PersonRow:
    """An index row with just what search looks at (the Patient is a stub)."""
    body = orjson.dumps({"resourceType": "Patient", "id": pid})
    return PersonRow(
        pid,
        nhs_number,
        family,
        given,
        fold(family),
        fold(given),
        birth_date,
        gender,
        postcode,
        body,
        "v1",
    )
