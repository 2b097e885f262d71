"""Changes at each kind of source reach the gateway through ``carelink index update``,
without a rebuild: the four simulators run as real HTTP services, each changed over HTTP
and listing its changes in its own idiom (FHIR ``_lastUpdated``, HL7 v2 ADT events, GP
registration event messages, the council's change list); the index is a real SQLite
file; the gateway is a ``carelink serve`` process answering FHIR searches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.federation import UpdateReport
from carelink.federation.changes import record_of
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.offline import update_index_from
from carelink.settings import Settings
from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.sources.base import local_id_system
from carelink.storage import Database, IndexStore
from tests.support.procs import built_and_served, carelink
from tests.support.servers import run_app

pytestmark = pytest.mark.slow

SIZE = 120
SEED = 11
SIMULATORS = {"acute": acute, "gp": gp, "community": community, "social-care": social_care}
BIRTH = {
    "acute": "1941-03-05",
    "gp": "1952-07-19",
    "community": "1963-11-23",
    "social-care": "1974-01-30",
}


@dataclass(frozen=True)
class World:
    base: str  # the gateway's FHIR base
    sources: dict[str, str]  # simulator base URLs
    env: dict[str, str]
    db: Path

    def change(self, source: str, local: str, patient: dict[str, Any]) -> None:
        """Change one person at a running simulator, as its system would."""
        url = (
            f"{self.sources[source]}/fhir/Patient/{local}"
            if source == "acute"
            else f"{self.sources[source]}/_admin/patients/{local}"
        )
        r = httpx.put(url, json={**patient, "id": local}, timeout=10)
        assert r.status_code in (200, 201), r.text

    def delete(self, source: str, local: str) -> None:
        url = (
            f"{self.sources[source]}/fhir/Patient/{local}"
            if source == "acute"
            else f"{self.sources[source]}/_admin/patients/{local}"
        )
        assert httpx.delete(url, timeout=10).status_code == 204

    def update(self, *extra: str) -> str:
        """``carelink index update`` once; its output."""
        done = carelink(["index", "update", *extra], self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def update_here(self) -> UpdateReport:
        """What ``carelink index update`` does, called in this process (a process start
        costs seconds on a loaded machine; the command's own path is tested above)."""
        settings = Settings.from_env(self.env)
        db = Database(str(self.db))
        try:
            return asyncio.run(update_index_from(settings, IndexStore(db)))
        finally:
            db.dispose()

    def search(self, **params: str) -> list[dict[str, Any]]:
        """The Patients the gateway finds."""
        r = httpx.get(f"{self.base}/Patient", params=params, timeout=15)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]

    def by_nhs(self, nhs: str) -> list[dict[str, Any]]:
        return self.search(identifier=f"{NHS_NUMBER_SYSTEM}|{nhs}")

    def by_local(self, source: str, local: str) -> list[dict[str, Any]]:
        return self.search(identifier=f"{local_id_system(source)}|{local}")

    def held(self, source: str, n: int, alone: bool = False) -> list[tuple[str, str]]:
        """(local id, NHS number) of ``n`` records the index holds for ``source`` with one
        (``alone``: each the only record of its person, whose name is then the record's)."""
        db = Database(str(self.db))
        store = IndexStore(db)
        try:
            out = []
            for local in store.local_ids(source, "", 200):
                link = store.link(source, local)
                assert link is not None
                nhs = record_of(link).nhs_number
                if nhs and len(out) < n and (not alone or len(store.links_of(link.person_id)) == 1):
                    out.append((local, nhs))
            return out
        finally:
            store.close()
            db.dispose()


def number(k: int) -> str:
    """A valid NHS number no generated person has (the 999 test range is not generated)."""
    return next(
        n + str(d) for i in range(k, k + 40) if (d := check_digit(n := str(999_000_000 + i)))
    )


