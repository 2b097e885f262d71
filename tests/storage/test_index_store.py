"""The patient index store on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import FrozenInstanceError, replace
from typing import Any

import orjson
import psycopg
import pytest
import sqlalchemy as sa

from carelink.federation.index import link_people
from carelink.fhir.search import fold
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson
from carelink.storage import (
    ConsentRow,
    ConsentStore,
    Database,
    DateTest,
    FoundPerson,
    IdentifierTest,
    IndexStore,
    LinkRow,
    NameTest,
    PersonQuery,
    PersonRow,
    tables,
)
from carelink.storage.hot import HotConnection
from carelink.storage.migrations import MIGRATIONS
from tests.support.people import as_listed_by

DAY = dt.timedelta(days=1)


def _gp(people: list[pop.Person]) -> dict[str, list[SourcePerson]]:
    return {"gp": as_listed_by("gp", people)}


def test_migrations_are_idempotent(database_url):
    db = Database(database_url)
    assert db.migrate() == db.migrate() == max(n for n, _, _ in MIGRATIONS)
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
    found = store.person_and_records(row.id)
    assert found is not None
    assert [local for _, local in found[1]] == [pop.local_id("gp", target.index)]
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


def _random_query(rng: random.Random, rows: list[PersonRow], links: list[LinkRow]) -> PersonQuery:
    """A random mix of every criterion, each drawn from the stored people (so most match
    someone), as ``patient_query`` makes them."""
    from carelink.federation.patient_search import birth_date_clauses
    from carelink.fhir.search import parse_date

    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)

    def some(n: int) -> list[PersonRow]:
        return rng.sample(rows, n)

    def names(attr: str, folded: str) -> tuple[tuple[NameTest, ...], ...]:
        return tuple(
            tuple(
                NameTest(getattr(r, attr), True)
                if rng.random() < 0.2
                else NameTest(getattr(r, folded)[: rng.randint(1, 6)])
                for r in some(rng.randint(1, 2))
            )
            for _ in range(rng.randint(0, 1))
        )

    def born() -> tuple[Any, ...]:
        r = some(1)[0]
        stored = r.birth_date if r.birth_date and len(r.birth_date) in (4, 7, 10) else "1950"
        value = rng.choice([stored, "1950", "1950-03", "2001-02-03"])
        value = value[: rng.choice([4, 7, 10, 10, 10])]
        prefix = rng.choice(["", "eq", "eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"])
        return birth_date_clauses(parse_date(prefix + value, "birthdate"), now)

    ids = tuple(tuple(r.id for r in some(2)) for _ in range(rng.random() < 0.1))
    identifiers = tuple(
        (
            IdentifierTest(nhs_number=rng.choice(rows).nhs_number or "0000000000"),
            IdentifierTest(local_id=(lk := rng.choice(links)).local_id, source=lk.source),
            IdentifierTest(local_id=rng.choice(links).local_id),
        )[rng.randint(0, 2) :]
        for _ in range(rng.random() < 0.15)
    )
    return PersonQuery(
        ids=ids,
        identifiers=identifiers,
        family=names("family", "family_folded"),
        given=names("given", "given_folded"),
        birth_date=tuple(born() for _ in range(rng.choice([0, 1, 1, 1, 2]))),
        birth_date_missing=rng.choice([None, None, None, True, False]),
        gender=tuple(
            tuple(rng.sample(["male", "female", "other", "unknown"], rng.randint(0, 2)))
            for _ in range(rng.random() < 0.3)
        ),
        gender_missing=rng.choice([None, None, None, True, False]),
        postcode=tuple(
            tuple(str(r.postcode or "LS").replace(" ", "")[: rng.randint(2, 7)] for r in some(1))
            for _ in range(rng.random() < 0.3)
        ),
    )


def test_the_search_sql_finds_what_the_general_where_clause_finds(database_url):
    """``find`` and ``count`` run SQL text (``where_sql``); on random queries of every
    criterion (OR-lists, exact and prefix names, every date prefix at every precision,
    missing, identifiers) over stored dates of every precision and none, they give the
    rows SQLAlchemy's ``where`` selects, in the same order."""
    import sqlalchemy as sa

    from carelink.storage.person_query import where
    from carelink.storage.tables import persons

    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(4, 400))
    rows, links, reviews, _ = link_people(_gp(people), store.secret())
    cut = [4, 7, None, 10, 9] * 20  # 9: a malformed date matches no date test
    odd = [
        replace(r, birth_date=r.birth_date[:n] if n else None, gender=None if n else r.gender)
        for r, n in zip(rows[:100], cut, strict=True)
    ]
    rows = odd + rows[100:]
    store.replace_all(rows, links, reviews)
    rng = random.Random(5)
    seen = 0
    for r in rows[:60]:  # the shapes a Patient search makes most: names with one birth day
        d = (
            dt.date.fromisoformat(r.birth_date)
            if r.birth_date and len(r.birth_date) == 10
            else None
        )
        if d is None:
            continue
        born = ((DateTest("starts<=", str(d - DAY), True), DateTest("ends>=", str(d + DAY), True)),)
        q = PersonQuery(family=((NameTest(r.family_folded[:2]),),), birth_date=(born,))
        assert r.id in [p.id for p in store.find(q)]
    for _ in range(400):
        q = _random_query(rng, rows, links)
        with db.engine.connect() as conn:
            want = [
                x[0]
                for x in conn.execute(
                    sa.select(persons.c.id).where(where(q)).order_by(persons.c.id)
                )
            ]
        assert [p.id for p in store.find(q, limit=10_000)] == want, q
        assert store.count(q) == len(want)
        seen += bool(want)
    assert seen > 100  # most queries matched someone: the comparison is not of empty lists
    store.close()


