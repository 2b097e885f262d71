"""An update whose change listing is cut off leaves the index and its watermark as they
were, and the next whole update applies every change (issue 15).

Each kind of source's change listing, on its real simulator over real HTTP: the acute
EPR's ``_lastUpdated`` search, the GP's registration event messages, the community
trust's HL7 v2 ADT events and the council's change list. Twelve people change, and the
listing is read five to a page; a wrapper cuts its second page: 404 (a paging link that
expired), 500, the connection dropped half way through, half the body and no more, a page
past the end (the source's own empty page, its total unchanged) and a second page that
is the first again (a source that lost its place). The update must fail as a source
error; the live index and the watermark stay as they were; the uncut update that follows
lists and applies all twelve changes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
import pytest

from carelink.errors import SourceError
from carelink.federation.build import build_index
from carelink.federation.changes import record_of
from carelink.federation.update import OVERLAP, reconcile, update_from, watermark_key
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.social_care import SocialCareSource
from carelink.storage import IndexStore
from tests.federation.test_build import _store, _stored
from tests.support.servers import run_app

Json = dict[str, Any]
PER_PAGE, CHANGED = 5, 12
#: seconds an update may take here before the test fails (a listing read for ever)
BOUND = 60

#: per kind: the simulator, the adapter, the change listing's path (and the query
#: parameter that tells it from the people listing on the same path)
KINDS: dict[str, tuple[Any, Any, str, str]] = {
    "acute": (acute.create_app, AcuteSource, "/fhir/Patient", "_lastUpdated"),
    "gp": (gp.create_app, GPConnectSource, "/Bundle", "_lastUpdated"),
    "community": (community.create_app, CommunitySource, "/hl7/changes", "since"),
    "social-care": (social_care.create_app, SocialCareSource, "/api/v2/persons/changes", "since"),
}
CUTS = ["not-found", "server-error", "dropped", "half-body", "empty-page", "first-again"]


class SecondPageCut:
    """A simulator whose listing at ``path`` (with ``marker`` among its parameters, or
    without any ``marker`` when it starts with ``!``) has its second page (``page=2``, or
    ``_offset`` one ``_count`` in) cut by ``how`` while ``how`` is set. "one-gone" deletes
    the person ``gone`` (a DELETE path) just before the second page is answered."""

    def __init__(self, app: Any, path: str, marker: str) -> None:
        self.app, self.path, self.marker = app, path, marker
        self.how: str | None = None
        self.gone = ""

    def _second(self, query: dict[str, str]) -> bool:
        absent = self.marker.startswith("!")
        if (self.marker.lstrip("!") in query) == absent:
            return False
        if "page" in query:
            return query["page"] == "2"
        return "_offset" in query and query["_offset"] == query.get("_count")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.how is None or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope["query_string"].decode()))
        if not self._second(query):
            return await self.app(scope, receive, send)
        if self.how in ("not-found", "server-error"):
            status = 404 if self.how == "not-found" else 500
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return None
        if self.how in ("one-gone", "one-gone-one-new"):
            delete = {**scope, "method": "DELETE", "path": self.gone, "query_string": b""}
            done, _ = await _answer(self.app, delete, _no_body)
            assert done["status"] == 204, done
            if self.how == "one-gone-one-new":  # and one registered: the total as it was
                await _put(self.app, scope, self.gone.rsplit("/", 1)[0] + "/NEW00001", NEWBORN)
            self.how = None  # once
            return await self.app(scope, receive, send)
        if self.how in ("empty-page", "first-again"):
            far = self.how == "empty-page"
            if "page" in query:
                query["page"] = "100000" if far else "1"
            else:
                query["_offset"] = "100000" if far else "0"
            moved = {**scope, "query_string": urlencode(query).encode()}
            return await self.app(moved, receive, send)
        start, body = await _answer(self.app, scope, receive)
        half = body[: len(body) // 2]
        if self.how == "half-body":
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(half)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": half})
            return None
        await send(start)  # dropped: the whole body announced, half sent, then gone
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise ConnectionResetError("the connection is dropped half way through a page")


#: a person registered at a source while its people are listed
NEWBORN: Json = {
    "resourceType": "Patient",
    "name": [{"family": "Newcomer", "given": ["Ifan"]}],
    "gender": "male",
    "birthDate": "2026-12-01",
}


async def _put(app: Any, scope: Any, path: str, patient: Json) -> None:
    """``patient`` PUT at ``path`` of ``app`` (made or changed there)."""
    body = orjson.dumps({**patient, "id": path.rsplit("/", 1)[1]})
    sent = False

    async def receive() -> Json:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    put = {
        **scope,
        "method": "PUT",
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    done, _ = await _answer(app, put, receive)
    assert done["status"] in (200, 201), done


async def _no_body() -> Json:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _answer(app: Any, scope: Any, receive: Any) -> tuple[Json, bytes]:
    """The inner app's answer to one request: its start message and whole body."""
    start: Json = {}
    parts: list[bytes] = []

    async def keep(message: Json) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            parts.append(message.get("body", b""))

    await app(scope, receive, keep)
    return start, b"".join(parts)


