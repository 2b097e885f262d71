"""The audit trail's guarantees on PostgreSQL, through a real token-mode gateway: refusals
filed under the person, paged view with an exact total, automatic checkpoints, and
``audit verify`` naming a moved event and a cut-off tail."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from carelink.audit.checkpoints import latest, read
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database, IndexStore
from tests.integration.conftest import System
from tests.support.procs import carelink, free_port, running
from tests.support.tokens import ISSUER, Issuer

pytestmark = pytest.mark.postgres
EVERY = 10


def _served(system: System, url: str, tmp: Path, issuer: Issuer) -> Iterator[tuple[str, dict]]:
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(issuer.public_jwks()))
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    env = {
        **system.env,
        "CARELINK_DATABASE_URL": url,
        "CARELINK_AUTH": "jwt",
        "CARELINK_ISSUER": ISSUER,
        "CARELINK_AUDIENCE": base,
        "CARELINK_JWKS": str(jwks),
        "CARELINK_ISSUER_KEYS": str(tmp / "local-issuer"),
        "CARELINK_AUDIT_KEYS": str(tmp / "audit-keys"),
        "CARELINK_AUDIT_CHECKPOINTS": str(tmp / "checkpoints"),
        "CARELINK_AUDIT_CHECKPOINT_EVERY": str(EVERY),
    }
    with running(["serve", "--port", str(port)], f"{base}/metadata", env):
        yield base, env


@pytest.fixture
def pg_gateway(
    system: System, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[str, dict, Issuer]]:
    built = carelink(["index", "build"], {**system.env, "CARELINK_DATABASE_URL": postgres_url})
    assert built.returncode == 0, built.stderr
    issuer = Issuer()
    for base, env in _served(system, postgres_url, tmp_path, issuer):
        yield base, env, issuer


def _get(base: str, path: str, token: str | None, step: str, **params: Any) -> httpx.Response:
    headers = {"X-Request-Id": step}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{base}{path}", params=params, headers=headers, timeout=15)


def _request_id(event: dict) -> str:
    return next(
        x["what"]["identifier"]["value"]
        for x in event["entity"]
        if "identifier" in x.get("what", {})
    )


def test_the_audit_trail_on_postgresql(pg_gateway, system: System, postgres_url: str):
    base, env, issuer = pg_gateway
    person = next(p for p in system.population if {"gp", "acute"} <= p.sources)
    doctor = issuer.token(aud=base)
    narrow = issuer.token(aud=base, scope="user/Observation.rs")
    nhs = f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"
    found = _get(base, "/Patient", doctor, "lookup", identifier=nhs).json()
    pid = found["entry"][0]["resource"]["id"]
    db = Database(postgres_url)
    try:
        link = next(x for x in IndexStore(db).links_of(pid) if x.source == "acute")
        u = uuid.uuid4().hex[:8]
        script = [
            (f"/Patient/{link.patient_id}", doctor, {}, 200),
            (f"/Patient/{link.patient_id}", narrow, {}, 403),
            ("/Patient", narrow, {"identifier": person.nhs_number}, 403),
            ("/Condition", narrow, {"subject": f"Patient/{pid}"}, 403),
            ("/Patient", None, {"identifier": nhs}, 401),
        ]
        for i, (path, token, params, status) in enumerate(script):
            assert _get(base, path, token, f"pg-{u}-{i}", **params).status_code == status
        officer = issuer.token(aud=base, role="R0001", purpose_of_use="HOPERAT")
        page = _get(base, "/AuditEvent", officer, "officer", patient=pid, _count=2).json()
        total, seen = page["total"], []
        while True:
            seen += [_request_id(e["resource"]) for e in page.get("entry", [])]
            nxt = [x["url"] for x in page["link"] if x["relation"] == "next"]
            if not nxt:
                break
            page = httpx.get(nxt[0], headers={"Authorization": f"Bearer {officer}"}).json()
        assert len(seen) == total
        assert {f"pg-{u}-{i}" for i in range(len(script))} <= set(seen)
        assert "lookup" in seen

        for i in range(EVERY):
            _get(base, "/Patient", doctor, f"fill-{i}", identifier=nhs)
        folder = Path(env["CARELINK_AUDIT_CHECKPOINTS"])
        newest = latest(folder)
        assert newest is not None
        cp_seq = int(read(newest)["seq"])
        ok = carelink(["audit", "verify"], env)
        assert ok.returncode == 0, ok.stdout + ok.stderr

        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_events SET patient_id = 'elsewhere' WHERE seq = 2"))
        moved = carelink(["audit", "verify"], env)
        assert moved.returncode == 5
        assert "record 2: patient_id differs from its event (edited)" in moved.stdout

        with db.engine.begin() as conn:
            event = conn.execute(
                sa.text("SELECT event FROM audit_events WHERE seq = 2")
            ).scalar_one()
            original = orjson.loads(event)
            back = next(
                x["what"]["reference"].removeprefix("Patient/")
                for x in original["entity"]
                if x.get("role", {}).get("code") == "1"
            )
            conn.execute(
                sa.text("UPDATE audit_events SET patient_id = :p WHERE seq = 2"), {"p": back}
            )
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= :s"), {"s": cp_seq - 1})
        cut = carelink(["audit", "verify"], env)
        assert cut.returncode == 5
        assert f"record {cp_seq}: trail ends at record {cp_seq - 2}" in cut.stdout
    finally:
        db.dispose()