def test_searches_from_many_threads_leave_the_pool_to_others(database_url):
    """Thirty-two threads that have each searched (and are still alive) hold no pooled
    connection: another reader still gets one at once. A search that kept a connection
    per thread, as the lookup connection does, exhausted SQLite's pool of 15 here."""
    import threading

    db = Database(database_url, connect_timeout=2.0)
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(4, 23))
    persons, links, reviews, _ = link_people(_gp(people), store.secret())
    store.replace_all(persons, links, reviews)
    person = persons[0]
    query = PersonQuery(family=((NameTest(person.family_folded or ""),),))
    searched = threading.Barrier(33)
    done = threading.Event()
    found: list[int] = []

    def search() -> None:
        found.append(len(store.find(query, limit=50)))
        searched.wait(10)
        done.wait(10)

    threads = [threading.Thread(target=search) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        searched.wait(10)
        assert len(store.people_after("", 5)) == 5  # a pooled read while all 32 live
    finally:
        done.set()
        for t in threads:
            t.join(10)
        store.close()
        db.dispose()
    assert found == [found[0]] * 32
    assert found[0] >= 1


def test_a_postgresql_search_reads_outside_a_transaction_and_gives_the_pool_back_as_it_was(
    postgres_url,
):
    """A search's read is one statement in autocommit mode (no ``BEGIN`` before it, no
    ``ROLLBACK`` after): its transaction began with the statement itself and ended with
    it. The connection goes back to the pool transactional, so a write through the pool
    that fails midway still leaves nothing behind."""
    db = Database(postgres_url)
    db.migrate()
    store = IndexStore(db)
    try:
        # a BEGIN would leave the transaction open after the read (the driver commits
        # nothing by itself); the read's own transaction is over when it has answered
        assert store._search("SELECT count(*) FROM persons WHERE id > %s", [""]) == [(0,)]
        driver = store._hot._local.driver
        assert driver.autocommit is True
        assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # a thread beyond those that keep a connection reads on a pooled one, given back
        spare = HotConnection(db, kept=0)
        assert spare.read("SELECT count(*) FROM persons WHERE id > %s", ("",)) == [(0,)]
        with db.engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is False
        try:
            with db.engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO index_settings (key, value) VALUES ('x', 'y')")
                raise RuntimeError("midway")
        except RuntimeError:
            pass
        with db.engine.connect() as conn:
            left = conn.exec_driver_sql("SELECT count(*) FROM index_settings WHERE key = 'x'")
            assert left.scalar() == 0
    finally:
        store.close()
        db.dispose()


def _built(
    url: str, seed: int, n: int
) -> tuple[Database, IndexStore, list[pop.Person], list[PersonRow]]:
    """A migrated database holding the index of ``n`` people of the GP's (``seed``)."""
    db = Database(url)
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(seed, n))
    persons, links, reviews, _ = link_people(_gp(people), store.secret())
    store.replace_all(persons, links, reviews)
    return db, store, people, persons


