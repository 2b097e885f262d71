"""Where the FHIR-speaking simulators get their data.

``PopulationStore`` renders a slice of the synthetic population;
``FileStore`` serves FHIR R4 handed to it (NDJSON files or Bundles, such as a
Synthea Bulk Data export), grouping every resource under the Patient it
refers to.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import orjson

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import fhir_render
from carelink.simulators.store import PopulationSlice

Json = dict[str, Any]

#: Elements through which a resource belongs to a patient's compartment
PATIENT_LINKS = ("subject", "patient", "beneficiary", "individual")
#: Resources outside any patient's compartment that records refer to (kept by ``FileStore``)
SHARED_TYPES = ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication")


class FhirStore(Protocol):
    """Read access the FHIR simulators need."""

    def patient_ids(self) -> list[str]:
        """Local Patient ids in a stable order."""
        ...

    def find(self, system: str | None, value: str) -> str | None:
        """The local Patient id with identifier ``system|value``."""
        ...

    def record(self, local: str) -> list[Json] | None:
        """The Patient (first) and everything in its compartment, or None if unknown."""
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


class FileStore:
    """FHIR R4 from files: ``*.ndjson`` (one resource a line) or ``*.json`` Bundles."""

    def __init__(self, path: Path) -> None:
        files = (
            sorted(path.rglob("*.ndjson")) + sorted(path.rglob("*.json"))
            if path.is_dir()
            else [path]
        )
        if not files:
            raise ValueError(f"{path}: no .ndjson or .json files found")
        self.patients: dict[str, Json] = {}
        self.compartments: dict[str, list[Json]] = {}
        self.identifiers: dict[tuple[str, str], str] = {}
        self.shared: dict[tuple[str, str], Json] = {}
        self.shared_ids: dict[tuple[str, str, str], str] = {}
        for resource in _read(files):
            self._add(resource)

    def _add(self, resource: Json) -> None:
        if resource.get("resourceType") == "Patient":
            local = str(resource["id"])
            self.patients[local] = resource
            self.compartments.setdefault(local, [])
            for ident in resource.get("identifier", []):
                if "value" in ident:
                    self.identifiers[(ident.get("system", ""), ident["value"])] = local
            return
        for key in PATIENT_LINKS:
            link = resource.get(key)
            ref = link.get("reference") if isinstance(link, dict) else None
            if isinstance(ref, str):
                local = ref.rsplit("/", 1)[-1].removeprefix("urn:uuid:")
                self.compartments.setdefault(local, []).append(resource)
                return
        if resource.get("resourceType") in SHARED_TYPES and "id" in resource:
            self._add_shared(resource)

    def _add_shared(self, resource: Json) -> None:
        rtype, local = resource["resourceType"], str(resource["id"])
        self.shared[(rtype, local)] = resource
        for ident in resource.get("identifier", []):
            if "value" in ident:
                self.shared_ids[(rtype, ident.get("system", ""), ident["value"])] = local

    def shared_resource(self, rtype: str, local: str) -> Json | None:
        """A Practitioner, Organization, ... (outside every compartment) by id."""
        return self.shared.get((rtype, local))

    def shared_by_identifier(self, rtype: str, system: str | None, value: str) -> Json | None:
        """A shared resource by identifier (``system`` None: any system)."""
        if system is not None:
            local = self.shared_ids.get((rtype, system, value))
            return None if local is None else self.shared[(rtype, local)]
        hits = (loc for (t, _, v), loc in self.shared_ids.items() if (t, v) == (rtype, value))
        local = next(hits, None)
        return None if local is None else self.shared[(rtype, local)]

    def patient_ids(self) -> list[str]:
        return list(self.patients)

    def find(self, system: str | None, value: str) -> str | None:
        if system:
            return self.identifiers.get((system, value))
        for (_, v), local in self.identifiers.items():
            if v == value:
                return local
        return value if value in self.patients else None

    def record(self, local: str) -> list[Json] | None:
        if local not in self.patients:
            return None
        return [self.patients[local], *self.compartments.get(local, [])]


def _read(files: list[Path]) -> list[Json]:
    out: list[Json] = []
    for f in files:
        data = f.read_bytes()
        if f.suffix == ".ndjson":
            out.extend(orjson.loads(line) for line in data.splitlines() if line.strip())
            continue
        doc = orjson.loads(data)
        if doc.get("resourceType") == "Bundle":
            out.extend(e["resource"] for e in doc.get("entry", []) if "resource" in e)
        else:
            out.append(doc)
    return [_normalise_refs(r) for r in out]


def _normalise_refs(resource: Json) -> Json:
    """Synthea-style ``urn:uuid:X`` patient references become ``Patient/X``."""
    for key in PATIENT_LINKS:
        link = resource.get(key)
        if isinstance(link, dict):
            ref = link.get("reference")
            if isinstance(ref, str) and ref.startswith("urn:uuid:"):
                link["reference"] = "Patient/" + ref.removeprefix("urn:uuid:")
    return resource