def patient(nhs: str | None, family: str, birth: str, postcode: str, **extra: Any) -> dict:
    ids = [{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else []
    return {
        "resourceType": "Patient",
        "identifier": ids + extra.pop("old", []),
        "name": [{"family": family, "given": ["Imogen"]}],
        "gender": "female",
        "birthDate": birth,
        "address": [{"line": ["4 Mill Lane"], "city": "Leeds", "postalCode": postcode}],
        **extra,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("index-changes")
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                run_app(sim.create_app(seed=SEED, size=SIZE, behaviour=Behaviour()))
            )
            for name, sim in SIMULATORS.items()
        }
        base, env, _ = built_and_served(stack, urls, tmp / "index.db")
        yield World(base, urls, env, tmp / "index.db")


def test_a_new_registration_at_each_source_is_found_after_an_update(world: World):
    new = {source: number(100 * i + 1) for i, source in enumerate(SIMULATORS)}
    for source, nhs in new.items():
        assert world.by_nhs(nhs) == []
        world.change(source, "NEW-1", patient(nhs, "Quenby", BIRTH[source], "LS6 2AB"))
    out = world.update()
    assert "index updated" in out
    for source, nhs in new.items():
        found = world.by_nhs(nhs)
        assert len(found) == 1, source
        assert found[0]["name"][0]["family"] == "Quenby", source
        assert world.by_local(source, "NEW-1")[0]["id"] == found[0]["id"], source


def test_a_changed_surname_and_address_at_each_source_is_found_after_an_update(world: World):
    moved = {source: world.held(source, 1, alone=True)[0] for source in SIMULATORS}
    before = {source: world.by_nhs(nhs)[0]["id"] for source, (_, nhs) in moved.items()}
    for source, (local, nhs) in moved.items():
        world.change(source, local, patient(nhs, f"Ashdown{len(source)}", BIRTH[source], "YO1 7HH"))
    listed = world.update_here().listed
    # each source lists its change; a change of the test before may be listed again, as
    # listings overlap by federation.update.OVERLAP on purpose (applying it twice is a no-op)
    assert all(listed[source] >= 1 for source in moved), listed
    for source, (local, _) in moved.items():
        found = world.search(family=f"Ashdown{len(source)}", birthdate=BIRTH[source])
        assert [p["id"] for p in found] == [before[source]], source  # the same person, moved
        assert [p["id"] for p in world.by_local(source, local)] == [before[source]], source


def test_a_merge_at_each_source_retires_the_merged_record_after_an_update(world: World):
    survivors = {source: world.held(source, 2)[1] for source in SIMULATORS}
    for source in SIMULATORS:  # a temporary registration without an NHS number
        world.change(source, "TEMP-7", patient(None, "Pennant", BIRTH[source], "HG1 1AA"))
    world.update_here()
    temporary = {source: world.by_local(source, "TEMP-7")[0]["id"] for source in SIMULATORS}
    for source, (local, _) in survivors.items():
        merged = {"type": "replaced-by", "other": {"reference": f"Patient/{local}"}}
        world.change(
            source,
            "TEMP-7",
            patient(None, "Pennant", BIRTH[source], "HG1 1AA", active=False, link=[merged]),
        )
    world.update_here()
    for source, (local, nhs) in survivors.items():
        assert world.by_local(source, "TEMP-7") == [], source
        assert len(world.by_nhs(nhs)) == 1, source
        assert world.by_local(source, local), source
        # a client holding the retired person's id is pointed to the survivor, not told 404
        r = httpx.get(f"{world.base}/Patient/{temporary[source]}", timeout=15)
        assert r.status_code == 200, (source, r.text)
        assert r.json()["active"] is False
        assert r.json()["link"] == [
            {"other": {"reference": f"Patient/{world.by_nhs(nhs)[0]['id']}"}, "type": "replaced-by"}
        ], source


def test_a_person_gone_from_a_source_and_a_superseded_nhs_number_reach_the_gateway(
    world: World,
):
    gone = {source: number(100 * i + 31) for i, source in enumerate(SIMULATORS)}
    for source, nhs in gone.items():
        world.change(source, "GONE-3", patient(nhs, "Tolley", BIRTH[source], "BD1 1AA"))
    old, new = number(900), number(950)
    world.change("gp", "PDS-1", patient(old, "Marwood", "1980-02-02", "HX1 1AA"))
    world.update_here()
    assert all(world.by_nhs(nhs) for nhs in gone.values())
    assert world.by_nhs(old)
    for source in SIMULATORS:
        world.delete(source, "GONE-3")
    superseded = [{"system": NHS_NUMBER_SYSTEM, "value": old, "use": "old"}]
    world.change("gp", "PDS-1", patient(new, "Marwood", "1980-02-02", "HX1 1AA", old=superseded))
    out = world.update("--reconcile")
    for source, nhs in gone.items():
        assert world.by_nhs(nhs) == [], source
        assert f"drift at {source}:" in out
    assert world.by_nhs(old) == []
    assert len(world.by_nhs(new)) == 1
    # the update itself removed them: nothing drifted at any source
    assert out.count("0 not in the index, 0 no longer listed") == len(SIMULATORS), out
