"""Instructions a GP record costs the index build, counted by callgrind, whatever the load.

    PYTHONPATH=src .venv/bin/python benchmarks/build_instructions.py [--people 600]

The GP simulator's Patients (its practice list, as it sends them) are parsed, then two
stretches are counted: ``stu3.to_r4`` of each (what reading the GP listing does per
record) and, for each as a person of one record, what writing does per person
(``build._person``, ``index.fields_row``, ``index.person_rows``). Prints instructions a
record of each. Compare two trees by running it with each one's ``src`` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from callgrind import control, counted


def child(people: int) -> None:
    import orjson

    from carelink.federation import build
    from carelink.federation.index import fields_row, person_rows
    from carelink.federation.linkage import Group, valid_nhs
    from carelink.simulators.fhir_store import PopulationStore
    from carelink.simulators.stu3_render import down, sent_as_is
    from carelink.sources.fhir_rest import person_from_patient
    from carelink.sources.stu3 import to_r4

    store = PopulationStore("gp", 42, people)
    patients = [
        r if sent_as_is(r) else down(r)
        for local in store.patient_ids()
        for r in store.record(local) or []
        if r["resourceType"] == "Patient"
    ]
    sent = orjson.dumps(patients)
    to_r4(orjson.loads(sent)[0], owned=True)  # tables loaded before counting
    parsed = orjson.loads(sent)
    control("-i", "on")
    converted = [to_r4(p, owned=True).resource for p in parsed]
    control("-i", "off")
    control("-d")
    records = [person_from_patient("gp", str(p["id"]), p) for p in converted]
    rows = [build._staged(p, valid_nhs(p), 1) for p in records]
    key, conflicts = b"k" * 32, Counter[str]()
    control("-i", "on")
    for r in rows:
        member = build._person(r)
        fields_row(member, r[2])
        methods = {(r[0], r[1]): (r[4], r[5])}
        person_rows(key, Group((member,), r[2]), methods, "2026-01-01T00:00:00Z", conflicts)
    control("-i", "off")
    print(len(rows), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=600)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.people)
        return
    converting, writing = counted(
        Path(__file__), ["--child", "--people", str(args.people)], env=dict(os.environ), dumps=1
    )
    print(
        f"{args.people} GP records: to_r4 {converting / args.people:,.0f} instructions a record; "
        f"_person + fields_row + person_rows {writing / args.people:,.0f} a person"
    )


if __name__ == "__main__":
    main()
