"""The MLLP listener over real loopback sockets: acknowledgements, refusals, duplicates,
merges, the message's own encoding characters, and a restart that loses nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from carelink.feeds import FeedListener
from carelink.simulators import community as sim
from carelink.simulators.feed import send_feed, split_file
from carelink.sources.community import CommunitySource
from carelink.sources.community_feed import CommunityFeedSource
from carelink.storage import (
    LOCAL_ID_LENGTH,
    Arrival,
    Database,
    FeedStore,
    IndexStore,
    LinkRow,
    PersonRow,
)
from carelink.storage.feed_tables import CONTROL_ID_LENGTH
from tests.support.procs import free_port

MSH = "MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20260101120000+0000||{kind}|{id}|P|2.5.1"
INSTANT = "2026-03-04T05:06:07.000Z"


def message(kind: str, control: str, *segments: str) -> str:
    return "\r".join((MSH.format(kind=kind, id=control), *segments))


def a28(control: str, local: str, family: str = "Davies") -> str:
    return message(
        "ADT^A28^ADT_A05",
        control,
        "EVN|A28|20260101120000+0000",
        f"PID|1||{local}^^^RCOMM^MR~9434765919^^^NHS^NH||{family}^Oscar||19370918|M",
    )


def oru(control: str, local: str, value: str = "12") -> str:
    return message(
        "ORU^R01^ORU_R01",
        control,
        f"PID|1||{local}^^^RCOMM^MR",
        f"OBR|1||{control}|720433000^PHQ-9 total score^SCT",
        f"OBX|1|NM|720433000^PHQ-9 total score^SCT||{value}|{{score}}|||||F|||20260101",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedStore]:
    db = Database(str(tmp_path / "feed.db"))
    db.migrate()
    yield FeedStore(db)
    db.dispose()


@dataclass
class Exchange:
    """Messages sent on one connection and the acknowledgements they got, in order."""

    acks: list[hl7.Message]

    def codes(self) -> list[str]:
        return [str(a.segment("MSA")[1]) for a in self.acks]


async def _converse(port: int, messages: list[str]) -> Exchange:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    acks = []
    for m in messages:
        writer.writeblock(m.encode())
        await writer.drain()
        acks.append(hl7.parse((await asyncio.wait_for(reader.readblock(), 10)).decode()))
    writer.close()
    await writer.wait_closed()
    return Exchange(acks)


def exchange(
    store: FeedStore, messages: list[str], listener: FeedListener | None = None
) -> Exchange:
    """Start a listener on a free port, send ``messages`` on one connection, stop it."""

    async def go() -> Exchange:
        taker = listener or FeedListener(store, "community", clock=lambda: INSTANT)
        port = free_port()
        server = await taker.serve("127.0.0.1", port)
        try:
            return await _converse(port, messages)
        finally:
            await taker.stop(server)

    return asyncio.run(go())


def test_each_message_acknowledged_aa_after_it_is_stored(store: FeedStore):
    got = exchange(store, [a28("M1", "C1"), oru("M2", "C1")])
    assert got.codes() == ["AA", "AA"]
    assert [str(a.segment("MSA")[2]) for a in got.acks] == ["M1", "M2"]
    assert str(got.acks[0].segment("MSH")[9]) == "ACK^A28^ACK"
    assert store.count("community") == 2
    part = store.record("community", "C1")
    assert part is not None
    assert part.as_of == INSTANT
    assert [m.split("\r")[0].split("|")[9] for m in part.messages] == ["M2"]


@pytest.mark.parametrize(
    ("bad", "code", "error"),
    [
        ("this is not HL7", "AR", "100"),
        (message("ADT^A28^ADT_A05", "", "PID|1||C2^^^RCOMM^MR"), "AR", "101"),  # no MSH-10
        (message("SIU^S12^SIU_S12", "B1", "PID|1||C2^^^RCOMM^MR"), "AR", "200"),
        (message("ADT^A99^ADT_A01", "B1", "PID|1||C2^^^RCOMM^MR"), "AR", "201"),
        (message("ADT^A28^ADT_A05", "B1", "PID|1||C2^^^RCOMM^PI||X^Y"), "AE", "101"),  # no MR
        (message("ADT^A40^ADT_A39", "B1", "PID|1||C2^^^RCOMM^MR||X^Y", "MRG|"), "AE", "101"),
        # keys longer than the feed and the index hold: refused, never stored cut short
        (a28("B1", "C" * (LOCAL_ID_LENGTH + 1)), "AE", "102"),
        (
            message(
                "ADT^A40^ADT_A39",
                "B1",
                "PID|1||C2^^^RCOMM^MR||X^Y",
                f"MRG|{'C' * (LOCAL_ID_LENGTH + 1)}^^^RCOMM^MR",
            ),
            "AE",
            "102",
        ),
        (a28("B" * (CONTROL_ID_LENGTH + 1), "C2"), "AR", "102"),
    ],
    ids=[
        "not-hl7",
        "no-control-id",
        "unsupported-type",
        "unsupported-event",
        "no-mr",
        "no-mrg",
        "long-mr",
        "long-mrg",
        "long-control-id",
    ],
)
def test_a_bad_message_is_refused_without_losing_its_neighbours(
    store: FeedStore, bad: str, code: str, error: str
):
    got = exchange(store, [a28("M1", "C1"), bad, oru("M2", "C1")])
    assert got.codes() == ["AA", code, "AA"]
    err = got.acks[1].segment("ERR")
    assert str(err[3]).split("^")[0] == error
    assert store.count("community") == 2


def test_the_longest_keys_the_feed_holds_are_stored_whole(database_url: str):
    """At the limits the feed's columns hold (PostgreSQL refuses a longer value; SQLite
    would keep it): accepted, stored and read back as sent, on both databases."""
    db = Database(database_url)
    db.migrate()
    try:
        feed = FeedStore(db)
        local, control = "C" * LOCAL_ID_LENGTH, "B" * CONTROL_ID_LENGTH
        got = exchange(feed, [a28("M1", local), oru(control, local)])
        assert got.codes() == ["AA", "AA"]
        part = feed.record("community", local)
        assert part is not None
        assert [m.split("\r")[0].split("|")[9] for m in part.messages] == [control]
    finally:
        db.dispose()


def test_a_duplicate_or_replay_is_acknowledged_and_changes_nothing(store: FeedStore):
    exchange(store, [a28("M1", "C1"), oru("M2", "C1", "12")])
    before = store.record("community", "C1")
    # the same control id again, even with other content, is the message already stored
    got = exchange(store, [oru("M2", "C1", "12"), oru("M2", "C1", "27"), a28("M1", "C1")])
    assert got.codes() == ["AA", "AA", "AA"]
    assert store.count("community") == 2
    assert store.record("community", "C1") == before


def test_a_merge_moves_the_record_and_points_the_index_at_the_survivor(store: FeedStore):
    index = IndexStore(store.db)
    people = [
        PersonRow(p, None, "D", "O", "d", "o", None, None, None, b"{}", "1") for p in ("P1", "P2")
    ]
    index.replace_all(
        people,
        [
            LinkRow("community", "C1", "P1", "community-C1", "nhs-number", None, b"{}"),
            LinkRow("community", "C2", "P2", "community-C2", "nhs-number", None, b"{}"),
            LinkRow("acute", "A1", "P1", "acute-A1", "nhs-number", None, b"{}"),
        ],
        [],
    )
    merge = message(
        "ADT^A40^ADT_A39",
        "M9",
        "EVN|A40|20260101120000+0000",
        "PID|1||C2^^^RCOMM^MR||Davies^Oscar||19370918|M",
        "MRG|C1^^^RCOMM^MR",
    )
    got = exchange(
        store, [a28("M1", "C1"), oru("M2", "C1"), a28("M3", "C2"), oru("M4", "C2"), merge]
    )
    assert got.codes() == ["AA"] * 5
    assert index.link("community", "C1") is None
    assert index.link("community", "C2") is not None
    assert index.link("acute", "A1") is not None
    part = store.record("community", "C1")  # the retired id reads the survivor's record
    assert part is not None
    assert part.local_id == "C2"
    assert sum("ORU^R01" in m for m in part.messages) == 2  # both people's results
    assert [p[0] for p in store.people("community")] == ["C2"]
    # a late message for the retired id lands on the survivor
    exchange(store, [oru("M5", "C1")])
    later = store.record("community", "C2")
    assert later is not None
    assert sum("ORU^R01" in m for m in later.messages) == 3
    index.close()


def test_a_merge_hands_the_retired_link_to_a_survivor_the_index_did_not_know(
    store: FeedStore,
):
    index = IndexStore(store.db)
    index.replace_all(
        [PersonRow("P1", None, "D", "O", "d", "o", None, None, None, b"{}", "1")],
        [LinkRow("community", "C1", "P1", "community-C1", "nhs-number", None, b"{}")],
        [],
    )
    merge = message("ADT^A40^ADT_A39", "M9", "PID|1||C7^^^RCOMM^MR||D^O", "MRG|C1^^^RCOMM^MR")
    assert exchange(store, [merge]).codes() == ["AA"]
    link = index.link("community", "C7")
    assert link is not None
    assert (link.person_id, link.patient_id) == ("P1", "community-C7")
    index.close()


def test_encoding_characters_and_escapes_come_from_the_message(store: FeedStore):
    """MSH-2 ``$%&\\``: components $, repetitions %, escape &, subcomponents \\ ; so
    ``&S&`` is a literal $ and ``&F&`` a literal |."""
    text = "\r".join(
        (
            "MSH|$%&\\|EPR|RCOMM|CARELINK|ICS|20260101120000+0000||ADT$A28$ADT_A05|E1|P|2.5.1",
            "PID|1||C5$$$RCOMM$MR%9434765919$$$NHS$NH||Smith&S&Jones$Mary$Ann||19800101|F|||"
            "1 Mill &F& Yard$$Halifax$$HX3 5PW",
        )
    )
    got = exchange(store, [text])
    assert got.codes() == ["AA"]
    assert str(got.acks[0].segment("MSH")[2]) == "$%&\\"  # answered in the sender's characters
    patient = asyncio.run(CommunityFeedSource(store).fetch_record("C5", "Patient/x", None))
    p = patient.resources[0]
    assert p["name"][0] == {"use": "official", "family": "Smith$Jones", "given": ["Mary", "Ann"]}
    assert p["identifier"][0]["value"] == "9434765919"
    assert p["address"][0]["line"] == ["1 Mill | Yard"]


def test_default_escapes_are_decoded(store: FeedStore):
    pid = (
        "PID|1||C6^^^RCOMM^MR||O'Brien\\T\\Smith\\S\\Jr^Mary||19410307|F|||"
        "Flat 1 \\E\\ 2 \\F\\ Mill \\R\\ Yard^^Halifax^^HX3 5PW"
    )
    exchange(store, [message("ADT^A28^ADT_A05", "E2", pid)])
    p = asyncio.run(CommunityFeedSource(store).fetch_record("C6", "Patient/x", None)).resources[0]
    assert p["name"][0]["family"] == "O'Brien&Smith^Jr"
    assert p["address"][0]["line"] == ["Flat 1 \\ 2 | Mill ~ Yard"]


def test_the_feed_serves_what_the_query_serves(store: FeedStore):
    """The simulator's population pushed as a feed maps to the same FHIR as its answers
    to a query, with the as-of time of the last message applied."""
    messages = list(sim.feed(7, 60))
    people = sim.PopulationSlice("community", 7, 60)
    local = max(people.local_ids(), key=lambda lid: len(people.facts(lid)))

    async def go() -> tuple[object, object]:
        port = free_port()
        listener = FeedListener(store, "community", clock=lambda: INSTANT)
        server = await listener.serve("127.0.0.1", port)
        try:
            report = await send_feed(messages, "127.0.0.1", port)
        finally:
            await listener.stop(server)
        return report, await CommunityFeedSource(store).fetch_record(local, "Patient/p", None)

    report, fed = asyncio.run(go())
    assert report.accepted == len(messages)  # type: ignore[attr-defined]
    assert not report.refused  # type: ignore[attr-defined]
    w = sim.Writer(sim.STAMP)
    sim.record(w, people.by_local[local], local, people.facts(local))
    queried = CommunitySource.__new__(CommunitySource)
    queried.name = "community"
    mapped = queried._map(w.batch(), local, "Patient/p", None)
    assert list(fed.resources) == mapped.resources  # type: ignore[attr-defined]
    assert fed.as_of == INSTANT  # type: ignore[attr-defined]


class CrashAfterStoring(FeedStore):
    """A store whose ``n``-th write commits and then waits, so the listener can be
    stopped after a message was stored and before it was acknowledged."""

    def __init__(self, db: Database, n: int) -> None:
        super().__init__(db)
        self.n = n
        self.calls = 0
        self.stored = threading.Event()
        self.release = threading.Event()

    def apply(self, arrival: Arrival) -> bool:
        fresh = super().apply(arrival)
        self.calls += 1
        if self.calls == self.n:
            self.stored.set()
            self.release.wait(10)
        return fresh


def test_a_listener_restart_mid_feed_loses_nothing(store: FeedStore):
    messages = [a28(f"R{n:03d}", f"C{n}") for n in range(30)]
    crashing = CrashAfterStoring(store.db, 10)
    port = free_port()

    async def go() -> tuple[object, FeedListener]:
        first = FeedListener(crashing, "community")
        server = await first.serve("127.0.0.1", port)
        sending = asyncio.create_task(
            send_feed(messages, "127.0.0.1", port, ack_timeout=2.0, retry_wait=0.1)
        )
        await asyncio.to_thread(crashing.stored.wait, 10)  # message 10 stored, not answered
        await first.stop(server)
        crashing.release.set()
        await asyncio.sleep(0.5)  # the sender finds nobody listening, and retries
        second = FeedListener(store, "community")
        server = await second.serve("127.0.0.1", port)
        try:
            return await asyncio.wait_for(sending, 30), second
        finally:
            await second.stop(server)

    report, second = asyncio.run(go())
    assert report.accepted == 30  # type: ignore[attr-defined]
    assert report.resends >= 1  # type: ignore[attr-defined]
    assert store.count("community") == 30
    assert second.tally.duplicates == 1  # message 10 came again: stored once
    assert len(list(store.people("community"))) == 30


def test_a_file_of_messages_replays_in_order(tmp_path: Path, store: FeedStore):
    path = tmp_path / "feed.hl7"
    body = "\n\n".join(m.replace("\r", "\n") for m in (a28("F1", "C1"), oru("F2", "C1")))
    path.write_text(f"FHS|^~\\&|X\nBHS|^~\\&|X\n{body}\nBTS|2\nFTS|1\n")
    messages = split_file(path.read_text())
    assert [m.split("\r")[0].split("|")[9] for m in messages] == ["F1", "F2"]
    assert exchange(store, messages).codes() == ["AA", "AA"]
    assert exchange(store, messages).codes() == ["AA", "AA"]  # a replay changes nothing
    assert store.count("community") == 2
