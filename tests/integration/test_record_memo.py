"""A record the gateway reuses (``federation.memo``) never outlives a change at a source.

A system of its own (the change below must not reach the shared one): four
simulators and the gateway as processes on loopback HTTP, the index a real
SQLite file. A person changed at the council's social-care simulator, between
two identical ``$everything`` requests that the gateway answers from one
remembered record, is seen in the very next answer, under a new ETag.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.population import Person, local_id
from tests.support.system import System, _gateway, _simulators

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp: Path = tmp_path_factory.mktemp("memo-system")
    with ExitStack() as stack:
        yield _gateway(stack, _simulators(stack), tmp)


def _everything(system: System, pid: str, **headers: str) -> httpx.Response:
    r = httpx.get(
        f"{system.base}/Patient/{pid}/$everything",
        params={"_count": 1000},
        headers=headers,
        timeout=30,
    )
    assert r.status_code in (200, 304), r.text
    return r


def _social_care_patient(bundle: dict[str, Any], local: str) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
        and e["resource"]["id"] == f"social-care-{local}"
    )


def test_a_person_changed_at_social_care_gives_a_new_answer_and_a_new_etag(own_system):
    system = own_system
    person: Person = next(
        p for p in system.population if len(p.sources) == 4 and p.social_variant is None
    )
    found = httpx.get(
        f"{system.base}/Patient",
        params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
        timeout=30,
    ).json()
    pid = found["entry"][0]["resource"]["id"]
    local = local_id("social-care", person.index)
    first = _everything(system, pid)
    again = _everything(system, pid)  # the same answers everywhere: the remembered record
    assert again.headers["etag"] == first.headers["etag"]
    assert _everything(system, pid, **{"If-None-Match": first.headers["etag"]}).status_code == 304

    moved = {
        "resourceType": "Patient",
        "id": local,
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}],
        "name": [{"family": "Featherstonehaugh", "given": [person.given]}],
        "gender": person.gender,
        "birthDate": person.birth_date.isoformat(),
        "address": [{"line": ["1 Quay Street"], "postalCode": "HU1 1AA"}],
    }
    put = httpx.put(f"{system.sources['social-care']}/_admin/patients/{local}", json=moved)
    assert put.status_code in (200, 201), put.text

    changed = _everything(system, pid, **{"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200  # not 304: the record changed
    assert changed.headers["etag"] != first.headers["etag"]
    before = _social_care_patient(first.json(), local)
    after = _social_care_patient(changed.json(), local)
    assert before["name"][0]["family"] == person.family
    assert after["name"][0]["family"] == "Featherstonehaugh"
