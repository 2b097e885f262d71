"""Convert the UK Core profile StructureDefinitions carelink uses from XML to JSON.

Run once when the UK Core version changes::

    python scripts/ukcore_profiles.py /path/to/ukcore-profiles-xml profiles/

The XML is the published UK Core package (NHS England / HL7 UK, Apache-2.0);
the JSON written is the same StructureDefinition, element for element. Only
the profiles named in ``KEEP`` are converted: the ones for the resource types
the gateway emits.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

NS = "{http://hl7.org/fhir}"
KEEP = (
    "AllergyIntolerance",
    "CarePlan",
    "Condition",
    "Device",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "Flag",
    "Immunization",
    "Location",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "OperationOutcome",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "RelatedPerson",
    "ServiceRequest",
)
#: StructureDefinition elements that repeat (0..*): JSON arrays even with one item
#: (and ``element.type``; ``StructureDefinition.type`` is a single code)
ARRAYS = frozenset(
    (
        "contact",
        "telecom",
        "element",
        "profile",
        "targetProfile",
        "discriminator",
        "mapping",
        "constraint",
    )
)
INTEGERS = frozenset(("min", "rank"))
BOOLEANS = frozenset(("abstract", "mustSupport", "isModifier", "ordered", "isSummary"))


def _node(el: ET.Element) -> Any:
    children = list(el)
    if not children:
        raw = el.get("value")
        name = el.tag.removeprefix(NS)
        if name in INTEGERS and raw is not None:
            return int(raw)
        if name in BOOLEANS and raw is not None:
            return raw == "true"
        return raw
    out: dict[str, Any] = {}
    for child in children:
        name = child.tag.removeprefix(NS)
        value = _node(child)
        if name in ARRAYS or (name == "type" and el.tag == f"{NS}element"):
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    if el.get("id"):
        out = {"id": el.get("id"), **out}
    return out


def convert(xml: Path) -> dict[str, Any]:
    """One StructureDefinition, XML to the FHIR JSON shape."""
    root = ET.parse(xml).getroot()  # noqa: S314 - the published package, not untrusted input
    return {"resourceType": "StructureDefinition", **_node(root)}


def main(argv: list[str]) -> int:
    src, dest = Path(argv[1]), Path(argv[2])
    for name in KEEP:
        sd = convert(src / f"UKCore-{name}.xml")
        text = json.dumps(sd, indent=1, ensure_ascii=False) + "\n"
        (dest / f"UKCore-{name}.json").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
