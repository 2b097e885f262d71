"""``update_from`` and ``reconcile`` against a real acute simulator and adapter, and the
stored HL7 v2 feed read from a cursor (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

import aiohttp
import pytest

from carelink.federation.build import build_index
from carelink.federation.changes import record_of
from carelink.federation.update import cursor_key, reconcile, update_from, watermark_key
from carelink.feeds.intake import read
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.simulators import acute
from carelink.simulators.base import Behaviour
from carelink.sources.community_feed import CommunityFeedSource
from carelink.sources.fhir_rest import AcuteSource
from carelink.storage import Arrival, Database, FeedStore, IndexStore
from tests.federation.test_build import _store
from tests.support.servers import run_app

SIZE = 300


def _number(seed: int) -> str:
    return next(
        n + str(d) for k in range(seed, seed + 40) if (d := check_digit(n := str(990_000_000 + k)))
    )


def _patient(local: str, nhs: str | None, family: str, **extra: object) -> dict:
    ids = [{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else []
    return {
        "resourceType": "Patient",
        "id": local,
        "identifier": ids,
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1950-02-03",
        "address": [{"postalCode": "LS1 4AB"}],
        **extra,
    }


async def _put(session: aiohttp.ClientSession, base: str, body: dict) -> None:
    async with session.put(f"{base}/fhir/Patient/{body['id']}", json=body) as resp:
        assert resp.status in (200, 201)


def test_registrations_and_merges_at_the_source_reach_the_index(tmp_path):
    store = _store(str(tmp_path / "i.db"))
    app = acute.create_app(seed=9, size=SIZE, behaviour=Behaviour())
    with run_app(app) as base:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                source = AcuteSource(session, base)
                report = await build_index([source], store)
                assert store.setting(watermark_key("acute")) is not None
                first = await update_from([source], store)
                assert first.listed == {"acute": 0}
                new = _number(1)
                await _put(session, base, _patient("NEW1", new, "Hartley"))
                await _put(session, base, _patient("TEMP9", None, "Hartley"))
                second = await update_from([source], store)
                assert second.listed == {"acute": 2}
                person = store.person_by_nhs(new)
                assert person is not None
                assert store.link("acute", "TEMP9").person_id != person.id  # same source
                merged = {"type": "replaced-by", "other": {"reference": "Patient/NEW1"}}
                await _put(
                    session,
                    base,
                    _patient("TEMP9", None, "Hartley", active=False, link=[merged]),
                )
                third = await update_from([source], store)
                assert third.listed["acute"] >= 1  # listings overlap: a re-listed change is no-op
                assert store.link("acute", "TEMP9") is None
                assert store.counts()["persons"] == report.persons + 1
                drift = await reconcile(source, store)
                assert (drift.listed, drift.missing, drift.changed, drift.gone) == (
                    report.records["acute"] + 1,
                    0,
                    0,
                    0,
                )

        asyncio.run(scenario())
    store.close()


def test_reconcile_reports_and_fixes_what_an_update_missed(tmp_path):
    store = _store(str(tmp_path / "i.db"))

    async def scenario(session: aiohttp.ClientSession, source: AcuteSource, base: str) -> None:
        await build_index([source], store)
        await _put(session, base, _patient("NEW2", _number(100), "Okafor"))
        drift = await reconcile(source, store)
        assert (drift.missing, drift.changed, drift.fixed) == (1, 0, None)
        fixed = await reconcile(source, store, fix=True)
        assert fixed.fixed is not None
        assert store.link("acute", "NEW2") is not None
        again = await reconcile(source, store)
        assert (again.missing, again.changed, again.gone) == (0, 0, 0)

    _against_acute(store, scenario)


def _against_acute(
    store: IndexStore,
    scenario: Callable[[aiohttp.ClientSession, AcuteSource, str], Awaitable[None]],
) -> None:
    """Run ``scenario`` with a session, the adapter and the base URL of a real acute
    simulator; close the store after."""
    with run_app(acute.create_app(seed=9, size=SIZE, behaviour=Behaviour())) as base:

        async def go() -> None:
            async with aiohttp.ClientSession() as session:
                await scenario(session, AcuteSource(session, base), base)

        asyncio.run(go())
    store.close()


def test_reconcile_fix_removes_records_gone_from_the_source_walking_the_index_in_pages(
    database_url,
):
    """Two records deleted at the source: reconcile finds which (walking the index's links
    seven at a time), ``fix`` removes them, and the next reconcile finds no drift."""
    store = _store(database_url)

    async def scenario(session: aiohttp.ClientSession, source: AcuteSource, base: str) -> None:
        report = await build_index([source], store)
        gone = store.local_ids("acute", "", 40)[::20]
        for local in gone:
            async with session.delete(f"{base}/fhir/Patient/{local}") as resp:
                assert resp.status == 204
        seen = await reconcile(source, store, batch=7)
        assert (seen.gone, seen.missing, seen.fixed) == (2, 0, None)
        assert all(store.link("acute", local) for local in gone)
        fixed = await reconcile(source, store, fix=True, batch=7)
        assert fixed.gone == 2
        assert fixed.fixed is not None
        assert [store.link("acute", local) for local in gone] == [None, None]
        assert store.counts()["links:acute"] == report.records["acute"] - 2
        again = await reconcile(source, store, batch=7)
        assert (again.gone, again.missing, again.changed) == (0, 0, 0)

    _against_acute(store, scenario)


def _arrival(text: str, control: str) -> Arrival:
    verdict = read(text.replace("{id}", control).encode(), "community", INSTANT, "ack")
    assert verdict.arrival is not None, verdict.reason
    return verdict.arrival


A28 = (
    "MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20260101120000+0000||ADT^A28^ADT_A05|{id}|P|2.5.1"
    "\rEVN|A28|20260101120000\rPID|1||{local}^^^RCOMM^MR{nhs}||{family}^Oscar||19370918|M"
)
INSTANT = "2026-03-04T05:06:07.000Z"


def _a28(control: str, local: str, family: str, nhs: str = "") -> Arrival:
    number = f"~{nhs}^^^NHS^NH" if nhs else ""
    return _arrival(A28.format(id="{id}", local=local, nhs=number, family=family), control)


def test_feed_arrivals_stored_but_not_applied_are_applied_by_the_next_update(database_url):
    """What the listener stored (and acknowledged) before the process died reaches the
    index at the next update; an update applies each stored change once, from a cursor."""
    store = _store(database_url)
    feed = FeedStore(store.db)
    source = CommunityFeedSource(feed)
    for n, (local, family) in enumerate([("C1", "Davies"), ("C2", "Price"), ("C3", "Evans")]):
        assert feed.apply(_a28(f"M{n}", local, family, _number(300 + 50 * n)))
    first = asyncio.run(update_from([source], store))
    assert first.listed == {"community": 3}
    assert store.setting(cursor_key("community")) is not None
    assert {store.link("community", c) is not None for c in ("C1", "C2", "C3")} == {True}
    again = asyncio.run(update_from([source], store))
    assert (again.listed, again.behind) == ({"community": 0}, False)
    merge = (
        "MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20260101120000+0000||ADT^A40^ADT_A39|{id}|P"
        "|2.5.1\rEVN|A40|20260101120000\rPID|1||C2^^^RCOMM^MR||Price^Oscar||19370918|M"
        "\rMRG|C3^^^RCOMM^MR"
    )
    delete = (
        "MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20260101120000+0000||ADT^A29^ADT_A21|{id}|P"
        "|2.5.1\rEVN|A29|20260101120000\rPID|1||C1^^^RCOMM^MR"
    )
    assert feed.apply(_arrival(merge, "M8"))
    assert feed.apply(_arrival(delete, "M9"))
    asyncio.run(update_from([source], store))
    assert store.link("community", "C3") is None
    assert store.link("community", "C1") is None
    assert store.link("community", "C2") is not None
    assert store.counts()["links:community"] == 1
    store.close()


class _Paused:
    """The real feed source, pausing after it has listed (until ``go``): the moment a
    second worker would list the same changes, and more, if nothing kept it out."""

    def __init__(self, source: CommunityFeedSource, listed: threading.Event, go: threading.Event):
        self.name, self.source, self.listed, self.go = source.name, source, listed, go

    async def changes_after(self, cursor: str, limit: int) -> tuple[list, str]:
        got = await self.source.changes_after(cursor, limit)
        self.listed.set()
        await asyncio.to_thread(self.go.wait, 10)
        return got

    async def people(self):  # pragma: no cover - the update never lists everyone
        raise NotImplementedError
        yield


@pytest.mark.postgres
def test_two_workers_apply_one_sources_feed_in_order_on_postgresql(postgres_url):
    """Worker A lists the feed and is slow to apply; a newer message about the same person
    is stored; worker B updates meanwhile. B waits for A's turn (the source's advisory
    lock), then takes on from A's cursor: the index ends with the newer demographics and
    the cursor past both messages, never A's older listing applied last."""
    name = f"community-{uuid.uuid4().hex[:8]}"  # a lock of its own among concurrent runs
    store = _store(postgres_url)
    feed = FeedStore(store.db)
    assert feed.apply(replace(_a28("M1", "C1", "Older", _number(700)), source=name))
    listed, go, b_done = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def worker(tag: str, source: object, done: threading.Event | None = None) -> None:
        db = Database(postgres_url)
        try:
            results[tag] = asyncio.run(update_from([source], IndexStore(db)))
        except Exception as exc:  # reported by the assertions below
            results[tag] = exc
        finally:
            db.dispose()
            if done is not None:
                done.set()

    a = threading.Thread(
        target=worker, args=("a", _Paused(CommunityFeedSource(feed, name), listed, go))
    )
    a.start()
    assert listed.wait(10)
    assert feed.apply(replace(_a28("M2", "C1", "Newer", _number(700)), source=name))
    b = threading.Thread(target=worker, args=("b", CommunityFeedSource(feed, name), b_done))
    b.start()
    finished_first = b_done.wait(1.0)  # without the lock B lists, applies and is done here
    go.set()
    a.join(20)
    b.join(20)
    assert not isinstance(results.get("a"), Exception), results
    assert not isinstance(results.get("b"), Exception), results
    row = store.link(name, "C1")
    assert row is not None
    assert record_of(row).family == "Newer"
    assert store.setting(cursor_key(name)) == str(
        max(seq for seq, _ in feed.messages_after(name, 0, {"ADT^A28"}, 10))
    )
    assert not finished_first, "worker B applied while A held the source's changes"
    store.close()


