"""1,000 changed people applied to the live index, end to end, per kind of source (issue 15).

    PYTHONPATH=src .venv/bin/python benchmarks/update_bench.py --people 2000 --changes 1000

For each HTTP source kind (acute FHIR, GP, community HL7 v2, council JSON) it
serves that simulator in this process (uvicorn on a thread, ports from
``--port``), builds an index of it into a fresh SQLite file (or the PostgreSQL
database given with ``--database``), then changes ``--changes`` people at the
simulator over HTTP, as its system would (half of them moved house and
renamed, half newly registered), and times ``update_from``: the listing of
what changed in the source's own idiom, and applying it. "end to end" is the
time from the first change sent to the simulator until the update is done.

For the HL7 v2 feed it builds the index from the acute simulator, starts the
real MLLP listener with the app's keeper beside it (``offline.feed_keeper``, as
``carelink feed listen`` runs them), sends ``--changes`` ADT^A28 over one MLLP
connection (half carrying the NHS number of a hospital patient, half new
people), each acknowledged only once stored, and times until the last one is
in the index.

Prints one line per source kind; every server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from hl7.mllp import open_hl7_connection

from carelink.assembly import ADAPTERS
from carelink.federation.build import build_index
from carelink.federation.update import update_from
from carelink.feeds.listener import listen_all
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.offline import feed_keeper
from carelink.settings import Settings
from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.sources.base import Source, SourcePerson
from carelink.storage import Database, FeedStore, IndexStore

SIMULATORS = {"acute": acute, "gp": gp, "community": community, "social-care": social_care}
SEED = 15


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    """``app`` under uvicorn on a thread at 127.0.0.1:``port`` until the block ends."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def fresh_store(database: str | None, folder: Path, name: str) -> IndexStore:
    db = Database(database or str(folder / f"{name}.db"))
    db.migrate()
    return IndexStore(db)


def numbers(start: int) -> Iterator[str]:
    """Valid NHS numbers in the 999 test range, which the population never uses."""
    k = start
    while k < 999_999:
        digit = check_digit(body := str(999_000_000 + k))
        if digit is not None:
            yield body + str(digit)
        k += 1


def patient(nhs: str, family: str, given: str, birth: str, gender: str, postcode: str) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
        "address": [{"line": ["1 Station Road"], "city": "York", "postalCode": postcode}],
    }


