"""Patients a FHIR simulator has been told of since it started, and when.

The synthetic population never changes by itself; a test or benchmark that
needs a source to change (a new registration, a corrected name, a merge)
``PUT``s the Patient. The simulator stamps ``meta.lastUpdated``, serves the
new version in place of the generated one, and lists it under
``GET /Patient?_lastUpdated=gt<instant>``, as a FHIR server does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


class PatientChanges:
    """Patients put since start, by local id, each stamped with when."""

    def __init__(self, clock: Callable[[], datetime] = _now) -> None:
        self.clock = clock
        self.patients: dict[str, Json] = {}
        self._order: list[str] = []

    def put(self, local: str, patient: Json) -> Json:
        """Keep ``patient`` as the current version of ``local``, stamped now."""
        stamp = self.clock().isoformat(timespec="microseconds").replace("+00:00", "Z")
        stored = {**patient, "id": local, "meta": {**patient.get("meta", {}), "lastUpdated": stamp}}
        if local in self.patients:
            self._order.remove(local)
        self.patients[local] = stored
        self._order.append(local)
        return stored

    def since(self, instant: str) -> list[str]:
        """Local ids changed strictly after ``instant`` (FHIR instant), oldest first."""
        cut = datetime.fromisoformat(instant.replace("Z", "+00:00"))
        if cut.tzinfo is None:
            cut = cut.replace(tzinfo=UTC)
        return [
            local
            for local in self._order
            if datetime.fromisoformat(
                self.patients[local]["meta"]["lastUpdated"].replace("Z", "+00:00")
            )
            > cut
        ]
