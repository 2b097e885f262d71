"""Outside data without NHS numbers, held by two sources, links into one person each.

The vendored Synthea Bulk export is split across the acute and GP simulators
as two real systems would hold it: both have every Patient (the GP under its
own ids, with realistic drift: a shortened given name, no address, another
phone number, and one death it has not been told about), and the clinical
resources are divided between them. No source has an NHS number, so every
link is demographic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.federation.patient_merge import CONFLICT_URL
from tests.support.files_system import files_system
from tests.support.schema import problems
from tests.support.shared import SYNTHEA
from tests.support.split import GP_SYSTEM, LINKS, gp_copy


def _resources() -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(SYNTHEA.glob("*.ndjson"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """The acute trust's and the GP's data folders."""
    acute_dir, gp_dir = tmp_path / "acute", tmp_path / "gp"
    acute_dir.mkdir()
    gp_dir.mkdir()
    return acute_dir, gp_dir


def _split(acute_dir: Path, gp_dir: Path) -> tuple[dict[str, str], set[str], str]:
    """Write the two sources' files; return acute id -> GP id, the dead, one GP-unaware death."""
    everything = _resources()
    patients = [r for r in everything if r["resourceType"] == "Patient"]
    gp_id = {p["id"]: f"G{n}" for n, p in enumerate(patients)}
    dead = {p["id"] for p in patients if "deceasedDateTime" in p}
    unaware = sorted(dead)[0]
    acute_lines = [json.dumps(p) for p in patients]
    gp_lines = []
    for n, p in enumerate(patients):
        gp = gp_copy(n, p)
        if p["id"] == unaware:
            gp.pop("deceasedDateTime")
        gp_lines.append(json.dumps(gp))
    clinical = [r for r in everything if r["resourceType"] != "Patient"]
    for n, r in enumerate(clinical):
        if n % 2 == 0:
            acute_lines.append(json.dumps(r))
            continue
        for key in LINKS:
            link = r.get(key)
            if isinstance(link, dict) and "reference" in link:
                local = link["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:")
                link["reference"] = f"Patient/{gp_id.get(local, local)}"
                break
        gp_lines.append(json.dumps(r))
    (acute_dir / "acute.ndjson").write_text("\n".join(acute_lines) + "\n")
    (gp_dir / "gp.ndjson").write_text("\n".join(gp_lines) + "\n")
    return gp_id, dead, unaware


@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present")
def test_synthea_people_held_by_two_sources_without_nhs_numbers_are_one_person_each(tmp_path):
    acute_dir, gp_dir = _folders(tmp_path)
    gp_id, dead, unaware = _split(acute_dir, gp_dir)
    with (
        files_system({"acute": acute_dir, "gp": gp_dir}, tmp_path) as fs,
        httpx.Client(timeout=30) as client,
    ):
        built, base = fs.built, fs.base
        assert f"index built: {len(gp_id)} persons;" in built.stdout
        assert f"by demographics {2 * len(gp_id)};" in built.stdout
        assert "{'deceased': 1}" in built.stdout  # the death the GP was not told of
        for local, gp_local in gp_id.items():
            found = client.get(
                f"{base}/Patient",
                params={"identifier": f"https://carelink.example/Id/acute|{local}"},
            ).json()
            assert found["total"] == 1, local
            pid = found["entry"][0]["resource"]["id"]
            patient = client.get(f"{base}/Patient/{pid}").json()
            assert problems(patient) == []
            assert sorted(lk["other"]["reference"] for lk in patient["link"]) == [
                f"Patient/acute-{local}",
                f"Patient/gp-{gp_local}",
            ]
            assert {"system": GP_SYSTEM, "value": gp_local} in patient["identifier"]
            assert ("deceasedDateTime" in patient) == (local in dead), local
            conflicts = [e for e in patient.get("extension", []) if e["url"] == CONFLICT_URL]
            assert bool(conflicts) == (local == unaware), local
        page = client.get(f"{base}/Patient/{pid}/$everything?_count=1000").json()
        sources = {
            e["resource"]["meta"]["source"]
            for e in page["entry"]
            if e["search"]["mode"] == "match" and e["resource"]["id"] != pid
        }
        # The GP is a GP Connect provider, which finds patients by NHS number only, and
        # Synthea's people have none: linked as they are, their GP part is not asked for,
        # and the answer says so rather than leaving a silent gap.
        assert sources == {"urn:carelink:source:acute"}
        told = json.dumps([e for e in page["entry"] if e["search"]["mode"] == "outcome"])
        assert "gp" in told
        assert "no traced NHS number" in told


