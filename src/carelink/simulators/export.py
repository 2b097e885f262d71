"""Stream a generated population to disk (``carelink population generate``).

Writes, under ``out``:

- ``people.ndjson``: one person a line (demographics and which sources know them)
- ``acute/`` and ``gp/``: FHIR R4 NDJSON, one resource a line, ready for
  ``carelink simulate acute --data out/acute``
- ``community.ndjson`` and ``social-care.ndjson``: each person's facts as the
  source-neutral records the native simulators render

Memory stays flat: one person is generated, written and dropped at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import IO, Any

import orjson

from carelink.simulators import fhir_render
from carelink.simulators.clinical import facts
from carelink.simulators.population import check_size, local_id, people


def _default(value: Any) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    raise TypeError


def generate(size: int, seed: int, out: Path) -> str:
    """Write the population; return a one-line summary. Nothing is written for a bad size."""
    check_size(size)
    out.mkdir(parents=True, exist_ok=True)
    (out / "acute").mkdir(exist_ok=True)
    (out / "gp").mkdir(exist_ok=True)
    counts = {"people": 0, "resources": 0, "facts": 0}
    files: dict[str, IO[bytes]] = {}
    try:
        files["people"] = (out / "people.ndjson").open("wb")
        files["acute"] = (out / "acute" / "records.ndjson").open("wb")
        files["gp"] = (out / "gp" / "records.ndjson").open("wb")
        files["community"] = (out / "community.ndjson").open("wb")
        files["social-care"] = (out / "social-care.ndjson").open("wb")
        for person in people(seed, size):
            files["people"].write(
                orjson.dumps(dataclasses.asdict(person), default=_default) + b"\n"
            )
            counts["people"] += 1
            for source in sorted(person.sources):
                lid = local_id(source, person.index)
                fs = tuple(facts(seed, person, source))
                if source in ("acute", "gp"):
                    for r in fhir_render.record(person, source, lid, fs):
                        files[source].write(orjson.dumps(r) + b"\n")
                        counts["resources"] += 1
                else:
                    line = {
                        "localId": lid,
                        "person": person.index,
                        "facts": [dataclasses.asdict(f) for f in fs],
                    }
                    files[source].write(orjson.dumps(line, default=_default) + b"\n")
                    counts["facts"] += len(fs)
    finally:
        for f in files.values():
            f.close()
    return (
        f"{counts['people']:,} people, {counts['resources']:,} FHIR resources, "
        f"{counts['facts']:,} native facts"
    )
