"""Listings read one page ahead: the next page is asked for while the caller works on
the current one, never two pages ahead, and the records come as without it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.sources.base import Source, SourcePerson
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.http import read_ahead
from carelink.sources.social_care import SocialCareSource
from tests.support.servers import run_app

PAGES = 4


async def _pages(made: list[int], fail_at: int | None = None) -> AsyncIterator[int]:
    """Pages 1..PAGES, each noted in ``made`` as it is made (``fail_at``: that one fails)."""
    for n in range(1, PAGES + 1):
        await asyncio.sleep(0)  # as a request would
        if n == fail_at:
            raise OSError(f"page {n}")
        made.append(n)
        yield n


def test_the_next_page_is_made_while_the_caller_holds_this_one_and_no_further():
    async def read() -> tuple[list[int], list[list[int]]]:
        made: list[int] = []
        seen_while_holding = []
        got = []
        async for page in read_ahead(_pages(made)):
            await asyncio.sleep(0.05)  # the caller's work on this page
            seen_while_holding.append(list(made))
            got.append(page)
        return got, seen_while_holding

    got, seen = asyncio.run(read())
    assert got == [1, 2, 3, 4]
    assert seen == [[1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4]]


def test_a_failing_next_page_fails_where_that_page_would_have_come():
    got: list[int] = []

    async def read() -> None:
        async for page in read_ahead(_pages([], fail_at=3)):
            got.append(page)

    with pytest.raises(OSError, match="page 3"):
        asyncio.run(read())
    assert got == [1, 2]


def test_a_caller_that_stops_early_leaves_no_page_being_made():
    async def read() -> tuple[list[int], list[int]]:
        made: list[int] = []
        pages = read_ahead(_pages(made))
        first = await anext(pages)
        await pages.aclose()
        await asyncio.sleep(0.05)
        return [first], made

    first, made = asyncio.run(read())
    assert first == [1]
    assert made in ([1], [1, 2])  # page 2 may have been under way, never page 3


# -- over HTTP, each adapter against its simulator --------------------------------

Adapter = Callable[[aiohttp.ClientSession, str, int], Source]
ADAPTERS: dict[str, tuple[Any, str, Adapter]] = {
    "acute": (acute, "/fhir/Patient", lambda s, u, n: AcuteSource(s, u, page_size=n)),
    "gp": (gp, "/Patient", lambda s, u, n: GPConnectSource(s, u, page_size=n)),
    "community": (
        community,
        "/hl7/patients",
        lambda s, u, n: CommunitySource(s, u, page_size=n),
    ),
    "social-care": (
        social_care,
        "/api/v2/persons",
        lambda s, u, n: SocialCareSource(s, u, page_size=n),
    ),
}


class Asked:
    """The paths a server was asked for, as the requests arrive (on the server's thread)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.changed = threading.Condition()

    def count(self, path: str) -> int:
        with self.changed:
            return self.paths.count(path)

    def clear(self) -> None:
        with self.changed:
            self.paths.clear()

    def wait_for(self, path: str, n: int, timeout: float) -> None:
        """Until ``path`` has been asked for ``n`` times (or ``timeout`` seconds)."""
        with self.changed:
            self.changed.wait_for(lambda: self.paths.count(path) >= n, timeout)

    def recording(self, app: Any) -> Any:
        """``app``, noting the path of every request as it arrives."""

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                with self.changed:
                    self.paths.append(scope["path"])
                    self.changed.notify_all()
            await app(scope, receive, send)

        return asgi


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict[str, tuple[str, Asked]]]:
    """Each kind of simulator (300 people), served, with the paths it is asked for."""
    with contextlib.ExitStack() as stack:
        out = {}
        for kind, (simulator, _, _) in ADAPTERS.items():
            asked = Asked()
            app = simulator.create_app(seed=5, size=300, behaviour=Behaviour())
            out[kind] = (stack.enter_context(run_app(asked.recording(app))), asked)
        yield out


async def _listing(
    kind: str, url: str, asked: Asked, page_size: int, pages: int = 1
) -> tuple[list[SourcePerson], list[int]]:
    """Every record, and how many listing pages (of ``pages``) the simulator had been
    asked for each time the caller, holding a page's first record, had waited for the
    next one to be asked for."""
    _, path, adapter = ADAPTERS[kind]
    records, pages_asked = [], []
    async with aiohttp.ClientSession() as session:
        source = adapter(session, url, page_size)
        await source.kind.ensure()  # type: ignore[attr-defined]  # its own question first
        asked.clear()
        async for p in source.people():
            if len(records) % page_size == 0:  # a page's first record
                listed = len(records) // page_size + 1
                await asyncio.to_thread(asked.wait_for, path, min(listed + 1, pages), 5)
                await asyncio.sleep(0.05)  # time enough to ask for a page too many
                pages_asked.append(asked.count(path))
            records.append(p)
    return records, pages_asked


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_listing_asks_for_the_next_page_while_its_caller_reads_this_one(
    simulators: dict[str, tuple[str, Asked]], kind: str
):
    url, asked = simulators[kind]
    whole, _ = asyncio.run(_listing(kind, url, asked, 1000))
    size = len(whole) // 5  # five pages and a bit
    assert size >= 2
    pages = -(-len(whole) // size)
    paged, pages_asked = asyncio.run(_listing(kind, url, asked, size, pages))
    assert paged == whole  # the same records in the same order
    # on page n (of `pages`), page n + 1 has been asked for, and no more
    assert pages_asked == [min(n + 1, pages) for n in range(1, pages + 1)]
