"""Token-mode gateway processes on a private copy of the integration index."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from carelink.storage import Database
from tests.support.procs import carelink, free_port, running
from tests.support.system import System
from tests.support.tokens import ISSUER, Issuer


@dataclass(frozen=True)
class Started:
    """One running gateway: its FHIR base and the environment it runs with."""

    base: str
    env: dict[str, str]
    #: the file its output goes to (None: not kept)
    log: Path | None = None

    def errors(self) -> str:
        """The lines of its log at level error or above, for a failing test to show."""
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if '"level":"error"' in line or "Traceback" in line)


def person_id(base: str, identifier: str, token: str) -> str:
    """The gateway's id of the person holding ``identifier`` (``system|value``), found as
    a client finds it: ``GET {base}/Patient?identifier=`` with the caller's token."""
    found = httpx.get(
        f"{base}/Patient",
        params={"identifier": identifier},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert found.status_code == 200, found.text
    return str(found.json()["entry"][0]["resource"]["id"])


def copy_index(source: str, target: Path) -> Path:
    """A consistent copy of a SQLite index (the SQLite backup API), so tests that change
    the database never change what other tests see."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


@contextmanager
def token_gateways(
    base_env: Mapping[str, str],
    db: Path,
    issuer: Issuer,
    tmp: Path,
    count: int = 1,
    extra: Mapping[str, str] | None = None,
) -> Iterator[list[Started]]:
    """``count`` gateway processes sharing ``db``, trusting ``issuer``."""
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(issuer.public_jwks()))
    with ExitStack() as stack:
        started = []
        for _ in range(count):
            port = free_port()
            base = f"http://127.0.0.1:{port}/fhir"
            env = {
                **base_env,
                "CARELINK_DATABASE_URL": str(db),
                "CARELINK_AUTH": "jwt",
                "CARELINK_ISSUER": ISSUER,
                "CARELINK_AUDIENCE": base,
                "CARELINK_JWKS": str(jwks),
                "CARELINK_ISSUER_KEYS": str(tmp / "local-issuer"),
                **(extra or {}),
            }
            log = tmp / f"gateway-{port}.log"
            stack.enter_context(
                running(["serve", "--port", str(port)], f"{base}/metadata", env, output=log)
            )
            started.append(Started(base, env, log))
        yield started


@contextmanager
def remembering_and_fresh(
    base_env: Mapping[str, str], db: Path, issuer: Issuer, tmp: Path
) -> Iterator[tuple[Started, Started]]:
    """Two gateways over ``db``: one as deployed, remembering records, and one that
    remembers nothing (``CARELINK_RECORD_MEMO=0``), the oracle a reused answer is held to
    (each with its own folder under ``tmp``)."""
    (tmp / "on").mkdir()
    (tmp / "off").mkdir()
    fresh = {"CARELINK_RECORD_MEMO": "0"}
    with ExitStack() as stack:
        (on,) = stack.enter_context(token_gateways(base_env, db, issuer, tmp / "on"))
        (off,) = stack.enter_context(token_gateways(base_env, db, issuer, tmp / "off", extra=fresh))
        yield on, off


#: ``params`` of a fixture run on each database: PostgreSQL marked, for the runs that have one
BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class IndexDatabase:
    """A private database holding the integration index: a SQLite copy, or a PostgreSQL
    schema of its own (dropped afterwards) with the index built into it (skipped when
    CARELINK_TEST_POSTGRES_URL is not set)."""

    def __init__(self, kind: str, system: System, tmp: Path) -> None:
        self.kind, self.system, self.tmp = kind, system, tmp
        self.schema = f"carelink_idx_{uuid.uuid4().hex[:10]}"
        self.admin: Database | None = None

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            return str(copy_index(self.system.env["CARELINK_DATABASE_URL"], self.tmp / "a.db"))
        base = os.environ.get("CARELINK_TEST_POSTGRES_URL")
        if not base:
            pytest.skip("CARELINK_TEST_POSTGRES_URL is not set")
        self.admin = Database(base)
        with self.admin.engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{self.schema}"
        built = carelink(["index", "build"], {**self.system.env, "CARELINK_DATABASE_URL": url})
        assert built.returncode == 0, built.stderr
        return url

    def __exit__(self, *_: object) -> None:
        if self.admin is not None:
            with self.admin.engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            self.admin.dispose()
