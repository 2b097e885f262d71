#!/usr/bin/env python3
"""Derive carelink's FHIR R4 element-type table from the official R4 JSON schema.

    python scripts/gen_fhir_types.py tests/data/fhir/fhir.r4.schema.json \
        src/carelink/fhir/r4_types.json

Output: {"Type": {"element": "ElementType", ...}, ...}: for every resource,
data type and backbone element (``Patient_Contact``), the FHIR type of each
element. Choice elements (``effectiveDateTime``) are inlined by the schema
without a ``$ref``; their type is read from the primitive whose pattern they
carry, or from the name's suffix. The de-identification engine walks
resources with this table (``nodesByType``); the shipped package never reads
the schema itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(schema_path: str, out_path: str) -> None:
    defs = json.loads(Path(schema_path).read_text())["definitions"]
    primitives = {
        name: d["pattern"]
        for name, d in defs.items()
        if name[:1].islower() and isinstance(d, dict) and "pattern" in d
    }
    by_pattern: dict[str, str] = {}
    for name, pattern in primitives.items():
        by_pattern.setdefault(pattern, name)
    table: dict[str, dict[str, str]] = {}
    for name, d in sorted(defs.items()):
        props = d.get("properties") if isinstance(d, dict) else None
        if not props:
            continue
        out = {}
        for prop, spec in props.items():
            if prop.startswith("_") or prop == "resourceType":
                continue
            target = spec.get("items", spec)
            ref = target.get("$ref")
            if ref:
                out[prop] = ref.rsplit("/", 1)[-1]
            elif "pattern" in target and target["pattern"] in by_pattern:
                out[prop] = by_pattern[target["pattern"]]
            elif target.get("type") == "boolean":
                out[prop] = "boolean"
            elif target.get("type") == "number":
                out[prop] = "decimal"
            else:
                out[prop] = "string"
        table[name] = out
    Path(out_path).write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{len(table)} types written to {out_path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