def _ended(db: Database, pids: list[int]) -> None:
    """End these PostgreSQL backends, as a restart or an administrator would, and wait
    until they are gone."""
    with db.engine.connect() as conn:
        for pid in pids:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})


def test_a_postgresql_search_whose_connection_the_server_ended_answers_on_a_new_one(
    postgres_url,
):
    """A search reads on its thread's kept connection, which is not pinged before each
    read: when the server has ended that connection and an idle one of the pool (as a
    restart ends them all), the next search still answers, and answers the same."""
    db, store, people, _ = _built(postgres_url, 6, 40)
    query = PersonQuery(family=((NameTest(fold(people[3].family)),),))
    admin = Database(postgres_url)
    try:
        before = [p.id for p in store.find(query)]
        assert before
        (kept,) = store._search("SELECT pg_backend_pid()", [])[0]
        with db.engine.connect() as conn:  # a pooled one too, given back idle
            (pooled,) = conn.execute(sa.text("SELECT pg_backend_pid()")).one()
        _ended(admin, [kept, pooled])
        assert [p.id for p in store.find(query)] == before
        assert store._search("SELECT pg_backend_pid()", [])[0][0] not in (kept, pooled)
    finally:
        store.close()
        db.dispose()
        admin.dispose()


def test_a_search_with_consents_gives_what_find_and_active_of_give(database_url):
    """``find_with_consents`` reads a page of a search and its people's active consents
    in one statement: the same people, pages and consents as ``find`` and then
    ``ConsentStore.active_of`` (none of one person's handed to another, none inactive,
    a person with several of them once), by name and by one NHS number alike."""
    db, store, _, persons = _built(database_url, 8, 60)
    with db.engine.begin() as conn:  # some people plain, some not, whatever the build made
        t = tables.persons
        conn.execute(sa.update(t).where(t.c.id < "8").values(plain=sa.not_(t.c.plain)))
    consents = ConsentStore(db)
    rng = random.Random(5)
    statuses = ["active", "active", "inactive", "rejected"]
    for i, p in enumerate(rng.sample(persons, 30) * 2):
        row = ConsentRow(f"c{i:03d}", p.id, rng.choice(statuses), 1, "t", f'{{"n": {i}}}'.encode())
        assert consents.put(row, None)
    families = {p.family_folded for p in persons}
    queries = [PersonQuery(family=((NameTest(f[:1]),),)) for f in sorted(families)]
    queries += [PersonQuery(identifiers=((IdentifierTest(nhs_number=persons[0].nhs_number),),))]
    # names that find the same people twice over (a prefix of another; one name given
    # twice, exactly), beside a second list of names: each person once, in id order
    for p in persons[:6]:
        f = p.family_folded
        exact = NameTest(p.family, exact=True, folded=f)
        queries += [
            PersonQuery(family=((NameTest(f[:1]), NameTest(f[:2]), NameTest(f)),)),
            PersonQuery(family=((exact, exact, NameTest(f[:3])),)),
            PersonQuery(family=((NameTest(f[:2]),), (NameTest(f[:1]), NameTest("zz")))),
            PersonQuery(family=((NameTest(f[:2]), NameTest(f[:1])),), given=((NameTest(""),),)),
        ]
    seen_held = 0
    plain: set[bool] = set()
    try:
        for q in queries:
            for after, limit in (("", 500), ("", 2), (persons[0].id, 3)):
                rows, held = store.find_with_consents(q, after=after, limit=limit)
                want = store.find(q, after=after, limit=limit)
                assert rows == [FoundPerson(r.id, r.patient, r.plain) for r in want]
                assert len({r.id for r in rows}) == len(rows)
                plain.update(r.plain for r in rows)
                assert held == consents.active_of([r.id for r in want])
                seen_held += len(held)
        assert seen_held > 10  # consents were found, not only empty maps compared
        assert plain == {True, False}  # each kind of person read as its row says
    finally:
        consents.close()
        store.close()
        db.dispose()


