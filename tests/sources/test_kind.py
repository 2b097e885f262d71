"""Each adapter's first contact: is the far end the kind of system it speaks?

Every adapter is pointed at every simulator and at a plain web server that answers
404 with an HTML page, all real HTTP. The right kind is confirmed; any other is a
``SourceWrongKind`` naming the source, its URL and what was found there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from carelink.errors import SourceUnavailable, SourceWrongKind
from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.sources.base import Source
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.kind import SIGNATURES, confirm_kinds
from carelink.sources.social_care import SocialCareSource
from tests.support.servers import run_app

Adapter = Callable[[aiohttp.ClientSession, str], Source]
ADAPTERS: dict[str, Adapter] = {
    "acute": lambda s, url: AcuteSource(s, url),
    "gp": lambda s, url: GPConnectSource(s, url),
    "community": lambda s, url: CommunitySource(s, url),
    "social-care": lambda s, url: SocialCareSource(s, url),
}
#: what an error names as found, per far end
FOUND = {
    "acute": "a FHIR R4 server",
    "gp": "a GP Connect provider (FHIR STU3)",
    "community": "an HL7 v2 over HTTP endpoint",
    "social-care": "a social-care API",
}
EXPECTED = FOUND  # each adapter expects its own kind, said the same way


def _not_found_page() -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<html><body><h1>Not Found</h1></body></html>", status_code=404)

    return Starlette(routes=[Route("/{path:path}", page)])


@pytest.fixture(scope="module")
def far_ends() -> Iterator[dict[str, str]]:
    """Base URL of each kind of simulator (10 people each) and of a plain 404 site."""
    apps = {
        "acute": acute.create_app(seed=3, size=10, behaviour=Behaviour()),
        "gp": gp.create_app(seed=3, size=10, behaviour=Behaviour()),
        "community": community.create_app(seed=3, size=10, behaviour=Behaviour()),
        "social-care": social_care.create_app(seed=3, size=10, behaviour=Behaviour()),
        "html-404": _not_found_page(),
    }
    with (
        run_app(apps["acute"]) as a,
        run_app(apps["gp"]) as g,
        run_app(apps["community"]) as c,
        run_app(apps["social-care"]) as s,
        run_app(apps["html-404"]) as h,
    ):
        yield {"acute": a, "gp": g, "community": c, "social-care": s, "html-404": h}


async def _first_contact(kind: str, url: str) -> Source:
    async with aiohttp.ClientSession() as session:
        source = ADAPTERS[kind](session, url)
        await confirm_kinds({kind: source})
        return source


PAIRS = [(k, far) for k in ADAPTERS for far in (*ADAPTERS, "html-404")]


@pytest.mark.parametrize(("kind", "far"), PAIRS, ids=[f"{k}-at-{f}" for k, f in PAIRS])
def test_an_adapter_confirms_its_own_kind_and_names_any_other(
    far_ends: dict[str, str], kind: str, far: str
):
    url = far_ends[far]
    if kind == far:
        source = asyncio.run(_first_contact(kind, url))
        assert source.kind.confirmed  # type: ignore[attr-defined]
        return
    with pytest.raises(SourceWrongKind) as caught:
        asyncio.run(_first_contact(kind, url))
    found = FOUND.get(far, "HTTP 404, text/html")
    assert str(caught.value).startswith(
        f"source {kind!r} at {url}: not {EXPECTED[kind]} (found {found}"
    )
    assert caught.value.source == kind


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_an_adapter_at_the_wrong_kind_of_system_reads_nothing_from_it(
    far_ends: dict[str, str], kind: str
):
    """The check comes before the adapter's own question, for records and for the index."""
    elsewhere = far_ends["social-care" if kind != "social-care" else "acute"]

    async def ask() -> None:
        async with aiohttp.ClientSession() as session:
            source = ADAPTERS[kind](session, elsewhere)
            with pytest.raises(SourceWrongKind):
                await source.fetch_record("1", "Patient/x", None, nhs_number="9434765919")
            with pytest.raises(SourceWrongKind):
                async for _ in source.people():
                    pass

    asyncio.run(ask())


def test_a_source_that_cannot_be_reached_is_unavailable_and_asked_again(
    far_ends: dict[str, str],
):
    async def ask() -> None:
        async with aiohttp.ClientSession() as session:
            source = AcuteSource(session, "http://127.0.0.1:9")  # discard port: refused
            assert await confirm_kinds({"acute": source}) == {"acute": "ClientConnectorError"}
            assert not source.kind.confirmed
            source.kind.url = far_ends["acute"]  # the same adapter, the source back up
            assert await confirm_kinds({"acute": source}) == {}
            assert source.kind.confirmed

    asyncio.run(ask())


def test_a_source_answering_5xx_is_unavailable_not_the_wrong_kind(far_ends: dict[str, str]):
    down = Behaviour(down=True)
    with run_app(acute.create_app(seed=3, size=10, behaviour=down)) as url:

        async def ask() -> None:
            async with aiohttp.ClientSession() as session:
                source = AcuteSource(session, url)
                with pytest.raises(SourceUnavailable) as caught:
                    await source.kind.ensure()
                assert not isinstance(caught.value, SourceWrongKind)

        asyncio.run(ask())


def test_credentials_in_a_source_url_are_not_repeated_in_the_error(far_ends: dict[str, str]):
    url = far_ends["social-care"].replace("http://", "http://ops:s3cret@")
    with pytest.raises(SourceWrongKind) as caught:
        asyncio.run(_first_contact("acute", url))
    assert "s3cret" not in str(caught.value)
    assert "ops" not in str(caught.value)


def test_a_wrong_kind_verdict_stands_for_a_while_before_the_source_is_asked_again():
    asked: list[str] = []

    async def page(request: Request) -> HTMLResponse:
        asked.append(request.url.path)
        return HTMLResponse("<html></html>", status_code=404)

    now = [0.0]
    with run_app(Starlette(routes=[Route("/{path:path}", page)])) as url:

        async def ask() -> None:
            async with aiohttp.ClientSession() as session:
                source = AcuteSource(session, url)
                source.kind.clock = lambda: now[0]
                for _ in range(3):
                    with pytest.raises(SourceWrongKind):
                        await source.kind.ensure()
                assert len(asked) == len(SIGNATURES)  # its own question, then the others'
                now[0] += source.kind.recheck
                with pytest.raises(SourceWrongKind):
                    await source.kind.ensure()
                assert len(asked) == 2 * len(SIGNATURES)

        asyncio.run(ask())
