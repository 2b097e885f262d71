"""The acute and GP simulators serving ``--data``: shared resources are readable by id
and identifier (so references in a record can be followed), and a resource without an
id is served as given instead of failing the patient's whole answer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from carelink.simulators import acute, gp
from carelink.simulators.base import Behaviour
from tests.support.procs import carelink, env, free_port, wait_ready
from tests.support.servers import run_app

SDS = "https://fhir.nhs.uk/Id/sds-user-id"
PRACTITIONER = {
    "resourceType": "Practitioner",
    "id": "dr1",
    "identifier": [{"system": SDS, "value": "G1"}],
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    lines = [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}},
        {
            "resourceType": "Encounter",
            "id": "e1",
            "subject": {"reference": "Patient/p1"},
            "participant": [{"individual": {"reference": f"Practitioner?identifier={SDS}|G1"}}],
        },
        PRACTITIONER,
        "not json",
    ]
    f = tmp_path / "data.ndjson"
    f.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    return f


@pytest.fixture(params=["acute", "gp"])
def base(request: pytest.FixtureRequest, data: Path) -> Iterator[str]:
    module = acute if request.param == "acute" else gp
    with run_app(module.create_app_from_files(data, behaviour=Behaviour())) as url:
        yield f"{url}/fhir" if request.param == "acute" else url


def test_shared_resources_are_read_by_id_and_found_by_identifier(base):
    assert httpx.get(f"{base}/Practitioner/dr1").json() == PRACTITIONER
    assert httpx.get(f"{base}/Practitioner/nobody").status_code == 404
    found = httpx.get(f"{base}/Practitioner", params={"identifier": f"{SDS}|G1"}).json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"] == PRACTITIONER
    none = httpx.get(f"{base}/Practitioner", params={"identifier": f"{SDS}|G2"}).json()
    assert none["total"] == 0


def test_a_conditional_reference_is_served_resolved_to_the_shared_resource(base):
    enc = httpx.get(f"{base}/Encounter/e1").json()
    assert enc["participant"][0]["individual"] == {"reference": "Practitioner/dr1"}


def test_a_record_holding_a_resource_without_id_is_still_served(data):
    with run_app(acute.create_app_from_files(data, behaviour=Behaviour())) as url:
        r = httpx.get(f"{url}/fhir/Patient/p1/$everything")
    assert r.status_code == 200
    entries = r.json()["entry"]
    assert [("fullUrl" in e, e["resource"]["resourceType"]) for e in entries] == [
        (True, "Patient"),
        (False, "Observation"),
        (True, "Encounter"),
        (True, "Practitioner"),  # referenced by the Encounter: $everything includes it
    ]


def test_simulate_says_at_start_what_it_loaded_and_skipped_without_quoting_data(data):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "carelink",
            "simulate",
            "acute",
            "--port",
            str(port),
            "--data",
            str(data),
        ],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(f"{url}/_admin/health", proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    lines = err.decode().splitlines()
    assert lines[0] == (
        f"carelink simulate: {data}: read 1 files: 1 patients, 2 resources in their records, "
        "1 shared resources; 1 served without an id; 1 skipped"
    )
    assert lines[1:3] == [
        f"  {data}:2: Observation without an id: served as given",
        f"  {data}:5: not JSON",
    ]


@pytest.mark.parametrize("what", ["missing", "no-fhir"])
def test_simulate_with_data_it_cannot_serve_is_one_line_and_exit_1(tmp_path, what):
    path = tmp_path / "nothing-here"
    if what == "no-fhir":
        path.mkdir()
        (path / "notes.json").write_text('{"hello": "world"}')
    r = carelink(["simulate", "acute", "--port", str(free_port()), "--data", str(path)], timeout=60)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"carelink: {path}: ")
