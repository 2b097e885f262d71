"""Routes matched without the framework's router choose what the router would have chosen.

Invariant: for any method and path, ``Dispatch`` either answers with the endpoint
Starlette's routing rule picks from the same routes (the first route whose path
and method both match, with the same path parameters) or hands the request to
the framework untouched; and an endpoint's exception is answered by the app's
own handlers, as through the framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Match

from carelink.api import router
from carelink.api.dispatch import Dispatch
from carelink.app import create_app
from carelink.settings import Settings
from tests.support.servers import run_app

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
TEMPLATES = [str(r.path) for r in router.routes]
# path segments as clients send them, $operations and ids with dots and dashes included
SEGMENT = st.one_of(
    st.sampled_from(
        [
            "Patient",
            "Consent",
            "$everything",
            "$export",
            "_search",
            "_history",
            "metadata",
            "Task",
            "Group",
            "AuditEvent",
            "1",
            "a.b-c",
            "",
        ]
    ),
    st.text(alphabet="abcXYZ019$_.-", min_size=1, max_size=12),
)


def _framework_choice(method: str, path: str) -> tuple[Any, dict[str, Any]] | None:
    """What Starlette's router does: the first FULL match, in order (PARTIAL ones are the
    405s, which Dispatch leaves to the framework)."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return child["endpoint"], child["path_params"]
    return None


def _dispatch_choice(method: str, path: str) -> tuple[Any, dict[str, Any]] | None:
    hit = Dispatch(router.routes).match(method, path)
    return None if hit is None else (hit[0].endpoint, hit[1])


def filled(template: str, values: list[str]) -> str:
    """``template`` with its ``{...}`` parameters replaced by ``values`` in turn."""
    path = template
    for value in values:
        start = path.find("{")
        if start < 0:
            break
        path = path[:start] + value + path[path.index("}", start) + 1 :]
    return path


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    template=st.sampled_from(TEMPLATES),
    values=st.lists(SEGMENT, min_size=4, max_size=4),
)
def test_a_path_made_from_any_route_template_reaches_the_routers_choice(
    method: str, template: str, values: list[str]
) -> None:
    path = filled(template, values)
    assert _dispatch_choice(method, path) == _framework_choice(method, path)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    segments=st.lists(SEGMENT, min_size=0, max_size=5),
    slash=st.booleans(),
)
def test_any_path_at_all_reaches_the_routers_choice(
    method: str, segments: list[str], slash: bool
) -> None:
    path = "/" + "/".join(["fhir", *segments]) + ("/" if slash else "")
    assert _dispatch_choice(method, path) == _framework_choice(method, path)


#: one dispatcher for every example below: the routes it keeps for a path's beginning
#: are reused, and past ``Routes.BUCKETS`` beginnings picked out afresh
SHARED = Dispatch(router.routes)


@settings(max_examples=600, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    template=st.sampled_from(TEMPLATES),
    values=st.lists(SEGMENT, min_size=4, max_size=4),
    segments=st.lists(SEGMENT, min_size=0, max_size=5),
)
def test_one_dispatcher_asked_again_and_again_still_reaches_the_routers_choice(
    method: str, template: str, values: list[str], segments: list[str]
) -> None:
    """The routes kept for a path's first two segments are those any path beginning so
    could match, in order: fails when a route is left out of a beginning's routes that
    a path there matches (its prefix ends inside the beginning, or goes past it: no
    route here has the latter, but a new one may)."""
    path = filled(template, values)
    other = "/" + "/".join(["fhir", *segments])
    for p in (path, other, path):
        hit = SHARED.match(method, p)
        assert (None if hit is None else (hit[0].endpoint, hit[1])) == _framework_choice(method, p)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    var = Path(tmp_path_factory.mktemp("dispatch"))
    env = {
        "CARELINK_AUTH": "development",
        "CARELINK_DATABASE_URL": str(var / "gateway.db"),
        "CARELINK_AUDIT_WRITER": "thread",
        "CARELINK_SOURCES": "acute=http://127.0.0.1:9",
    }
    with run_app(create_app(Settings.from_env(env))) as url, httpx.Client(base_url=url) as c:
        yield c


def test_an_endpoints_error_is_answered_by_the_apps_handler(client: httpx.Client) -> None:
    # NotFound raised by the read endpoint: the gateway's OperationOutcome, not a bare 500
    answer = client.get("/fhir/Patient/nobody-at-all")
    assert answer.status_code == 404
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found"


def test_a_method_the_path_does_not_allow_is_the_frameworks_405_with_allow(
    client: httpx.Client,
) -> None:
    answer = client.request("DELETE", "/fhir/metadata")
    assert answer.status_code == 405
    assert "GET" in answer.headers["allow"]
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_an_unknown_path_is_the_frameworks_404(client: httpx.Client) -> None:
    answer = client.get("/nowhere/at/all")
    assert answer.status_code == 404
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_the_frameworks_own_routes_still_answer(client: httpx.Client) -> None:
    assert client.get("/openapi.json").json()["info"]["title"] == "carelink"