def test_rows_read_are_the_rows_written_and_stay_frozen(database_url):
    """Every person and link read back (made without the dataclass's own ``__init__``,
    ``index_rows._row``) equals, hashes as and reads as the row written, and cannot be
    changed. Fails when a value lands under another field's name."""
    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    try:
        people = list(pop.people(5, 40))
        persons, links, reviews, _ = link_people(_gp(people), store.secret())
        store.replace_all(persons, links, reviews)
        for written in persons:
            for read in (store.person(written.id), store.person_with_consents(written.id)[0]):
                assert read == written
                assert hash(read) == hash(written)
                assert vars(read) == vars(written)
                with pytest.raises(FrozenInstanceError):
                    read.version = "changed"  # type: ignore[misc]
        by_person = {}
        for link in links:
            by_person.setdefault(link.person_id, []).append(link)
        for person_id, written_links in by_person.items():
            read_links = store.links_of(person_id)
            assert sorted(read_links, key=repr) == sorted(written_links, key=repr)
            assert [vars(x) for x in sorted(read_links, key=repr)] == [
                vars(x) for x in sorted(written_links, key=repr)
            ]
    finally:
        store.close()
        db.dispose()


def test_a_person_read_is_the_person_stored_a_frozen_value_like_any_other(database_url):
    """The rows the lookup path reads (``_person`` sets a row's fields in one step rather
    than through ``PersonRow.__init__``) are the very values stored: equal field by
    field, equal hashes, the same repr, and frozen."""
    db = Database(database_url)
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(5, 40))
    persons, links, reviews, _ = link_people(_gp(people), store.secret())
    store.replace_all(persons, links, reviews)
    try:
        for stored in persons:
            reads = [store.person(stored.id), store.person_and_records(stored.id)[0]]
            reads.append(store.person_with_consents(stored.id)[0])
            if stored.nhs_number is not None:
                reads.append(store.person_by_nhs_with_consents(stored.nhs_number)[0])
                reads.append(store.person_by_nhs(stored.nhs_number))
            for read in reads:
                assert read == stored
                assert hash(read) == hash(stored)
                assert repr(read) == repr(stored)
                assert type(read.patient) is bytes
                try:
                    read.family = "changed"  # type: ignore[misc]
                except AttributeError:
                    pass
                else:
                    raise AssertionError("a person read is frozen")
    finally:
        store.close()
        db.dispose()


def test_migration_18_leaves_the_people_indexed_before_it_not_plain(database_url):
    """A database from before migration 18 (no ``plain``) gets the column with every
    person not plain, so a search decides about each as before, until they are written
    again; a person written since is read as their row says."""
    db, store, _, persons = _built(database_url, 9, 12)
    try:
        assert any(p.plain for p in persons)  # the build's rows: plain people among them
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE persons DROP COLUMN plain")
            conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 18")
        store.close()  # its kept connection read the old columns
        assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
        query = PersonQuery(family=((NameTest(""),),))
        rows, _ = store.find_with_consents(query)
        assert len(rows) == len(persons)
        assert not any(r.plain for r in rows)
        assert not any(r.plain for r in store.find(query))
        store.replace_all(persons, [], [])
        rows, _ = store.find_with_consents(query)
        assert [r.plain for r in rows] == [p.plain for p in sorted(persons, key=lambda p: p.id)]
    finally:
        store.close()
        db.dispose()


