"""``update_from`` and ``reconcile`` against a real acute simulator and adapter."""

from __future__ import annotations

import asyncio

import aiohttp

from carelink.federation.build import build_index
from carelink.federation.update import reconcile, update_from, watermark_key
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.simulators import acute
from carelink.simulators.base import Behaviour
from carelink.sources.fhir_rest import AcuteSource
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
    app = acute.create_app(seed=9, size=SIZE, behaviour=Behaviour())
    with run_app(app) as base:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                source = AcuteSource(session, base)
                await build_index([source], store)
                await _put(session, base, _patient("NEW2", _number(100), "Okafor"))
                drift = await reconcile(source, store)
                assert (drift.missing, drift.changed, drift.fixed) == (1, 0, None)
                fixed = await reconcile(source, store, fix=True)
                assert fixed.fixed is not None
                assert store.link("acute", "NEW2") is not None
                again = await reconcile(source, store)
                assert (again.missing, again.changed, again.gone) == (0, 0, 0)

        asyncio.run(scenario())
    store.close()
