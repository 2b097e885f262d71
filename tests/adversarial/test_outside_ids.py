"""Record ids as real feeds send them, on people we did not make.

Invariant: whatever ids the sources give outside Patients (Synthea, UK Core) -- FHIR
ids at their 64-character limit, HL7 CX values with spaces, slashes, bars, commas and
non-ASCII, the longest key the index holds and longer -- a build on SQLite and on
PostgreSQL completes; it indexes exactly the records whose key the index holds, each
found again by its id through the identifier search (escaped as FHIR R4 escapes); it
counts the others per source and stores none of them cut short; and the same records
arriving as changes give the people a rebuild gives.

Before the fix, one record with a 129-character id stopped the whole PostgreSQL build
(``StringDataRightTruncation`` in the staging table); SQLite kept it.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.federation.build import build_index
from carelink.federation.changes import Remove, Upsert, apply_changes
from carelink.federation.patient_search import patient_query
from carelink.sources.base import SourcePerson, local_id_system
from carelink.sources.fhir_rest import person_from_patient
from carelink.storage import LOCAL_ID_LENGTH, Database, IndexStore
from tests.federation.test_build import ListSource, _store
from tests.federation.test_changes import snapshot
from tests.federation.test_index import KEY
from tests.federation.test_update_is_rebuild import ROOMY
from tests.support.shared import SYNTHEA, UKCORE_EXAMPLES

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SOURCES = ("acute", "social-care")


def _outside() -> list[dict[str, Any]]:
    synthea = SYNTHEA / "Patient.000.ndjson"
    people = [json.loads(line) for line in synthea.read_text().splitlines() if line.strip()]
    for path in sorted(UKCORE_EXAMPLES.glob("UKCore-Patient-*.json")):
        people.append(json.loads(path.read_text()))
    return people


PATIENTS = _outside() if SYNTHEA.exists() and UKCORE_EXAMPLES.exists() else []

#: ids as sources send them: FHIR ids (up to 64 of [A-Za-z0-9.-]) and HL7 v2 CX values
IDS = st.one_of(
    st.text(st.sampled_from("abcXYZ019.-"), min_size=1, max_size=64),
    st.text(st.sampled_from("ab1 /|,\\$é-"), min_size=1, max_size=12),
    st.sampled_from(
        [
            "x" * LOCAL_ID_LENGTH,
            "y" * (LOCAL_ID_LENGTH + 1),
            "z" * 300,
            "Patient/9",
            "a|b",
            "a,b",
            "MRN 0042",
            "ünïcødé",
            "nul\x00inside",
        ]
    ),
)


def _escaped(text: str) -> str:
    return "".join("\\" + c if c in "\\,$|" else c for c in text)


def _records(placed: list[tuple[int, str, str]]) -> dict[tuple[str, str], SourcePerson]:
    """(patient index, source, id) -> each outside Patient as that source's record."""
    out = {}
    for n, source, local in placed:
        patient = copy.deepcopy(PATIENTS[n % len(PATIENTS)])
        patient["id"] = local
        out[(source, local)] = person_from_patient(source, local, patient)
    return out


def _open(url: str) -> IndexStore:
    """The index in ``url``: made with the tests' key on the first example, then reused
    (each example builds the whole index afresh)."""
    db = Database(url)
    with db.engine.connect() as conn:
        made = sa.inspect(conn).has_table("index_settings")
    db.dispose()
    if not made:
        return _store(url)
    store = IndexStore(Database(url))
    assert store.secret() == KEY
    return store


def _build(store: IndexStore, records: dict[tuple[str, str], SourcePerson]):
    by = {s: [r for (src, _), r in sorted(records.items()) if src == s] for s in SOURCES}
    sources = [ListSource(name, rs) for name, rs in by.items()]
    return asyncio.run(build_index(sources, store, now=lambda: NOW))


placements = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(SOURCES), IDS),
    min_size=1,
    max_size=12,
    unique_by=lambda t: (t[1], t[2]),
)


@pytest.mark.slow
@pytest.mark.skipif(not PATIENTS, reason="the outside samples are not present")
@settings(max_examples=25, **ROOMY)
@given(placed=placements, later=placements)
def test_every_key_is_held_whole_or_left_out_and_counted(database_url, placed, later):
    store = _open(database_url)
    try:
        records = _records(placed)
        report = _build(store, records)
        held = {k for k, r in records.items() if r.keyable}
        counted: dict[str, int] = {}
        for (source, _), r in records.items():
            if not r.keyable:
                counted[source] = counted.get(source, 0) + 1
        assert report.unkeyable == counted
        assert set(store.owners(sorted(held))) == held
        for source, local in held:  # found again by its id, as a client asks for it
            query = patient_query(
                {"identifier": [f"{local_id_system(source)}|{_escaped(local)}"]}, SOURCES, NOW
            )
            found = store.find(query)
            owner = store.owners([(source, local)])[(source, local)]
            assert [p.id for p in found] == [owner], (source, local)

        # the later placements arrive as changes (and the first ones' records go): the
        # people a rebuild from what the sources then hold gives
        after = _records(later)
        changes = [Remove(*k) for k in records if k not in after]
        changes += [Upsert(r) for r in after.values()]
        applied = apply_changes(store, changes, now=lambda: NOW)
        assert applied.unkeyable == {
            s: n
            for s in SOURCES
            if (n := sum(1 for (src, _), r in after.items() if src == s and not r.keyable))
        }
        live = snapshot(store)
        _build(store, after)
        assert live == snapshot(store)
    finally:
        store.close()
        store.db.dispose()
