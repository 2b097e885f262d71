"""The commands that read sources, against a source URL that serves the wrong kind of
system: one line naming the source, its URL and what answered there; exit code 4."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.integration.conftest import SEED, SIZE, System
from tests.support.gateways import copy_index
from tests.support.procs import carelink, free_port, running

FOUND = {"community": "an HL7 v2 over HTTP endpoint", "acute": "a FHIR R4 server"}
EXPECTED = {"acute": "a FHIR R4 server", "community": "an HL7 v2 over HTTP endpoint"}


def _wrong(system: System, name: str, actually: str) -> dict[str, str]:
    wrong = {**system.sources, name: system.sources[actually]}
    return {**system.env, "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in wrong.items())}


def _one_line(stderr: str, name: str, actually: str, system: System) -> None:
    lines = stderr.strip().splitlines()
    assert lines == [
        f"carelink: source error: source {name!r} at {system.sources[actually]}: "
        f"not {EXPECTED[name]} (found {FOUND[actually]})"
    ], stderr


@pytest.mark.parametrize(("name", "actually"), [("acute", "community"), ("community", "acute")])
def test_index_build_names_a_wrong_kind_of_source_and_stores_nothing(
    system: System, tmp_path, name: str, actually: str
):
    db = tmp_path / "index.db"
    r = carelink(
        ["index", "build"], {**_wrong(system, name, actually), "CARELINK_DATABASE_URL": str(db)}
    )
    assert r.returncode == 4, r.stdout + r.stderr
    _one_line(r.stderr, name, actually, system)
    assert "index built" not in r.stdout
    with sqlite3.connect(db) as conn:  # nothing half-built was stored
        assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)


def test_index_update_names_a_wrong_kind_of_source_and_changes_nothing(system: System, tmp_path):
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "index.db")
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT count(*) FROM persons").fetchone()
    env = {**_wrong(system, "acute", "community"), "CARELINK_DATABASE_URL": str(db)}
    r = carelink(["index", "update"], env)
    assert r.returncode == 4, r.stdout + r.stderr
    _one_line(r.stderr, "acute", "community", system)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM persons").fetchone() == before


def test_serve_refuses_to_start_with_a_wrong_kind_of_source(system: System, tmp_path):
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "index.db")
    env = {**_wrong(system, "acute", "community"), "CARELINK_DATABASE_URL": str(db)}
    r = carelink(["serve", "--port", str(free_port())], env, timeout=60)
    assert r.returncode == 4, r.stdout + r.stderr
    _one_line(r.stderr, "acute", "community", system)


def test_a_source_found_the_wrong_kind_while_serving_is_logged_and_the_rest_served(
    system: System, tmp_path
):
    """Down at start (a warning), then a community trust answers at the acute URL: each
    request reports acute failed, with a log line saying why; the gateway keeps serving."""
    absent = f"http://127.0.0.1:{free_port()}"
    env = {
        **_wrong(system, "acute", "acute"),
        "CARELINK_SOURCES": ",".join(
            f"{k}={absent if k == 'acute' else v}" for k, v in system.sources.items()
        ),
        "CARELINK_DATABASE_URL": str(
            copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "i.db")
        ),
    }
    person = next(p for p in system.population if "acute" in p.sources and len(p.sources) >= 2)
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    log = tmp_path / "gateway.log"
    with running(
        ["serve", "--port", str(port), "--log-level", "info"], f"{base}/metadata", env, output=log
    ):
        assert (
            f"carelink: warning: source 'acute' at {absent}: not reachable now" in log.read_text()
        )
        community = [
            *("simulate", "community", "--port", absent.rpartition(":")[2]),
            *("--size", str(SIZE), "--seed", str(SEED)),
        ]
        with running(community, f"{absent}/_admin/health"):
            found = httpx.get(
                f"{base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
            )
            pid = found.json()["entry"][0]["resource"]["id"]
            r = httpx.get(f"{base}/Patient/{pid}/$everything", timeout=10)
            assert r.status_code == 200, r.text
            sources = {
                e["resource"]["meta"]["source"].rpartition(":")[2]
                for e in r.json()["entry"]
                if e["search"]["mode"] == "match"
            }
            assert "acute" not in sources
            assert sources  # the other sources' parts are there
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        failed = [x for x in lines if x.get("event") == "source failed" and x["source"] == "acute"]
        assert failed, lines
        assert failed[0]["reason"] == (
            f"{absent}: not a FHIR R4 server (found an HL7 v2 over HTTP endpoint)"
        )
        assert httpx.get(f"{base}/metadata").status_code == 200