def _changed(store: IndexStore, kind: str) -> dict[str, Json]:
    """``CHANGED`` people of ``kind`` the index holds, each as they will be changed (a new
    family name, their NHS number kept)."""
    out: dict[str, Json] = {}
    for n, local in enumerate(store.local_ids(kind, "", CHANGED)):
        link = store.link(kind, local)
        assert link is not None
        nhs = record_of(link).nhs_number
        out[local] = {
            "resourceType": "Patient",
            "id": local,
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else [],
            "name": [{"family": f"Cutaway{n:02d}", "given": ["Rhian"]}],
            "gender": "female",
            "birthDate": "1961-06-01",
        }
    assert len(out) == CHANGED
    return out


def _family(store: IndexStore, kind: str, local: str) -> str | None:
    link = store.link(kind, local)
    return None if link is None else str(record_of(link).patient["name"][0]["family"])


def _stepper(adapter: Any, base: str, kind: str, store: IndexStore) -> Any:
    """``run(step, page_size)``: a build (``"build"``) or an update of ``store`` from the
    source at ``base``, read ``page_size`` to a page, bounded in time."""

    def run(step: str, page_size: int = 1000) -> Any:
        async def go() -> Any:
            async with aiohttp.ClientSession() as session:
                source = adapter(session, base, kind, page_size=page_size)
                if step == "build":
                    return await asyncio.wait_for(build_index([source], store), BOUND)
                return await asyncio.wait_for(update_from([source], store), BOUND)

        return asyncio.run(go())

    return run


def _change(base: str, kind: str, people: dict[str, Json]) -> None:
    """Each of ``people`` changed at the source, as the source takes a change."""

    async def go() -> None:
        at = "/fhir/Patient" if kind == "acute" else "/_admin/patients"
        async with aiohttp.ClientSession() as session:
            for local, patient in people.items():
                async with session.put(f"{base}{at}/{local}", json=patient) as resp:
                    assert resp.status in (200, 201), await resp.text()

    asyncio.run(go())


