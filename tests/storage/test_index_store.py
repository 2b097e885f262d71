"""The patient index store on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import orjson

from carelink.federation.index import link_people
from carelink.fhir.search import fold
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson
from carelink.storage import Database, DateTest, IndexStore, NameTest, PersonQuery
from carelink.storage.database import MIGRATIONS
from tests.support.people import as_listed_by


def _gp(people: list[pop.Person]) -> dict[str, list[SourcePerson]]:
    return {"gp": as_listed_by("gp", people)}


def test_migrations_are_idempotent(database_url):
    db = Database(database_url)
    assert db.migrate() == db.migrate() == len(MIGRATIONS)
    db.dispose()


def test_index_round_trips_and_answers_lookups(database_url):
    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(2, 150))
    persons, links, reviews, _ = link_people(_gp(people), store.secret())
    store.replace_all(persons, links, reviews)
    target = people[17]
    row = store.person_by_nhs(target.nhs_number)
    assert row is not None
    assert orjson.loads(row.patient)["name"][0]["family"] == target.family
    assert row.birth_date == target.birth_date.isoformat()
    found = store.person_and_links(row.id)
    assert found is not None
    assert [lk.local_id for lk in found[1]] == [pop.local_id("gp", target.index)]
    born = target.birth_date.isoformat()
    query = PersonQuery(
        family=((NameTest(fold(target.family)),),),
        birth_date=(((DateTest("starts<=", born), DateTest("ends>=", born)),),),
    )
    assert row.id in [h.id for h in store.find(query)]
    assert store.counts()["persons"] == 150
    db.dispose()


def test_the_person_id_key_is_kept_across_processes(database_url):
    first = Database(database_url)
    first.migrate()
    key = IndexStore(first).secret()
    first.dispose()
    second = Database(database_url)
    assert IndexStore(second).secret() == key
    second.dispose()


def test_rebuild_replaces_the_whole_index_atomically(database_url):
    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    key = store.secret()
    a = link_people(_gp(list(pop.people(2, 50))), key)
    store.replace_all(*a[:3])
    b = link_people(_gp(list(pop.people(3, 20))), key)
    store.replace_all(*b[:3])
    assert store.counts()["persons"] == 20
    new = {p.nhs_number for p in pop.people(3, 20)}
    gone = [p.nhs_number for p in pop.people(2, 50) if p.nhs_number not in new]
    assert gone
    assert all(store.person_by_nhs(n) is None for n in gone)
    db.dispose()


def test_a_scan_of_the_whole_index_reads_it_in_batches_in_id_order(database_url):
    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    persons, links, reviews, _ = link_people(_gp(list(pop.people(4, 23))), store.secret())
    store.replace_all(persons, links, reviews)
    scanned = [p.id for p in store.each_person(batch=7)]
    assert scanned == [p.id for p in store.each_person(batch=1000)]
    assert len(scanned) == 23
    db.dispose()


def test_the_fixed_search_by_name_and_birth_day_finds_what_the_general_one_finds(database_url):
    """``family`` / ``given`` prefixes with ``birthdate=eq<day>`` take fixed SQL; the
    answer is the general WHERE clause's, partial stored dates included."""
    import datetime as dt

    import sqlalchemy as sa

    from carelink.storage.person_query import where
    from carelink.storage.tables import persons

    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(4, 400))
    rows, links, reviews, _ = link_people(_gp(people), store.secret())
    partial = [
        type(r)(**{**vars(r), "birth_date": r.birth_date[:n]})
        for r, n in zip(rows[:40], [4, 7] * 20, strict=True)
    ]
    store.replace_all(partial + rows[40:], links, reviews)
    day = dt.timedelta(days=1)
    for r in rows[:80]:
        d = dt.date.fromisoformat(r.birth_date)
        born = ((DateTest("starts<=", str(d - day), True), DateTest("ends>=", str(d + day), True)),)
        for family, given in (
            (r.family_folded[:2], None),
            (None, r.given_folded[:1]),
            (r.family_folded, r.given_folded),
        ):
            q = PersonQuery(
                family=((NameTest(family),),) if family else (),
                given=((NameTest(given),),) if given else (),
                birth_date=(born,),
            )
            with db.engine.connect() as conn:
                want = [
                    x[0]
                    for x in conn.execute(
                        sa.select(persons.c.id).where(where(q)).order_by(persons.c.id)
                    )
                ]
            assert [p.id for p in store.find(q)] == want
    store.close()
