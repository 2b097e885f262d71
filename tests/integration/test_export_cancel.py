"""A cancelled ``$export`` stops: once ``DELETE`` on its status URL has answered, no
source is asked anything more for it and none of its files remain, whether the gateway
process that took the ``DELETE`` runs the job or another one does.

The sources are the four simulators served over real HTTP from this process, each
slowed to a few hundred milliseconds an answer (so an export of the integration
population is still reading when it is cancelled), each noting when every request
reached it. The gateways are real processes on a copy of the integration index.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.auth.local_issuer import LocalIssuer
from carelink.simulators.base import Behaviour
from carelink.simulators.population import SOURCES
from carelink.simulators.registry import create_simulator
from tests.integration.conftest import SEED, SIZE, System
from tests.support.gateways import Started, copy_index, token_gateways
from tests.support.servers import run_app
from tests.support.tokens import Issuer

LATENCY_MS = 300  # each source's median answer time: 300 people take far longer than a test
# A request the gateway sent before the DELETE answered may be noted by its simulator
# (a thread of this busy process) a moment after the test saw the answer; anything
# noted later than this was sent after the DELETE.
NOTED_WITHIN = 0.25
WATCHED = 2.0  # how long after the DELETE the sources are watched


@dataclass
class Counted:
    """An ASGI app that notes when each request reaches it, then passes it on."""

    app: Any
    arrivals: list[float] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_admin"):
            self.arrivals.append(time.monotonic())
        await self.app(scope, receive, send)

    def after(self, instant: float) -> int:
        return sum(1 for t in list(self.arrivals) if t > instant)


@dataclass
class Setting:
    sources: dict[str, Counted]
    env: dict[str, str]
    db: Path
    tmp: Path
    issuer: Issuer

    def asked(self) -> int:
        return sum(len(c.arrivals) for c in self.sources.values())

    def asked_after(self, instant: float) -> dict[str, int]:
        return {name: c.after(instant) for name, c in self.sources.items()}


@pytest.fixture
def setting(system: System, tmp_path: Path) -> Iterator[Setting]:
    behaviour = Behaviour(latency_ms=LATENCY_MS, latency_sigma=0.1)
    with ExitStack() as stack:
        sources = {
            name: Counted(create_simulator(name, seed=SEED, size=SIZE, behaviour=behaviour))
            for name in SOURCES
        }
        urls = {name: stack.enter_context(run_app(app)) for name, app in sources.items()}
        db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "shared.db")
        env = {
            **system.env,
            "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in urls.items()),
            "CARELINK_BUDGET": "5",  # slow, not failing: every person is read in full
        }
        yield Setting(sources, env, db, tmp_path, Issuer())


def _token(gateway: Started, tmp: Path) -> str:
    """A backend-services token of the gateway's own issuer (no registration: anonymised)."""
    claims = {"sub": "analyst", "client_id": "analyst"}
    claims |= {"scope": "system/*.rs", "purpose_of_use": "HRESCH"}
    return LocalIssuer(tmp / "local-issuer").mint(gateway.base, claims, lifetime=600)


def _reading(setting: Setting, gateway: Started) -> str:
    """Kick off an export and return its status URL once the sources are being read."""
    before = setting.asked()
    kick = httpx.get(
        f"{gateway.base}/$export",
        params={"_type": "Patient,Condition,Observation"},
        headers={
            "Authorization": f"Bearer {_token(gateway, setting.tmp)}",
            "Prefer": "respond-async",
        },
        timeout=15,
    )
    assert kick.status_code == 202, kick.text
    deadline = time.monotonic() + 60
    while setting.asked() < before + 20:
        assert time.monotonic() < deadline, "the export never read the sources"
        time.sleep(0.05)
    return kick.headers["Content-Location"]


def _cancelled_and_stopped(setting: Setting, status: str, gateway: Started) -> None:
    """DELETE through ``gateway``; then no source is asked again, no file remains, 404."""
    job_id = status.rsplit("/", 1)[1]
    files = setting.db.parent / "exports" / job_id
    assert files.is_dir()  # the job is writing its extract
    token = _token(gateway, setting.tmp)
    url = f"{gateway.base}/$export-status/{job_id}"
    still = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert still.status_code == 202, still.text  # still running
    cancel = httpx.delete(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    answered = time.monotonic()
    assert cancel.status_code == 202, cancel.text
    assert not files.exists()
    time.sleep(WATCHED)
    late = setting.asked_after(answered + NOTED_WITHIN)
    assert sum(late.values()) == 0, f"requests after the DELETE answered: {late}"
    assert not files.exists()
    gone = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert gone.status_code == 404


def test_a_cancel_taken_by_the_process_running_the_export_stops_it_at_once(setting):
    with token_gateways(setting.env, setting.db, setting.issuer, setting.tmp) as (gateway,):
        status = _reading(setting, gateway)
        _cancelled_and_stopped(setting, status, gateway)


def test_a_cancel_taken_by_another_process_stops_the_export_before_it_is_answered(setting):
    """The job is held by the first process (the second starts once it is reading), and
    the DELETE goes to the second: it answers only once the first has let go."""
    with ExitStack() as stack:
        (running,) = stack.enter_context(
            token_gateways(setting.env, setting.db, setting.issuer, setting.tmp)
        )
        status = _reading(setting, running)
        (other,) = stack.enter_context(
            token_gateways(setting.env, setting.db, setting.issuer, setting.tmp)
        )
        _cancelled_and_stopped(setting, status, other)
