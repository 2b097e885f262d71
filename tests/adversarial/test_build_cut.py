"""A build, an update or a fix cut off by its source leaves the live index as it was
(issue 15).

The guarantee: a build that cannot read a source to the end fails with a source
error and changes nothing a lookup can see; the index it was replacing stays
whole and served, and the next build that can read everything succeeds. The
attacks serve a real FHIR listing over HTTP whose records have all changed
since the live index was built (so any part of the failed build that reached
the live tables shows), and cut it off on its first or last page: a server
error, a page the server no longer has (404, 410), a page whose JSON stops half
way, a connection dropped in the middle of a page, and a next link that leads
back to the first page.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from carelink.errors import SourceError
from carelink.federation.build import build_index
from carelink.federation.update import reconcile, update_from, watermark_key
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.social_care import SocialCareSource
from tests.federation.test_build import _store, _stored
from tests.support.kinds import kind_route
from tests.support.servers import run_app

Json = dict[str, Any]
PAGES, PER_PAGE = 3, 30


def nhs_number(n: int) -> str:
    """The ``n``th valid NHS number from 943 000 000 (the modulus 11 check digit)."""
    while True:
        digits = f"{943_000_000 + n:09d}"
        total = sum(int(d) * (10 - i) for i, d in enumerate(digits))
        check = 11 - total % 11
        if check != 10:
            return digits + str(0 if check == 11 else check)
        n += 1_000_000  # a number whose check digit would be 10 is never issued


NUMBERS = [nhs_number(i) for i in range(PAGES * PER_PAGE)]


def _patient(i: int, family: str) -> Json:
    return {
        "resourceType": "Patient",
        "id": f"P{i}",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NUMBERS[i]}],
        "name": [{"family": family, "given": ["Rhian"]}],
        "gender": "female",
        "birthDate": f"19{40 + i % 50:02d}-0{1 + i % 9}-1{i % 10}",
        "address": [{"postalCode": "CF10 1AA"}],
    }


#: the cuts that are a status: a server error, and a next page the server no longer has
#: (a paging cursor that expired: 404 or 410)
STATUSES = {"status": 500, "page-not-found": 404, "page-gone": 410}


class Listing:
    """What the server lists: every patient under ``family``, and how (if at all) page
    ``cut`` fails: one of ``STATUSES``, "half-json" (a 200 whose JSON stops half way),
    "dropped" (the connection closed half way through the page) or "loop" (its next link
    leads back to the first page)."""

    def __init__(self) -> None:
        self.family = "Before"
        self.cut: int | None = None
        self.how = ""


def _page(base: str, listing: Listing, page: int) -> bytes:
    start = page * PER_PAGE
    more = f"{base}/Patient?page={page + 1}" if page + 1 < PAGES else None
    if listing.how == "loop" and page == listing.cut:
        more = f"{base}/Patient?page=0"  # back to the first page, for ever
    doc = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": more}] if more else [],
        "entry": [
            {"fullUrl": f"{base}/Patient/P{i}", "resource": _patient(i, listing.family)}
            for i in range(start, start + PER_PAGE)
        ],
    }
    return orjson.dumps(doc)


def _server(listing: Listing) -> Starlette:
    async def patients(request: Request) -> Response:
        base = str(request.base_url).rstrip("/") + "/fhir"
        page = int(request.query_params.get("page", "0"))
        body = _page(base, listing, page)
        if page != listing.cut or listing.how == "loop":
            return Response(body, media_type="application/fhir+json")
        if listing.how in STATUSES:
            return Response(b"", status_code=STATUSES[listing.how])
        if listing.how == "half-json":
            return Response(body[: len(body) // 2], media_type="application/fhir+json")

        async def half_then_gone() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            raise ConnectionResetError("the connection is dropped half way through a page")

        return StreamingResponse(half_then_gone(), media_type="application/fhir+json")

    return Starlette(routes=[kind_route("acute"), Route("/fhir/Patient", patients)])


#: seconds a build, update or fix may take here before the test fails (a listing read for
#: ever would otherwise hang it)
BOUND = 60


async def _build(store: Any, base: str) -> Any:
    async with aiohttp.ClientSession() as session:
        return await asyncio.wait_for(build_index([AcuteSource(session, base)], store), BOUND)


@pytest.mark.parametrize("cut", [0, PAGES - 1], ids=["first-page", "last-page"])
@pytest.mark.parametrize("how", [*STATUSES, "half-json", "dropped", "loop"])
def test_a_build_cut_off_by_its_source_leaves_the_live_index_as_it_was(database_url, how, cut):
    store = _store(database_url)
    listing = Listing()
    try:
        with run_app(_server(listing)) as base:
            assert asyncio.run(_build(store, base)).persons == PAGES * PER_PAGE
            live = _stored(store)

            listing.family, listing.cut, listing.how = "After", cut, how
            with pytest.raises(SourceError):
                asyncio.run(_build(store, base))
            assert _stored(store) == live  # not a row of the failed build in sight
            person = store.person_by_nhs(NUMBERS[0])
            assert person is not None
            assert person.family == "Before"

            listing.cut = None  # the source whole again: the next build goes through
            assert asyncio.run(_build(store, base)).persons == PAGES * PER_PAGE
            after = [store.person_by_nhs(n) for n in NUMBERS]
            assert all(p is not None and p.family == "After" for p in after)
    finally:
        store.close()
        store.db.dispose()


async def _update(store: Any, base: str) -> Any:
    async with aiohttp.ClientSession() as session:
        return await asyncio.wait_for(update_from([AcuteSource(session, base)], store), BOUND)


async def _reconcile(store: Any, base: str) -> Any:
    async with aiohttp.ClientSession() as session:
        fix = reconcile(AcuteSource(session, base), store, fix=True)
        return await asyncio.wait_for(fix, BOUND)


@pytest.mark.parametrize("cut", [0, PAGES - 1], ids=["first-page", "last-page"])
@pytest.mark.parametrize("how", [*STATUSES, "half-json", "dropped", "loop"])
@pytest.mark.parametrize("step", ["update", "reconcile-and-fix"])
def test_an_update_or_a_fix_cut_off_by_its_source_changes_nothing(database_url, step, how, cut):
    """The same cuts in the change listing an update reads, and in the whole listing a
    reconciliation with ``--fix`` compares the index with: the update fails and its
    watermark stays where it was (the next update lists the same changes again); the
    fix fails rather than retire everyone the listing did not reach."""
    store = _store(database_url)
    listing = Listing()
    run = _update if step == "update" else _reconcile
    try:
        with run_app(_server(listing)) as base:
            asyncio.run(_build(store, base))
            live, mark = _stored(store), store.setting(watermark_key("acute"))

            listing.family, listing.cut, listing.how = "After", cut, how
            with pytest.raises(SourceError):
                asyncio.run(run(store, base))
            assert _stored(store) == live
            assert store.setting(watermark_key("acute")) == mark

            listing.cut = None
            asyncio.run(run(store, base))
            after = [store.person_by_nhs(n) for n in NUMBERS]
            assert all(p is not None and p.family == "After" for p in after)
    finally:
        store.close()
        store.db.dispose()


class SecondPageGone:
    """A simulator whose listings' second page answers 404 while ``on`` (a paging link
    expired): any request past the first page (``_offset`` above 0, ``page`` above 1)."""

    def __init__(self, app: Any) -> None:
        self.app, self.on = app, False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        query = (
            dict(parse_qsl(scope.get("query_string", b"").decode()))
            if scope["type"] == "http"
            else {}
        )
        later = int(query.get("_offset", "0") or 0) > 0 or int(query.get("page", "1") or 1) > 1
        if self.on and later:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


SIMULATORS = {
    "acute": (acute.create_app, AcuteSource),
    "gp": (gp.create_app, GPConnectSource),
    "community": (community.create_app, CommunitySource),
    "social-care": (social_care.create_app, SocialCareSource),
}


@pytest.mark.parametrize("kind", sorted(SIMULATORS))
def test_no_adapter_takes_a_listing_page_answered_404_for_the_listings_end(tmp_path, kind):
    """Each adapter's listing, on its real simulator, two pages or more: with its second page
    answering 404 the build fails (it had swapped in the first page's people as the whole
    source), and the live index stays as it was."""
    create, adapter = SIMULATORS[kind]
    store = _store(str(tmp_path / "index.db"))
    app = SecondPageGone(create(seed=5, size=300, behaviour=Behaviour()))
    try:
        with run_app(app) as base:

            async def build() -> Any:
                async with aiohttp.ClientSession() as session:
                    source = adapter(session, base, kind, page_size=10)
                    return await build_index([source], store)

            whole = asyncio.run(build()).records[kind]
            assert whole > 10  # two pages or more
            live = _stored(store)
            app.on = True
            with pytest.raises(SourceError):
                asyncio.run(build())
            assert _stored(store) == live
    finally:
        store.close()
        store.db.dispose()
