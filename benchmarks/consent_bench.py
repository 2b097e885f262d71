"""The consent decision's cost on the lookup path, measured in-process.

What a lookup pays for consent, per patient found: one indexed read of the
patient's active Consents (SQLite file, the hot connection), parsing them
(cached by content), and the decision on the merged Patient. Also the cost
per resource when filtering a ``$everything`` answer. Cases: no consent (the
common case), one objection, and three consents with nested provisions.

    .venv/bin/python benchmarks/consent_bench.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from carelink.consent import Actor, Engine, Guard, load_policy
from carelink.storage import ConsentRow, ConsentStore, Database

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("gp", "acute", "community", "social-care")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def consent(cid: str, pid: str, provision: dict[str, Any]) -> ConsentRow:
    body = {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "patient": {"reference": f"Patient/{pid}"},
        "provision": provision,
    }
    return ConsentRow(cid, pid, "active", 1, "2026-11-23T00:00:00Z", orjson.dumps(body))


def patient(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"source": "urn:carelink:gateway"},
        "identifier": [
            {"system": f"https://carelink.example/Id/{s}", "value": f"{s}-1"} for s in SOURCES
        ],
        "generalPractitioner": [{"identifier": {"system": ODS, "value": "B00001"}}],
    }


def record(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        meta: dict[str, Any] = {"source": f"urn:carelink:source:{SOURCES[i % 4]}"}
        if i % 10 == 0:
            meta["security"] = [{"system": ACT, "code": "PSY"}]
        out.append(
            {
                "resourceType": "Observation",
                "id": str(i),
                "meta": meta,
                "effectiveDateTime": "2024-01-01",
            }
        )
    return out


def timed(fn: Any, rounds: int) -> float:
    """Median microseconds per call over 5 batches."""
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        batches.append((time.perf_counter() - t) / rounds * 1e6)
    return statistics.median(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(str(Path(tmp) / "bench.db"))
        db.migrate()
        store = ConsentStore(db)
        store.put(consent("o1", "objector", {"type": "deny"}), None)
        nested = {
            "type": "permit",
            "provision": [
                {
                    "type": "deny",
                    "securityLabel": [{"system": ACT, "code": "PSY"}],
                    "provision": [
                        {
                            "type": "permit",
                            "actor": [
                                {
                                    "role": {"coding": [{"code": "IRCP"}]},
                                    "reference": {"identifier": {"system": ODS, "value": "RXX01"}},
                                }
                            ],
                        }
                    ],
                }
            ],
        }
        for i in range(3):
            store.put(consent(f"n{i}", "nested", nested), None)
        guard = Guard(
            Engine(load_policy(ROOT / "consent" / "policy.json")),
            store,
            {f"urn:carelink:source:{s}": s for s in SOURCES},
            {f"https://carelink.example/Id/{s}": s for s in SOURCES},
        )
        actor = Actor("dr", "R8000", "RXX01", "TREAT")
        rows = []
        resources = record(40)
        for case in ("nobody", "objector", "nested"):
            me = patient(case)

            def lookup(case: str = case, me: dict[str, Any] = me) -> None:
                guard.filter(guard.situation(actor, case, me), [me])

            s = guard.situation(actor, case, me)
            per_lookup = timed(lookup, args.rounds)
            per_record = timed(lambda s=s: guard.filter(s, resources), max(1, args.rounds // 20))
            rows.append((case, per_lookup, per_record / len(resources)))
        store.close()
        db.dispose()
    print(f"{'patient':<10} {'lookup µs':>10} {'per resource µs':>16}")
    for case, lookup_us, per_res in rows:
        print(f"{case:<10} {lookup_us:>10.1f} {per_res:>16.2f}")


if __name__ == "__main__":
    main()
