"""The streaming build: the same index as linking in memory, swapped in whole."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from carelink.errors import SourceBadPayload
from carelink.federation.build import build_index
from carelink.federation.index import link_people
from carelink.federation.patient_search import birth_date_clauses
from carelink.fhir.search import fold, parse_date
from carelink.sources.base import SourceAnswer, SourcePerson
from carelink.storage import Database, IndexStore, LinkRow, NameTest, PersonQuery, PersonRow
from carelink.storage.index_build import staging_file
from carelink.storage.tables import links, persons, review
from tests.federation.test_index import KEY, MESSY, _sources

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class ListSource:
    """A source that lists the records it is given."""

    def __init__(self, name: str, records: Sequence[SourcePerson]) -> None:
        self.name = name
        self.records = records

    async def fetch_record(self, *args: object, **kwargs: object) -> SourceAnswer:
        raise NotImplementedError

    async def people(self) -> AsyncIterator[SourcePerson]:
        for r in self.records:
            yield r


def _store(url: str) -> IndexStore:
    db = Database(url)
    db.migrate()
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO index_settings (key, value) VALUES ('person-id-key', :v)"),
            {"v": KEY.hex()},
        )
    return IndexStore(db)


def _stored(store: IndexStore) -> tuple[list[PersonRow], list[LinkRow], list[tuple]]:
    with store.db.engine.connect() as conn:
        people = [PersonRow(*r) for r in conn.execute(sa.select(persons).order_by(persons.c.id))]
        people = [PersonRow(**{**vars(p), "patient": bytes(p.patient)}) for p in people]
        link_rows = [
            LinkRow(*r[:6], bytes(r[6]))
            for r in conn.execute(sa.select(links).order_by(links.c.source, links.c.local_id))
        ]
        reviews = [tuple(r) for r in conn.execute(sa.select(review))]
    return people, link_rows, reviews


def _build(
    store: IndexStore,
    by_source: dict[str, list[SourcePerson]],
    writers: int = 1,
    batch: int = 5000,
    processes_from: int = 0,
):
    """``build_index`` of these sources; with ``writers`` > 1 in writer processes
    whatever the size (``processes_from`` 0), unless told otherwise."""
    sources = [ListSource(name, records) for name, records in by_source.items()]
    now = lambda: datetime(2026, 1, 1, tzinfo=UTC)  # noqa: E731
    return asyncio.run(
        build_index(
            sources, store, now=now, writers=writers, batch=batch, processes_from=processes_from
        )
    )


@pytest.mark.parametrize(
    "population", [MESSY, _sources(3000)[0]], ids=["messy", "social-care-variants"]
)
@pytest.mark.parametrize(
    ("writers", "batch", "processes_from"),
    [(1, 5000, 0), (2, 5000, 0), (2, 5000, 10**9), (1, 7, 0)],
    ids=["one", "two-processes", "two-parts-here", "small-batches"],
)
def test_the_streaming_build_stores_the_index_linking_in_memory_makes(
    population, writers, batch, processes_from, database_url
):
    """In one process or several, in large batches or small ones (groups cut by a batch),
    and two writers' parts made in this process one after the other (a build too small
    for writer processes, ``build.PROCESSES_FROM``)."""
    store = _store(database_url)
    report = _build(store, population, writers, batch, processes_from)
    want_persons, want_links, want_reviews, want_report = link_people(population, KEY)
    people, link_rows, reviews = _stored(store)
    assert people == sorted(want_persons, key=lambda p: p.id)
    assert link_rows == sorted(want_links, key=lambda lk: (lk.source, lk.local_id))
    assert sorted(reviews, key=repr) == sorted(
        (tuple(vars(r).values()) for r in want_reviews), key=repr
    )
    assert set(report.seconds) == {"reading", "linking", "writing", "retiring", "swap", "clearing"}
    peak = report.writer_peak_mb
    assert vars(report) == {**vars(want_report), "seconds": report.seconds, "writer_peak_mb": peak}
    # the writer processes' own peak (an interpreter and its imports: tens of MB), not
    # the building process's, which a forked child's ``ru_maxrss`` would have counted
    assert peak is None if writers == 1 or processes_from else 20 < peak < 1024, peak
    store.close()


def test_a_rebuild_replaces_the_whole_index_and_lookups_see_the_new_one(database_url):
    store = _store(database_url)
    by, people = _sources(600, seed=3)
    _build(store, by)
    first = people[0]
    assert store.person_by_nhs(first.nhs_number) is not None
    smaller = {s: [r for r in rs if r.local_id != by["gp"][0].local_id] for s, rs in by.items()}
    report = _build(store, smaller)
    assert store.person_by_nhs(first.nhs_number) is None
    assert store.counts()["persons"] == report.persons
    with store.db.engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    assert "index_staging" not in names
    assert not {n for n in names if n.endswith("_build")}
    assert not {n for n in names if "_gone_" in n}  # a SQLite swap's old tables, cleared
    if store.db.is_sqlite:  # staged in a scratch file beside the database, gone after
        assert staging_file(store.db).endswith(".staging")
        assert not os.path.exists(staging_file(store.db))
    store.close()


def test_a_build_indexes_names_and_dates_together_only(database_url):
    """The build makes the name-and-date indexes and neither column's alone (migration
    13), and a demographic search reads persons through one of the two."""
    store = _store(database_url)
    by, people = _sources(300, seed=5)
    _build(store, by)
    with store.db.engine.connect() as conn:
        indexed = {tuple(i["column_names"]) for i in sa.inspect(conn).get_indexes("persons")}
    assert ("family_folded",) not in indexed
    assert ("birth_date",) not in indexed
    assert {("birth_date", "family_folded"), ("family_folded", "birth_date", "given_folded")} <= (
        indexed
    )
    someone = people[0]
    born = parse_date(someone.birth_date.isoformat(), "birthdate")
    query = PersonQuery(
        family=((NameTest(fold(someone.family)),),),
        birth_date=(birth_date_clauses(born, NOW),),
    )
    assert store.find(query)
    if store.db.is_sqlite:  # PostgreSQL scans a table this small (held at 20,000 elsewhere)
        plan = store.plan(query)
        assert plan
        assert all(step.startswith("index:ix_persons_") for step in plan), plan
    store.close()


def test_candidates_per_record_without_a_number_stay_flat_as_the_population_grows():
    small = link_people(_sources(1000, seed=5)[0], KEY)[3]
    large = link_people(_sources(8000, seed=5)[0], KEY)[3]
    assert large.candidates_mean <= small.candidates_mean * 1.5 + 0.5
    assert large.candidates_max <= 20


@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed"])
def test_a_build_leaves_the_garbage_collector_as_it_found_it(fails, tmp_path):
    """The build quietens the collector while it runs (``few_collections``), not after."""
    store = _store(f"sqlite:///{tmp_path / 'index.db'}")
    by = _sources(200, seed=4)[0]
    sources = [ListSource(name, [] if fails else rs) for name, rs in by.items()]
    before = gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()
    run = build_index(sources, store, refuse_empty=True)
    if fails:
        with pytest.raises(SourceBadPayload):
            asyncio.run(run)
    else:
        assert asyncio.run(run).persons > 0
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before
    store.close()
