"""Where the FHIR-speaking simulators get their data.

``PopulationStore`` renders a slice of the synthetic population;
``FileStore`` serves FHIR R4 handed to it (NDJSON files or Bundles, such as a
Synthea Bulk Data export): every resource in the record of each Patient whose
compartment it is in, the rest as shared resources, and a report of what was
skipped and why (``carelink.simulators.fhir_load``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.fhir.shared_types import SHARED_TYPES
from carelink.simulators import fhir_files, fhir_render
from carelink.simulators.fhir_files import data_files
from carelink.simulators.fhir_load import LoadReport, load
from carelink.simulators.store import PopulationSlice

Json = dict[str, Any]


class FhirStore(Protocol):
    """Read access the FHIR simulators need.

    What a store hands out is its own and shared between requests (a population's
    records are kept once rendered, a file's resources once loaded, and
    ``stu3_render.RenderedBundles`` reuses bytes made from the very same objects):
    serialise it, or copy it before changing it (``stu3_render.down`` does), never
    change it in place."""

    def patient_ids(self) -> list[str]:
        """Local Patient ids in a stable order."""
        ...

    def find(self, system: str | None, value: str) -> str | None:
        """The local Patient id with identifier ``system|value``."""
        ...

    def record(self, local: str) -> list[Json] | None:
        """The Patient (first) and everything in its compartment, or None if unknown."""
        ...

    def patient(self, local: str) -> Json | None:
        """The Patient alone (listing patients never builds their records), or None."""
        ...

    def resource(self, rtype: str, rid: str) -> Json | None:
        """Any resource the source holds by type and id (shared ones included), or None."""
        ...

    def search(self, rtype: str, system: str | None, value: str) -> list[Json]:
        """Resources of ``rtype`` with identifier ``system|value`` (any system if None)."""
        ...


class PopulationStore:
    """A source's slice of the synthetic population, rendered as FHIR."""

    def __init__(self, source: str, seed: int, size: int) -> None:
        self.source = source
        self.slice = PopulationSlice(source, seed, size)
        self._record = lru_cache(maxsize=20_000)(self._render)

    def patient_ids(self) -> list[str]:
        return self.slice.local_ids()

    def find(self, system: str | None, value: str) -> str | None:
        if system in (None, "", NHS_NUMBER_SYSTEM):
            hit = self.slice.by_nhs.get(value)
            if hit is not None:
                return hit
        if system in (None, "", fhir_render.LOCAL_SYSTEMS.get(self.source)):
            return value if value in self.slice.by_local else None
        return None

    def _render(self, local: str) -> list[Json]:
        person = self.slice.by_local[local]
        return fhir_render.record(person, self.source, local, self.slice.facts(local))

    def record(self, local: str) -> list[Json] | None:
        if local not in self.slice.by_local:
            return None
        return self._record(local)

    def patient(self, local: str) -> Json | None:
        person = self.slice.by_local.get(local)
        return fhir_render.patient(person, self.source, local) if person else None

    def resource(self, rtype: str, rid: str) -> Json | None:
        """Only Patients: the generated population holds no shared resources."""
        rec = self.record(rid) if rtype == "Patient" else None
        return rec[0] if rec else None

    def search(self, rtype: str, system: str | None, value: str) -> list[Json]:
        local = self.find(system, value) if rtype == "Patient" else None
        rec = self.record(local) if local else None
        return [rec[0]] if rec else []


class FileStore:
    """FHIR R4 from files: ``*.ndjson`` (one resource a line) or ``*.json`` Bundles.

    ``report`` says what was loaded and what was not, and why (see
    ``carelink.simulators.fhir_load``). ValueError if ``path`` holds no
    Patient to serve.
    """

    def __init__(self, path: Path) -> None:
        files = data_files(path)
        items, problems = fhir_files.read(files)
        self.loaded = load(items)
        self.report = LoadReport(
            files=len(files),
            patients=len(self.loaded.patients),
            in_records=len({id(r) for rs in self.loaded.compartments.values() for r in rs}),
            shared=len(self.loaded.shared),
            without_id=tuple(self.loaded.without_id),
            skipped=(*problems, *self.loaded.skipped),
        )
        if not self.loaded.patients:
            first = f"; first: {self.report.skipped[0]}" if self.report.skipped else ""
            raise ValueError(
                f"{path}: no FHIR Patient to serve in {len(files)} files "
                f"({len(self.report.skipped)} skipped{first})"
            )

    def shared_resource(self, rtype: str, local: str) -> Json | None:
        """A Practitioner, Organization, ... (outside every compartment) by id."""
        return self.resource(rtype, local) if rtype in SHARED_TYPES else None

    def shared_by_identifier(self, rtype: str, system: str | None, value: str) -> Json | None:
        """A shared resource by identifier (``system`` None: any system)."""
        if rtype not in SHARED_TYPES:
            return None
        return next(iter(self.search(rtype, system, value)), None)

    def patient_ids(self) -> list[str]:
        return list(self.loaded.patients)

    def find(self, system: str | None, value: str) -> str | None:
        hits = self.loaded.find("Patient", system, value)
        if hits:
            return hits[0]
        return value if not system and value in self.loaded.patients else None

    def record(self, local: str) -> list[Json] | None:
        patient = self.loaded.patients.get(local)
        if patient is None:
            return None
        return [patient, *self.loaded.compartments.get(local, [])]

    def patient(self, local: str) -> Json | None:
        return self.loaded.patients.get(local)

    def resource(self, rtype: str, rid: str) -> Json | None:
        return self.loaded.by_key.get((rtype, rid))

    def search(self, rtype: str, system: str | None, value: str) -> list[Json]:
        return [self.loaded.by_key[(rtype, rid)] for rid in self.loaded.find(rtype, system, value)]
