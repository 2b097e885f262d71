"""``family:exact`` and the index's demographics under attack with names we did not make.

Invariants:

1. ``family:exact=v`` finds exactly the people whose name as the index holds it (the
   first name's ``family`` of the source's Patient) is ``v``, character for character
   (FHIR R4's ``:exact``: the whole string, case and accents included), on SQLite and on
   PostgreSQL alike: the folded name it is also sought by (``NameTest.folded``) never
   loses a match nor adds one. A value holding a comma is sought as the standard
   escapes it (``\\,``).
2. A source's demographics that the index cannot hold (a name folding longer than its
   column, a birth date that is not a date, an over-long postcode or gender) cost that
   field of that record, never the build: every person is indexed and found by their
   identifier, and their Patient is served as the source sent it.

The names are those of the vendored Synthea export and the UK Core examples (mixed case,
apostrophes, Synthea's digits), with accents, hyphens, case and edge Unicode worked in.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.index import person_rows
from carelink.federation.linkage import Group
from carelink.federation.patient_search import patient_query
from carelink.sources.base import indexed
from carelink.storage import Database, IndexStore
from tests.support.changing_fhir import ChangingFhir, built_env
from tests.support.procs import carelink
from tests.support.servers import run_app
from tests.support.shared import SYNTHEA, UKCORE_EXAMPLES

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BORN = "1950-03-04"
LOCAL_SYSTEM = "https://carelink.example/Id/acute"


def _names_in(folder: Path) -> set[str]:
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("family"), str):
                found.add(x["family"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for f in sorted(folder.glob("*.json")):
        walk(json.loads(f.read_text()))
    for f in sorted(folder.glob("*.ndjson")):
        for line in f.read_text().splitlines():
            if line.strip():
                walk(json.loads(line))
    return found


#: the outside data's family names (a fixed list if a folder is missing)
OUTSIDE = sorted(
    (_names_in(SYNTHEA) if SYNTHEA.exists() else set())
    | (_names_in(UKCORE_EXAMPLES) if UKCORE_EXAMPLES.exists() else set())
) or ["O'Keefe54", "SMITH", "Rastall"]

#: edge Unicode: composed and decomposed accents, letters whose case fold or
#: compatibility form is longer (ß, ﬀ, İ, ǅ, ﷺ), a dotless i, a combining mark alone
EDGE = [
    "Ó Briain",
    "O\u0301 Briain",
    "Müller",
    "Mu\u0308ller",
    "Strauß",
    "STRAUSS",
    "Ǆurić",
    "ǅurić",
    "İnce",
    "ınce",
    "Ceﬀ",
    "\u0301",
    "ﷺ" * 12,  # 12 characters that fold to 216
    "ß" * 101,  # 101 that fold to 202
    "Smith,Jones",  # a comma in a stored name: sought as ``Smith\\,Jones``
    "x" * 201,
]


def _worked(name: str, how: int) -> str:
    """An outside name made harder: case, an accent, a hyphen or an apostrophe."""
    return [
        name,
        name.upper(),
        name.lower(),
        name[:1] + "\u0301" + name[1:],
        unicodedata.normalize("NFC", name[:1] + "\u0301" + name[1:]),
        f"{name}-Ó'Dwyer",
        f"D'{name}",
    ][how % 7]


names = st.one_of(
    st.builds(_worked, st.sampled_from(OUTSIDE), st.integers(0, 6)),
    st.sampled_from(EDGE),
)


def _escaped(value: str) -> str:
    """A string search value as FHIR R4 escapes it (``\\`` first, then ``,`` ``$`` ``|``)."""
    for ch in ("\\", ",", "$", "|"):
        value = value.replace(ch, "\\" + ch)
    return value


def _rows(people: list[str]) -> tuple[list[Any], list[Any], dict[str, str]]:
    """Index rows as a build makes them, one person a Patient; and id -> family sent."""
    rows, links, sent = [], [], {}
    for i, family in enumerate(people):
        patient = {
            "resourceType": "Patient",
            "id": f"P{i}",
            "name": [{"family": family, "given": ["Jo"]}],
            "birthDate": BORN,
        }
        member = indexed("acute", f"P{i}", patient)
        group = Group((member,), None)
        row, person_links = person_rows(
            f"k{i}".encode(), group, {("acute", f"P{i}"): ("new", None)}, NOW.isoformat(), Counter()
        )
        rows.append(row)
        links += person_links
        sent[row.id] = family
    return rows, links, sent


def _holds(name: str) -> bool:
    """Whether the index holds a name (the standard's fold, computed here: NFKD, marks
    dropped, case folded, within the 200 characters of the name columns)."""
    decomposed = unicodedata.normalize("NFKD", name)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return len(name) <= 200 and len(folded) <= 200


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(people=st.lists(names, min_size=1, max_size=12), asked=st.lists(names, max_size=3))
def test_family_exact_finds_what_the_exact_rule_finds(database_url, people, asked):
    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    try:
        rows, links, sent = _rows(people)
        store.replace_all(rows, links, [])
        for value in [*people[:2], *asked]:
            query = patient_query(
                {"family:exact": [_escaped(value)], "birthdate": [BORN]}, ["acute"], NOW
            )
            found = sorted(r.id for r in store.find(query, limit=100))
            expected = sorted(pid for pid, f in sent.items() if f == value and _holds(f))
            assert found == expected, value
            assert store.count(query) == len(expected)
    finally:
        store.close()
        db.dispose()


# -- a build of outside people, some with demographics the index cannot hold -------------

#: what a source may send that no index column holds: each goes on a person of its own
UNHOLDABLE: list[dict[str, Any]] = [
    {"name": [{"family": "ﷺ" * 12, "given": ["Jo"]}]},
    {"name": [{"family": "Smith", "given": ["Anna " * 45]}]},
    {"birthDate": "1950-01-01T00:00:00Z"},
    {"address": [{"postalCode": "LS11 6AD EXTRA"}]},
    {"gender": "not-a-gender-at-all"},
    {"name": [{"family": "Nul\u0000Name", "given": ["Jo"]}]},
]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present")
def test_demographics_the_index_cannot_hold_cost_the_field_never_the_build(postgres_url):
    """On PostgreSQL, which refuses a value longer than its column (SQLite keeps it)."""
    database_url = postgres_url
    source = ChangingFhir(SYNTHEA, len(UNHOLDABLE) + 1)
    locals_ = list(source.records)
    sent = {}
    for local, odd in zip(locals_, UNHOLDABLE, strict=False):
        source.records[local][0].update(odd)
        sent[local] = source.records[local][0]
    plain = locals_[-1]
    with run_app(source.app) as url:
        built = carelink(["index", "build"], built_env(database_url, f"acute={url}"))
        assert built.returncode == 0, built.stderr[-2000:]
        assert f"index built: {len(locals_)} persons" in built.stdout
        # each left out is counted, by field, with no patient data
        left = "{'birth_date': 1, 'family': 2, 'gender': 1, 'given': 1, 'postcode': 1}"
        assert f"(records per field; their Patients are served as sent): {left}" in built.stdout
    db = Database(database_url)
    store = IndexStore(db)
    try:
        for local in locals_:
            query = patient_query({"identifier": [f"{LOCAL_SYSTEM}|{local}"]}, ["acute"], NOW)
            (person,) = store.find(query)
            patient = json.loads(person.patient)
            if local in sent:  # served as the source sent it
                for key, value in UNHOLDABLE[locals_.index(local)].items():
                    assert patient[key] == value, key
        family = source.records[plain][0]["name"][0]["family"]
        born = source.records[plain][0]["birthDate"]
        query = patient_query(
            {"family:exact": [_escaped(family)], "birthdate": [born]}, ["acute"], NOW
        )
        assert len(store.find(query)) == 1
    finally:
        store.close()
        db.dispose()
