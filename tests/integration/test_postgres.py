"""The same gateway on PostgreSQL: index build and lookups through the real API."""

from __future__ import annotations

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.integration.conftest import System
from tests.support.procs import carelink, free_port, running


@pytest.mark.postgres
def test_index_build_and_lookup_on_postgresql(system: System, postgres_url: str):
    env = {**system.env, "CARELINK_DATABASE_URL": postgres_url}
    built = carelink(["index", "build"], env)
    assert built.returncode == 0, built.stderr
    assert f"index built: {len(system.population)} persons" in built.stdout
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    person = next(p for p in system.population if len(p.sources) >= 3)
    with running(["serve", "--port", str(port)], f"{base}/metadata", env):
        r = httpx.get(
            f"{base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
        )
        assert r.json()["total"] == 1
        pid = r.json()["entry"][0]["resource"]["id"]
        everything = httpx.get(
            f"{base}/Patient/{pid}/$everything", params={"_count": 1000}, timeout=10
        ).json()
        # paging over the answer stored in PostgreSQL gives the same entries
        paged: list[str] = []
        url: str | None = f"{base}/Patient/{pid}/$everything?_count=7"
        while url:
            page = httpx.get(url, timeout=10).json()
            paged += [e["fullUrl"] for e in page["entry"] if e["search"]["mode"] == "match"]
            url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    whole = [e["fullUrl"] for e in everything["entry"] if e["search"]["mode"] == "match"]
    assert paged == whole
    sources = {e["resource"].get("meta", {}).get("source") for e in everything["entry"]}
    assert {f"urn:carelink:source:{s}" for s in person.sources} <= sources
