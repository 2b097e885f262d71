"""Attack: the database cut between a refusal and its audit event.

The guarantee: **an event that cannot be filed fails closed as ``AuditError``** (the
request a 503, no data), whichever error the cut database raised. The audit of a refused
or failed request looks up, again, the person the request named: that second look met
the cut connection and let psycopg's own error through ``deps.audit``, which caught only
``StorageUnavailable``: the outage test's rare 500 in place of a 503.

The real gateway app (its lifespan run, its stores made) on PostgreSQL reached through a
TCP proxy the test cuts, or whose connections the server ends.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from fastapi import Request

from carelink.api.audit_subject import person_for
from carelink.api.deps import audit
from carelink.app import create_app
from carelink.audit.events import FAILED, REFUSED
from carelink.errors import AuditError
from carelink.settings import Settings
from carelink.storage import Database
from tests.support.procs import own_files
from tests.support.tcp_proxy import proxy_to, with_host

pytestmark = pytest.mark.postgres

APP = "carelink-audit-cut"


def _request(app: Any) -> Request:
    return Request(
        {
            "type": "http",
            "app": app,
            "method": "GET",
            "path": "/fhir/Patient/somebody",
            "query_string": b"",
            "headers": [],
            "state": {},
        }
    )


@pytest.mark.parametrize("outcome", [REFUSED, FAILED])
@pytest.mark.parametrize("cut", ["proxy killed", "connections ended"])
def test_an_event_whose_person_cannot_be_looked_up_fails_closed(
    postgres_url, tmp_path, cut, outcome
):
    target = urlsplit(postgres_url)
    admin = Database(postgres_url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        url = with_host(f"{postgres_url}&application_name={APP}", "127.0.0.1", proxy.port)
        settings = Settings.from_env(
            {
                "CARELINK_DATABASE_URL": url,
                "CARELINK_AUTH": "development",
                "CARELINK_SOURCES": "acute=http://127.0.0.1:9",
                "CARELINK_DB_TIMEOUT": "1",
                "CARELINK_DB_CONNECT_TIMEOUT": "1",
                **own_files(tmp_path),
            }
        )
        app = create_app(settings)

        async def scenario() -> BaseException | None:
            async with app.router.lifespan_context(app):
                request = _request(app)
                # the lookup path's connections made and good
                assert person_for(app.state.record, "Patient/somebody") is None
                if cut == "proxy killed":
                    proxy.kill()
                else:
                    with admin.engine.connect() as conn:
                        conn.execute(
                            sa.text(
                                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                "WHERE application_name = :a"
                            ),
                            {"a": APP},
                        )
                    proxy.allow(0)  # and no new connection gets through
                try:
                    await audit(request, "read", ["Patient/somebody"], outcome, "withheld")
                except BaseException as exc:  # what the request's handler would meet
                    return exc
                finally:
                    proxy.allow(None)
                    proxy.resume()
                return None

        raised = asyncio.run(scenario())
    admin.dispose()
    assert isinstance(raised, AuditError), f"{type(raised).__name__}: {raised}"