@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present")
def test_an_outside_person_who_moves_at_one_source_stays_one_person_with_one_id(tmp_path):
    """The incremental update re-links with the build's rules on data we did not make: a
    Synthea person who moves house at the acute trust (the GP, with no NHS number for
    either, still has the old details) is still one person, under the same id, after
    ``carelink index update``, shown at the new address; nobody else is touched."""
    from tests.support.procs import carelink

    acute_dir, gp_dir = _folders(tmp_path)
    gp_id, _, _ = _split(acute_dir, gp_dir)
    with (
        files_system({"acute": acute_dir, "gp": gp_dir}, tmp_path) as fs,
        httpx.Client(timeout=30) as client,
    ):
        local = sorted(gp_id)[1]

        def person(acute_local: str) -> dict[str, Any]:
            found = client.get(
                f"{fs.base}/Patient",
                params={"identifier": f"https://carelink.example/Id/acute|{acute_local}"},
            ).json()
            assert found["total"] == 1, acute_local
            return dict(found["entry"][0]["resource"])

        before = {a: person(a)["id"] for a in gp_id}
        acute = fs.sources["acute"]
        patient = client.get(f"{acute}/fhir/Patient/{local}").json()
        patient["address"] = [{"line": ["2 New Street"], "postalCode": "YO1 7HH"}]
        patient["telecom"] = [{"system": "phone", "value": "01904 000000"}]
        assert client.put(f"{acute}/fhir/Patient/{local}", json=patient).status_code in (200, 201)
        updated = carelink(["index", "update"], fs.env)
        assert updated.returncode == 0, updated.stderr
        after = person(local)
        assert after["id"] == before[local]  # still the same person ...
        assert sorted(lk["other"]["reference"] for lk in after["link"]) == [
            f"Patient/acute-{local}",
            f"Patient/gp-{gp_id[local]}",
        ]  # ... still held by both sources
        assert "YO1 7HH" in json.dumps(after.get("address", []))
        assert {a: person(a)["id"] for a in gp_id if a != local} == {
            a: pid for a, pid in before.items() if a != local
        }


@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present")
def test_outside_people_built_in_writer_processes_are_the_index_built_in_one(tmp_path):
    """The split Synthea export, read over HTTP from the simulators, built in this process
    and again in two writer processes (as a build of 50,000 records or more is made):
    the same persons, links and near misses, row for row, and every Synthea person one
    person of two records."""
    import asyncio
    from datetime import UTC, datetime

    import aiohttp
    import sqlalchemy as sa

    from carelink.assembly import ADAPTERS
    from carelink.federation.build import BuildReport, build_index
    from carelink.storage import Database, IndexStore
    from carelink.storage.tables import links, persons, review

    acute_dir, gp_dir = _folders(tmp_path)
    gp_id, _, _ = _split(acute_dir, gp_dir)

    async def build(store: IndexStore, urls: dict[str, str], writers: int) -> BuildReport:
        sessions = [aiohttp.ClientSession() for _ in urls]
        try:
            sources = [
                ADAPTERS[name](s, url, name)
                for s, (name, url) in zip(sessions, urls.items(), strict=True)
            ]
            now = lambda: datetime(2026, 1, 1, tzinfo=UTC)  # noqa: E731
            return await build_index(sources, store, now=now, writers=writers, processes_from=0)
        finally:
            for s in sessions:
                await s.close()

    def stored(store: IndexStore) -> list[list[tuple]]:
        with store.db.engine.connect() as conn:
            return [
                [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                for t in (persons, links, review)
            ]

    with files_system({"acute": acute_dir, "gp": gp_dir}, tmp_path, serve=False) as fs:
        key = Database(str(tmp_path / "index.db"))
        with key.engine.connect() as conn:  # the CLI's person-id key, so ids compare
            settings = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM index_settings"))]
        key.dispose()
        made = []
        for writers in (1, 2):
            db = Database(str(tmp_path / f"built-{writers}.db"))
            db.migrate()
            with db.engine.begin() as conn:
                for k, v in settings:
                    conn.execute(
                        sa.text("INSERT INTO index_settings (key, value) VALUES (:k, :v)"),
                        {"k": k, "v": v},
                    )
            store = IndexStore(db)
            report = asyncio.run(build(store, fs.sources, writers))
            # the second build's parts were made in writer processes (each reports its peak)
            assert (report.writer_peak_mb is not None) == (writers == 2)
            made.append(stored(store))
            store.close()
            db.dispose()
    one, two = made
    assert one == two
    people, link_rows, _ = two
    assert len(people) == len(gp_id)
    assert len(link_rows) == 2 * len(gp_id)
    method = list(links.c.keys()).index("method")
    assert {r[method] for r in link_rows} == {"demographic"}