def the_changes(held: list[SourcePerson], count: int, rng: random.Random) -> list[tuple[str, dict]]:
    """(local id, Patient): half the people held moved and renamed, half new registrations."""
    moved = [
        (
            p.local_id,
            patient(
                str(p.nhs_number),
                f"{p.family}-Moved",
                p.given or "Alex",
                str(p.birth_date),
                str(p.gender),
                f"YO{rng.randint(1, 32)} {rng.randint(1, 9)}AB",
            ),
        )
        for p in held
        if p.nhs_number and p.birth_date
    ][: count // 2]
    fresh = numbers(rng.randint(0, 900_000))
    new = [
        (
            f"NEW{i:06d}",
            patient(
                next(fresh),
                rng.choice(["Quenby", "Ashdown", "Pennant", "Tolley"]),
                rng.choice(["Imogen", "Rhys", "Aled", "Nia"]),
                f"19{rng.randint(30, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                rng.choice(["male", "female"]),
                f"LS{rng.randint(1, 29)} {rng.randint(1, 9)}CD",
            ),
        )
        for i in range(count - len(moved))
    ]
    return moved + new


async def one_http_source(
    name: str, base: str, store: IndexStore, count: int, rng: random.Random
) -> str:
    async with aiohttp.ClientSession() as session:
        source: Source = ADAPTERS[name](session, base, name)
        built = await build_index([source], store)
        held = [p async for p in source.people()]
        changes = the_changes(held, count, rng)
        gate = asyncio.Semaphore(16)

        async def put(local: str, body: dict) -> None:
            url = (
                f"{base}/fhir/Patient/{local}"
                if name == "acute"
                else f"{base}/_admin/patients/{local}"
            )
            async with gate, session.put(url, json=body) as resp:
                assert resp.status in (200, 201), await resp.text()

        started = time.perf_counter()
        await asyncio.gather(*(put(local, body) for local, body in changes))
        sent = time.perf_counter() - started
        mark = time.perf_counter()
        report = await update_from([source], store)
        update = time.perf_counter() - mark
        applied = report.applied
        assert applied is not None
        assert report.listed[name] >= count, report.listed
        for local, _ in changes[-3:]:
            assert store.link(name, local) is not None
        return (
            f"{name:12} index of {sum(built.records.values()):,} records; {count} changes "
            f"sent in {sent:.2f} s; update {update:.2f} s (listed {report.listed[name]}, "
            f"{applied.persons_before} people re-linked into {applied.persons_after}, "
            f"apply {applied.seconds:.2f} s); end to end {time.perf_counter() - started:.2f} s"
        )


def a28(control: str, local: str, nhs: str, family: str, born: str) -> str:
    return "\r".join(
        (
            f"MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20261130120000+0000||ADT^A28^ADT_A05|"
            f"{control}|P|2.5.1",
            "EVN|A28|20261130120000",
            f"PID|1||{local}^^^RCOMM^MR~{nhs}^^^NHS^NH||{family}^Nia||{born}|F",
        )
    )


async def the_feed(
    acute_base: str, store: IndexStore, count: int, port: int, rng: random.Random
) -> str:
    async with aiohttp.ClientSession() as session:
        hospital = ADAPTERS["acute"](session, acute_base, "acute")
        await build_index([hospital], store)
        held = [p async for p in hospital.people() if p.nhs_number and p.birth_date]
    fresh = numbers(rng.randint(0, 900_000))
    messages = []
    for i in range(count):
        known = held[i] if i < count // 2 and i < len(held) else None
        nhs = str(known.nhs_number) if known else next(fresh)
        born = str(known.birth_date if known else "1970-05-05").replace("-", "")
        family = known.family if known else "Quenby"
        messages.append(a28(f"B{i:06d}", f"F{i:06d}", nhs, family, born))
    settings = Settings(sources={"community": f"mllp://127.0.0.1:{port}"})
    wake = asyncio.Event()
    running = await listen_all(FeedStore(store.db), settings.feeds(), wake.set)
    keeper = asyncio.create_task(feed_keeper(settings, every=5.0)(store.db, wake))
    try:
        started = time.perf_counter()
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        for m in messages:
            writer.writeblock(m.encode())
            await writer.drain()
            ack = (await reader.readblock()).decode()
            assert "MSA|AA" in ack, ack
        acked = time.perf_counter() - started
        writer.close()
        last = f"F{count - 1:06d}"
        while store.link("community", last) is None:  # noqa: ASYNC110 (polled, as a search)
            await asyncio.sleep(0.05)
        done = time.perf_counter() - started
    finally:
        keeper.cancel()
        for listener, server in running:
            await listener.stop(server)
    held_now = store.counts().get("links:community", 0)
    return (
        f"{'feed (MLLP)':12} {count} ADT^A28 acknowledged in {acked:.2f} s; all {held_now} in "
        f"the index {done:.2f} s after the first was sent"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=2000, help="population of the simulators")
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--port", type=int, default=23100, help="first of six ports to use")
    ap.add_argument("--database", help="a PostgreSQL URL (default: a fresh SQLite file per run)")
    args = ap.parse_args()
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, (name, sim) in enumerate(SIMULATORS.items()):
            app = sim.create_app(seed=SEED, size=args.people, behaviour=Behaviour())
            with serving(app, args.port + i) as base:
                store = fresh_store(args.database, folder, name)
                line = asyncio.run(one_http_source(name, base, store, args.changes, rng))
                store.close()
                store.db.dispose()
                print(line, flush=True)
        app = acute.create_app(seed=SEED, size=args.people, behaviour=Behaviour())
        with serving(app, args.port + 4) as base:
            store = fresh_store(args.database, folder, "feed")
            print(asyncio.run(the_feed(base, store, args.changes, args.port + 5, rng)), flush=True)
            store.close()
            store.db.dispose()


if __name__ == "__main__":
    main()
