"""Attacks on the edges of the listing guarantees (a review's, on real simulators): a
closed case is retired by ``reconcile --fix`` (``HoldsCheck.holds`` reads it as the
listings do); a quiet source whose change listing carries a merge still moves its
watermark (an A40's survivor is not a second entry); a rebuild during which an update
links a new registration succeeds (only records linked before it began count as
lacking); a one-record read answering 500 fails a reconcile or rebuild as a source
error, the index as it was."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from carelink.errors import SourceError
from carelink.federation.build import build_index
from carelink.federation.update import reconcile
from carelink.simulators.base import Behaviour
from tests.adversarial.test_change_listing_cut import BOUND, KINDS, _stepper
from tests.federation.test_build import _store
from tests.support.servers import run_app

Json = dict[str, Any]


def _put(base: str, kind: str, local: str, patient: Json) -> None:
    async def go() -> None:
        at = "/fhir/Patient" if kind == "acute" else "/_admin/patients"
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{base}{at}/{local}", json=patient) as resp,
        ):
            assert resp.status in (200, 201), await resp.text()

    asyncio.run(go())


#: the community trust's HL7 v2 record has no closed state (PUT active false is ignored)
@pytest.mark.parametrize("kind", ["acute", "gp", "social-care"])
def test_reconcile_fix_retires_a_record_its_source_closed(database_url, kind):
    """A record the source closed (``active`` false, as the listing shows it: the
    council's CLOSED case) is one the source no longer holds; ``reconcile --fix`` retired
    it before 80d5564 and must still. The index holds it (the build lists it as it was)."""
    create, adapter, _, _ = KINDS[kind]
    store = _store(database_url)
    app = create(seed=5, size=40, behaviour=Behaviour())
    try:
        with run_app(app) as base:
            _stepper(adapter, base, kind, store)("build")
            local = store.local_ids(kind, "", 1)[0]
            _put(
                base,
                kind,
                local,
                {
                    "resourceType": "Patient",
                    "active": False,
                    "name": [{"family": "Closedcase", "given": ["Ann"]}],
                    "gender": "female",
                    "birthDate": "1961-06-01",
                },
            )

            async def fix() -> Any:
                async with aiohttp.ClientSession() as session:
                    source = adapter(session, base, kind, page_size=7)
                    return await asyncio.wait_for(reconcile(source, store, fix=True), BOUND)

            drift = asyncio.run(fix())
            assert drift.gone == 1, drift
            assert drift.unlisted == 0, drift
            assert store.link(kind, local) is None
    finally:
        store.close()
        store.db.dispose()


def _merged_into(survivor: str) -> Json:
    return {
        "resourceType": "Patient",
        "active": False,
        "link": [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor}"}}],
    }


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_quiet_source_with_a_merge_moves_its_watermark(database_url, kind):
    """Two records merged into a third while nothing else happens (no listing moves under
    any read). The update must move the watermark (``held_mark``: a read undisturbed), and
    the next update, from there, lists nothing. The community trust's change listing is
    HL7 v2 ADT: an A40 yields the survivor as it is now *and* the retired record
    (``adt_changes``), so a survivor named by two A40s (or by an A40 and its own A31) is
    listed twice by every read, undisturbed or not, and ``held_mark`` keeps the watermark
    where it was for good: every later update re-reads (three times) everything since."""
    from carelink.federation.update import watermark_key

    create, adapter, _, _ = KINDS[kind]
    store = _store(database_url)
    app = create(seed=5, size=40, behaviour=Behaviour())
    try:
        with run_app(app) as base:
            run = _stepper(adapter, base, kind, store)
            run("build")
            a, b, c = store.local_ids(kind, "", 3)
            _put(base, kind, a, _merged_into(c))
            _put(base, kind, b, _merged_into(c))
            mark = store.setting(watermark_key(kind))
            run("update")
            assert store.link(kind, a) is None
            assert store.link(kind, b) is None
            moved = store.setting(watermark_key(kind))
            assert moved != mark, "the watermark stayed where it was, with nothing moving"
    finally:
        store.close()
        store.db.dispose()


class _RegisteredWhileBuilt:
    """An adapter whose people listing, once read whole, is followed (still inside the
    build) by a registration at the source and an update of the live index that applies
    it: what a scheduled ``index update`` does while a long rebuild reads."""

    def __init__(self, inner: Any, base: str, store: Any) -> None:
        self.inner, self.base, self.store = inner, base, store
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def holds(self, local_id: str) -> bool:
        return await self.inner.holds(local_id)

    def changed_since(self, instant: str) -> Any:
        return self.inner.changed_since(instant)

    async def people(self) -> Any:
        from carelink.federation.update import update_from

        async for p in self.inner.people():
            yield p
        async with aiohttp.ClientSession() as session:
            newborn = {
                "resourceType": "Patient",
                "name": [{"family": "Latecomer", "given": ["Ifan"]}],
                "gender": "male",
                "birthDate": "2026-12-01",
            }
            async with session.put(f"{self.base}/fhir/Patient/NEW00002", json=newborn) as r:
                assert r.status in (200, 201)
            await update_from([self.inner], self.store)
        assert self.store.link(self.name, "NEW00002") is not None  # the live index has them


def test_a_rebuild_with_an_update_applying_a_registration_meanwhile_succeeds(database_url):
    """A person registered (and applied to the live index by an update) after the
    rebuild's listing was read is not a record the listing *skipped*: the rebuild's
    watermark (set to when it began) has the next update list them again. Before
    d5b5b0d the rebuild swapped in and the next update added them back; now
    ``_none_skipped`` finds them in the live index, unstaged and held by the source, and
    fails the rebuild: a rebuild of a busy source with an updater running never
    completes."""
    from carelink.federation.update import update_from
    from carelink.simulators import acute
    from carelink.sources.fhir_rest import AcuteSource

    store = _store(database_url)
    app = acute.create_app(seed=5, size=40, behaviour=Behaviour())
    try:
        with run_app(app) as base:
            _stepper(AcuteSource, base, "acute", store)("build")

            async def rebuild() -> Any:
                async with aiohttp.ClientSession() as session:
                    inner = AcuteSource(session, base, "acute", page_size=7)
                    source = _RegisteredWhileBuilt(inner, base, store)
                    return await asyncio.wait_for(build_index([source], store), BOUND)

            try:
                asyncio.run(rebuild())
            except SourceError as exc:
                pytest.fail(f"the rebuild failed: {exc}")

            async def update() -> Any:
                async with aiohttp.ClientSession() as session:
                    return await update_from([AcuteSource(session, base, "acute")], store)

            asyncio.run(update())
            assert store.link("acute", "NEW00002") is not None
    finally:
        store.close()
        store.db.dispose()


class _OneReadFails:
    """The acute EPR, its one-Patient read (``GET /fhir/Patient/{id}``) answering 500."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and path.count("/") == 3
            and path.startswith("/fhir/Patient/")
        ):
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return None
        return await self.app(scope, receive, send)


@pytest.mark.parametrize("step", ["reconcile", "rebuild"])
def test_a_holds_read_answering_500_fails_cleanly(database_url, step):
    """The source removes a person; asked of them alone it answers 500: reconcile --fix
    and a rebuild fail as a source error and the index keeps the person."""
    from carelink.federation.build import build_index
    from carelink.simulators import acute
    from carelink.sources.fhir_rest import AcuteSource

    store = _store(database_url)
    app = _OneReadFails(acute.create_app(seed=5, size=40, behaviour=Behaviour()))
    try:
        with run_app(app) as base:
            _stepper(AcuteSource, base, "acute", store)("build")
            gone = store.local_ids("acute", "", 1)[0]

            async def go() -> Any:
                async with aiohttp.ClientSession() as session:
                    async with session.delete(f"{base}/fhir/Patient/{gone}") as r:
                        assert r.status in (200, 204)
                    source = AcuteSource(session, base, "acute", page_size=7)
                    if step == "reconcile":
                        return await reconcile(source, store, fix=True)
                    return await build_index([source], store)

            with pytest.raises(SourceError):
                asyncio.run(go())
            assert store.link("acute", gone) is not None
    finally:
        store.close()
        store.db.dispose()