def _many_records(
    url: str, seed: int, records: list[tuple[str, str]]
) -> tuple[Database, IndexStore, list[PersonRow], str]:
    """A migrated index of 40 of the GP's people (``seed``) whose second person holds
    these (source, local id) records too; the database, store, people and that id."""
    db = Database(url)
    db.migrate()
    store = IndexStore(db)
    persons, links, reviews, _ = link_people(_gp(list(pop.people(seed, 40))), store.secret())
    many = persons[1].id
    extra = [
        replace(links[0], source=source, local_id=local, person_id=many, patient_id=f"extra-{n}")
        for n, (source, local) in enumerate(records)
    ]
    store.replace_all(persons, [*links, *extra], reviews)
    return db, store, persons, many


def test_records_of_are_links_of_without_their_patients_in_the_same_order(database_url):
    """``records_of`` (what ``$everything`` asks the sources, read without each record's
    Patient, sorted in Python on SQLite) gives each person's (source, local id) exactly
    as ``links_of`` does, in the same order: for people of one and several sources, and
    for one person holding many records whose ids differ by case, digits, accents and
    code points past the Basic Multilingual Plane. Fails if either read's order moves."""
    rng = random.Random(13)
    alphabet = ["a", "B", "b", "Z", "0", "9", "10", "-", "_", "é", "e\u0301", "ä", "\U0001f600"]
    sources = ["acute", "gp", "community", "social-care", "Acute"]
    records = [
        (rng.choice(sources), "".join(rng.choices(alphabet, k=rng.randint(1, 4))) + str(n))
        for n in range(40)
    ]
    db, store, persons, many = _many_records(database_url, 5, records)
    try:
        for person in persons:
            want = [(link.source, link.local_id) for link in store.links_of(person.id)]
            assert store.records_of(person.id) == want
            assert store.person_and_records(person.id) == (person, want)
        assert len(store.records_of(many)) > 40
        assert store.records_of("nobody") == []
        assert store.person_and_records("nobody") is None
    finally:
        store.close()
        db.dispose()


def test_the_person_their_consents_and_records_read_together_are_each_read_alone(
    database_url,
):
    """``person_consents_and_records`` ($everything's one read on SQLite) gives exactly
    ``person_with_consents`` and ``records_of``: people with no, one and several active
    consents (inactive ones left out), with one record or many, and nobody for an unknown
    id. Fails when a record row is taken for a consent or the other way round."""
    records = [("acute", f"x{n}") for n in range(5)]
    db, store, persons, many = _many_records(database_url, 6, records)
    consents = ConsentStore(db)
    try:
        rng = random.Random(7)
        statuses = ["active", "active", "inactive"]
        for i, p in enumerate([persons[1], persons[1], persons[1], *rng.sample(persons, 12)]):
            body = f'{{"n": {i}}}'.encode()
            row = ConsentRow(f"c{i:03d}", p.id, rng.choice(statuses), 1, "t", body)
            assert consents.put(row, None)
        held = 0
        for person in persons:
            together = store.person_consents_and_records(person.id)
            alone = store.person_with_consents(person.id)
            assert alone is not None
            assert together == (*alone, store.records_of(person.id))
            held += len(alone[1])
        assert held > 5  # consents were read, not only empty lists compared
        assert len(store.records_of(many)) > 5
        assert store.person_consents_and_records("nobody") is None
    finally:
        consents.close()
        store.close()
        db.dispose()
