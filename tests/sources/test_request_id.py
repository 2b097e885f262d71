"""Each adapter's outbound request carries the gateway request's ``X-Request-ID``, so a
source's logs join the gateway's; outside a request (an export job) none is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from carelink.errors import SourceError
from carelink.observability import bind, unbind
from carelink.sources.base import Source
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.social_care import SocialCareSource
from tests.support.kinds import answering_kind

ADAPTERS: dict[str, Callable[[aiohttp.ClientSession, str], Source]] = {
    "acute": lambda s, url: AcuteSource(s, url),
    "gp": lambda s, url: GPConnectSource(s, url),
    "community": lambda s, url: CommunitySource(s, url),
    "social-care": lambda s, url: SocialCareSource(s, url),
}


async def _ask(kind: str, request_id: str | None) -> list[str | None]:
    """Run a real HTTP server that answers 404 and notes each request's X-Request-ID;
    ask it for a record through the adapter ``kind``."""
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Request-ID"))
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answering_kind(kind, record))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            source = ADAPTERS[kind](session, f"http://127.0.0.1:{port}")
            bound = bind(request_id) if request_id is not None else None
            try:
                await source.fetch_record("L1", "Patient/p1", None, nhs_number="9434765919")
            except SourceError:
                pass  # GP Connect: a bare 404 is no answer (a provider's names the patient)
            finally:
                if bound is not None:
                    unbind(bound)
    finally:
        await runner.cleanup()
    return seen


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_adapter_forwards_the_request_id(kind):
    seen = asyncio.run(_ask(kind, "req-7f1c2a9e"))
    assert seen
    assert set(seen) == {"req-7f1c2a9e"}


def test_outside_a_request_no_id_is_sent():
    assert set(asyncio.run(_ask("gp", None))) == {None}
