"""Change listings and feed messages that try to corrupt the live index (issue 15).

A listing that repeats a record, lists an older version after a newer one or
repeats itself on its next page; a merge pushed over MLLP naming people the
index has never heard of; a change listing that cannot be read. None of them
may leave the index holding a record twice, an old version over a new one, a
person made from nothing, or a watermark past changes that were never applied.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from hl7.mllp import open_hl7_connection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.errors import SourceBadPayload
from carelink.federation.build import build_index
from carelink.federation.changes import record_of
from carelink.federation.update import update_from, watermark_key
from carelink.feeds.listener import FeedListener
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import community
from carelink.simulators.base import Behaviour
from carelink.sources.community import CommunitySource
from carelink.sources.community_feed import CommunityFeedSource
from carelink.sources.fhir_rest import AcuteSource
from carelink.storage import FeedStore
from tests.federation.test_build import _store
from tests.support.kinds import kind_route
from tests.support.procs import free_port
from tests.support.servers import run_app

Json = dict[str, Any]


def _patient(local: str, family: str, nhs: str, stamp: str) -> Json:
    return {
        "resourceType": "Patient",
        "id": local,
        "meta": {"lastUpdated": stamp},
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
        "name": [{"family": family, "given": ["Rhian"]}],
        "gender": "female",
        "birthDate": "1961-06-01",
        "address": [{"postalCode": "CF10 1AA"}],
    }


OLD = "2026-11-30T10:00:00.000Z"
NEW = "2026-11-30T11:00:00.000Z"
BASE = [_patient("B1", "Morgan", "9434765919", OLD), _patient("B2", "Rees", "9434765870", OLD)]
#: page 1: the newer X1 first, the older after it, X2 twice; page 2: the older X1 again
PAGES = [
    [
        _patient("X1", "Newer", "9990000026", NEW),
        _patient("X1", "Older", "9990000026", OLD),
        _patient("X2", "Twice", "9990000034", OLD),
        _patient("X2", "Twice", "9990000034", OLD),
    ],
    [_patient("X1", "Older", "9990000026", OLD)],
]


def _bundle(base: str, resources: list[Json], next_url: str | None) -> Response:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    doc = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"fullUrl": f"{base}/Patient/{r['id']}", "resource": r} for r in resources],
    }
    return Response(orjson.dumps(doc), media_type="application/fhir+json")


def _disorderly_server() -> Starlette:
    """A FHIR server whose change listing repeats itself and runs out of order."""

    async def patients(request: Request) -> Response:
        base = str(request.base_url).rstrip("/") + "/fhir"
        if "_lastUpdated" not in request.query_params:
            return _bundle(base, BASE, None)
        page = int(request.query_params.get("page", "0"))
        more = f"{base}/Patient?_lastUpdated=gt2000&page=1" if page == 0 else None
        return _bundle(base, PAGES[page], more)

    return Starlette(routes=[kind_route("acute"), Route("/fhir/Patient", patients)])


def test_a_listing_that_repeats_and_runs_out_of_order_leaves_each_record_once_and_newest(
    tmp_path,
):
    store = _store(str(tmp_path / "i.db"))
    with run_app(_disorderly_server()) as base:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                source = AcuteSource(session, base)
                await build_index([source], store)
                for _ in range(2):  # and the same listing again: nothing more changes
                    report = await update_from([source], store)
                    assert report.listed == {"acute": 5}
                    assert store.counts()["persons"] == 4
                    assert store.counts()["links:acute"] == 4
                    x1 = store.link("acute", "X1")
                    assert x1 is not None
                    assert record_of(x1).family == "Newer"
                    assert store.person_by_nhs("9990000034") is not None

        asyncio.run(scenario())
    store.close()


def _mllp_send(feed: FeedStore, *messages: str) -> list[str]:
    """A real listener on a free port takes ``messages`` on one connection; their MSA-1s."""

    async def go() -> list[str]:
        listener = FeedListener(feed, "community")
        port = free_port()
        server = await listener.serve("127.0.0.1", port)
        try:
            reader, writer = await open_hl7_connection("127.0.0.1", port)
            codes = []
            for m in messages:
                writer.writeblock(m.encode())
                await writer.drain()
                ack = (await asyncio.wait_for(reader.readblock(), 10)).decode()
                codes.append(ack.split("MSA|")[1][:2])
            writer.close()
            await writer.wait_closed()
            return codes
        finally:
            await listener.stop(server)

    return asyncio.run(go())


MSH = "MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20261130120000+0000||ADT^A40^ADT_A39|{}|P|2.5.1"


def test_a_pushed_merge_of_people_nobody_knows_makes_no_one_from_nothing(tmp_path):
    store = _store(str(tmp_path / "i.db"))
    feed = FeedStore(store.db)
    full = "PID|1||U2^^^RCOMM^MR~9990000042^^^NHS^NH||Lloyd^Gwen||19700101|F"
    short = "PID|1||U3^^^RCOMM^MR"
    codes = _mllp_send(
        feed,
        "\r".join((MSH.format("A1"), "EVN|A40|20261130120000", full, "MRG|U1^^^RCOMM^MR")),
        "\r".join((MSH.format("A2"), "EVN|A40|20261130120000", short, "MRG|U4^^^RCOMM^MR")),
    )
    assert codes == ["AA", "AA"]  # stored, as the sender is owed
    report = asyncio.run(update_from([CommunityFeedSource(feed)], store))
    assert report.applied is not None
    # the survivor whose details came with the merge is registered; nobody else is made
    assert store.link("community", "U2") is not None
    assert [store.link("community", x) for x in ("U1", "U3", "U4")] == [None, None, None]
    assert store.counts()["persons"] == 1
    assert ("community", "U4") in report.applied.unknown
    store.close()


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Json) -> None:
    async with session.request(method, url, json=body) as resp:
        assert resp.status == 200, await resp.text()


def test_an_unreadable_change_listing_moves_no_watermark_and_is_applied_once_readable(tmp_path):
    store = _store(str(tmp_path / "i.db"))
    app = community.create_app(seed=5, size=60, behaviour=Behaviour())
    new = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9990000050"}],
        "name": [{"family": "Pryce", "given": ["Ewan"]}],
        "gender": "male",
        "birthDate": "1949-09-09",
    }
    with run_app(app) as base:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                source = CommunitySource(session, base)
                await build_index([source], store)
                mark = store.setting(watermark_key("community"))
                await _call(session, "PUT", f"{base}/_admin/patients/NEW-9", new)
                await _call(session, "POST", f"{base}/_admin/faults", {"malformed_rate": 1.0})
                with pytest.raises(SourceBadPayload):
                    await update_from([source], store)
                assert store.setting(watermark_key("community")) == mark
                assert store.link("community", "NEW-9") is None
                await _call(session, "POST", f"{base}/_admin/faults", {"malformed_rate": 0.0})
                healed = await update_from([source], store)
                assert healed.listed == {"community": 1}
                assert store.link("community", "NEW-9") is not None

        asyncio.run(scenario())
    store.close()
