"""Synthetic people as a source would list them (for building a patient index in tests)."""

from __future__ import annotations

from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson


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