@pytest.mark.parametrize("how", CUTS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_update_whose_change_listing_is_cut_moves_no_watermark(database_url, kind, how):
    create, adapter, path, marker = KINDS[kind]
    store = _store(database_url)
    app = SecondPageCut(create(seed=5, size=300, behaviour=Behaviour()), path, marker)
    try:
        with run_app(app) as base:
            run = _stepper(adapter, base, kind, store)
            run("build")
            people = _changed(store, kind)
            _change(base, kind, people)
            live, mark = _stored(store), store.setting(watermark_key(kind))
            assert mark is not None

            app.how = how
            with pytest.raises(SourceError):
                run("update", PER_PAGE)
            assert store.setting(watermark_key(kind)) == mark
            assert _stored(store) == live

            app.how = None  # the listing whole again: the next update applies every change
            report = run("update", PER_PAGE)
            assert report.listed == {kind: CHANGED}
            assert {local: _family(store, kind, local) for local in people} == {
                local: p["name"][0]["family"] for local, p in people.items()
            }
            assert store.setting(watermark_key(kind)) != mark
    finally:
        store.close()
        store.db.dispose()


#: per kind: the people listing's path and how it is told from the change listing there
PEOPLE = {
    "acute": ("/fhir/Patient", "!_lastUpdated"),
    "gp": ("/Patient", "!identifier"),
    "community": ("/hl7/patients", "page"),
    "social-care": ("/api/v2/persons", "page"),
}


@pytest.mark.parametrize("how", ["empty-page", "first-again", "one-gone"])
@pytest.mark.parametrize("step", ["build", "reconcile-and-fix"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_people_listing_short_of_its_total_or_moved_under_the_read_fails(
    database_url, kind, step, how
):
    """The people listing's second page past the end (the source's own empty page, its
    total still the whole listing's), the first page again, or a person of the first page
    deleted as the second is asked for (offset paging then skips the person who moves up
    onto the first page, and the total changes between pages): a build fails and swaps
    nothing in; ``reconcile --fix`` fails rather than retire the person it skipped; the
    run after reads the listing whole."""
    create, adapter, _, _ = KINDS[kind]
    path, marker = PEOPLE[kind]
    store = _store(database_url)
    app = SecondPageCut(create(seed=5, size=300, behaviour=Behaviour()), path, marker)
    try:
        with run_app(app) as base:

            async def run(page_size: int = 1000) -> Any:
                async with aiohttp.ClientSession() as session:
                    source = adapter(session, base, kind, page_size=page_size)
                    if step == "build":
                        return await asyncio.wait_for(build_index([source], store), BOUND)
                    work = reconcile(source, store, fix=True)
                    return await asyncio.wait_for(work, BOUND)

            async def first_listed() -> str:
                """Read whole: a listing left half read may still be asking for its
                second page when the cut is set."""
                async with aiohttp.ClientSession() as session:
                    source = adapter(session, base, kind, page_size=PER_PAGE)
                    listed = [str(p.local_id) async for p in source.people()]
                    return listed[0]

            async def build() -> Any:
                async with aiohttp.ClientSession() as session:
                    source = adapter(session, base, kind)
                    return await asyncio.wait_for(build_index([source], store), BOUND)

            held = asyncio.run(build()).records[kind]
            assert held > 2 * PER_PAGE
            live = _stored(store)
            first = asyncio.run(first_listed())
            at = "/fhir/Patient" if kind == "acute" else "/_admin/patients"
            app.how, app.gone = how, f"{at}/{first}"
            with pytest.raises(SourceError):
                asyncio.run(run(PER_PAGE))
            assert _stored(store) == live

            app.how = None  # whole again: the next run reads everyone the source holds
            after = asyncio.run(run(PER_PAGE))
            left = held - 1 if how == "one-gone" else held
            if step == "build":
                assert after.records[kind] == left
            else:
                assert (after.listed, after.gone) == (left, held - left)
            if how == "one-gone":
                assert store.link(kind, first) is None
    finally:
        store.close()
        store.db.dispose()


class ChangedAgainMidRead(SecondPageCut):
    """A simulator that, just before the second page of the change listing is answered,
    changes the person ``again`` once more (a PUT of ``body`` at ``gone``'s path): the
    listing, latest change first-to-last, moves that person from the first page to its
    end, and every person after them up one place, so the person the first page ended
    before is now on the first page, which was read already."""

    def __init__(self, app: Any, path: str, marker: str) -> None:
        super().__init__(app, path, marker)
        self.body: Json = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.how != "changed-again" or scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope["query_string"].decode()))
        if not self._second(query):
            return await self.app(scope, receive, send)
        await _put(self.app, scope, self.gone, self.body)
        self.how = None  # once
        return await self.app(scope, receive, send)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_person_changed_again_while_the_changes_are_read_costs_no_other_change(
    database_url, kind
):
    """The guarantee: **every change a source lists after the watermark is applied by
    this update or the next**, however the listing moves while it is read. Twelve people
    change; more than two seconds later (past the watermark's overlap) an update reads
    their changes five to a page, and as it asks for the second page the first person
    listed changes again. Offset paging then skips the person the listing moved onto the
    first page. Whatever this update does, after it and one more update (nothing
    changing), every person holds their latest change; and as the update reads the
    listing again at once while a read lists someone twice, this one update applies
    every change and moves its watermark when the second read is undisturbed."""
    create, adapter, path, marker = KINDS[kind]
    store = _store(database_url)
    app = ChangedAgainMidRead(create(seed=5, size=300, behaviour=Behaviour()), path, marker)
    try:
        with run_app(app) as base:
            run = _stepper(adapter, base, kind, store)
            at = "/fhir/Patient" if kind == "acute" else "/_admin/patients"
            run("build")
            people = _changed(store, kind)
            _change(base, kind, people)
            time.sleep(OVERLAP.total_seconds() + 0.5)  # the changes older than the overlap
            first = next(iter(people))
            again = {**people[first], "name": [{"family": "Twicechanged", "given": ["Rhian"]}]}
            app.how, app.gone, app.body = "changed-again", f"{at}/{first}", again
            mark = store.setting(watermark_key(kind))
            run("update", PER_PAGE)  # reads the moved listing again, undisturbed now
            assert app.how is None, "the listing was never disturbed"
            people[first] = again
            wanted = {local: p["name"][0]["family"] for local, p in people.items()}
            assert {local: _family(store, kind, local) for local in people} == wanted
            assert store.setting(watermark_key(kind)) != mark  # and its watermark moved
            run("update", PER_PAGE)  # and the next changes nothing
            assert {local: _family(store, kind, local) for local in people} == wanted
    finally:
        store.close()
        store.db.dispose()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_reconcile_whose_listing_skips_a_person_retires_no_one_the_source_holds(
    database_url, kind
):
    """The guarantee: **``reconcile --fix`` never retires a record its source still
    holds.** As the second page of the people listing is asked for, the first person
    listed is removed at the source and a new one registered: offset paging skips the
    person who moves up onto the first page, and the total is as it was, so the listing
    itself shows nothing wrong. The skipped person stays in the index (the source, asked
    of them alone, holds them), and the quiet reconcile after leaves the index holding
    exactly whom the source holds."""
    create, adapter, _, _ = KINDS[kind]
    path, marker = PEOPLE[kind]
    store = _store(database_url)
    app = SecondPageCut(create(seed=5, size=300, behaviour=Behaviour()), path, marker)
    try:
        with run_app(app) as base:

            async def fix() -> Any:
                async with aiohttp.ClientSession() as session:
                    source = adapter(session, base, kind, page_size=PER_PAGE)
                    return await asyncio.wait_for(reconcile(source, store, fix=True), BOUND)

            _stepper(adapter, base, kind, store)("build")
            before = _listed(adapter, base, kind)
            at = "/fhir/Patient" if kind == "acute" else "/_admin/patients"
            app.how, app.gone = "one-gone-one-new", f"{at}/{before[0]}"
            disturbed = asyncio.run(fix())
            assert app.how is None, "the listing was never disturbed"
            held = set(_listed(adapter, base, kind))
            assert len(held) == len(before)  # one gone, one new: the total as it was
            missing = sorted(h for h in held - {"NEW00001"} if store.link(kind, h) is None)
            assert not missing, (missing, disturbed)
            assert disturbed.unlisted + disturbed.gone >= 1  # the listing did skip one

            quiet = asyncio.run(fix())  # retires the person removed (read before that)
            assert (quiet.gone, quiet.unlisted) == (1, 0)
            indexed = set(store.local_ids(kind, "", 10_000))
            assert indexed == held
    finally:
        store.close()
        store.db.dispose()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_rebuild_whose_listing_skips_a_person_the_source_holds_fails(database_url, kind):
    """The same listing, moved the same way under a rebuild: the rebuild fails as a source
    error and swaps nothing in (it would have dropped from the index a person the source
    holds, and no update lists someone who did not change), and the rebuild after holds
    exactly whom the source holds."""
    create, adapter, _, _ = KINDS[kind]
    path, marker = PEOPLE[kind]
    store = _store(database_url)
    app = SecondPageCut(create(seed=5, size=300, behaviour=Behaviour()), path, marker)
    try:
        with run_app(app) as base:
            run = _stepper(adapter, base, kind, store)
            run("build")
            live = _stored(store)
            at = "/fhir/Patient" if kind == "acute" else "/_admin/patients"

            first = _listed(adapter, base, kind)[0]
            app.how, app.gone = "one-gone-one-new", f"{at}/{first}"
            with pytest.raises(SourceError):
                asyncio.run(_build_paged(adapter, base, kind, store))
            assert app.how is None, "the listing was never disturbed"
            assert _stored(store) == live

            asyncio.run(_build_paged(adapter, base, kind, store))
            assert set(store.local_ids(kind, "", 10_000)) == set(_listed(adapter, base, kind))
    finally:
        store.close()
        store.db.dispose()


def _listed(adapter: Any, base: str, kind: str) -> list[str]:
    """The local ids of everyone the source lists now, read whole."""

    async def go() -> list[str]:
        async with aiohttp.ClientSession() as session:
            source = adapter(session, base, kind)
            return [str(p.local_id) async for p in source.people()]

    return asyncio.run(go())


async def _build_paged(adapter: Any, base: str, kind: str, store: IndexStore) -> Any:
    async with aiohttp.ClientSession() as session:
        source = adapter(session, base, kind, page_size=PER_PAGE)
        return await asyncio.wait_for(build_index([source], store), BOUND)