@pytest.mark.postgres
def test_a_feed_message_committed_after_a_later_one_is_taken_by_the_next_update(postgres_url):
    """The guarantee: **every change the feed stored reaches the index.** Two listener
    processes store messages at once: the one numbered first (its sequence handed out at
    its insert) commits last. An update that runs between the two commits takes the later
    message and moves its cursor past it; the earlier one, committed after, must still be
    taken by the next update (a cursor read by ``seq >`` passed over it for good, until a
    reconcile). The earlier message's transaction is held open by hand here, as a slow
    listener's would be. (SQLite takes one writer at a time: there they commit in order.)"""
    store = _store(postgres_url)
    feed = FeedStore(store.db)
    source = CommunityFeedSource(feed)
    slow, quick = _a28("M1", "C1", "Davies", _number(300)), _a28("M2", "C2", "Price", _number(350))
    done = threading.Event()
    with store.db.engine.connect() as conn:
        transaction = conn.begin()
        feed._apply(conn, slow)  # numbered, not committed
        other = threading.Thread(target=lambda: (feed.apply(quick), done.set()))
        other.start()
        done.wait(1.0)  # the quick one commits now, unless it must wait its turn
        asyncio.run(update_from([source], store))  # between the two commits
        transaction.commit()
    other.join(10)
    assert done.is_set()
    asyncio.run(update_from([source], store))
    assert store.link("community", "C2") is not None
    assert store.link("community", "C1") is not None, "the message committed last was lost"
    store.close()
