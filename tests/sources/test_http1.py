"""The lean HTTP/1.1 client (``sources.http1``): the same answers as aiohttp gives, and
every way a source can fail is a failure of that request only.

Real servers throughout: the four simulators under uvicorn, and a raw asyncio server
that answers as it is told (chunked, until it closes, cut short, garbage).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop

from carelink.errors import SourceUnavailable
from carelink.simulators import acute, community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.simulators.population import local_id, people
from carelink.sources.base import Source
from carelink.sources.community import CommunitySource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.http import close_session, fetch, lean, send
from carelink.sources.http1 import USER_AGENT, Client
from carelink.sources.social_care import SocialCareSource
from tests.support.servers import run_app
from tests.support.shared import SYNTHEA

SEED, SIZE = 42, 40
SIMULATORS: dict[str, tuple[Any, Callable[[aiohttp.ClientSession, str], Source]]] = {
    "acute": (acute, lambda s, url: AcuteSource(s, url)),
    "gp": (gp, lambda s, url: GPConnectSource(s, url)),
    "community": (community, lambda s, url: CommunitySource(s, url)),
    "social-care": (social_care, lambda s, url: SocialCareSource(s, url)),
}


@pytest.fixture(scope="module", params=sorted(SIMULATORS))
def simulator(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    module, _ = SIMULATORS[request.param]
    app = module.create_app(seed=SEED, size=SIZE, behaviour=Behaviour())
    with run_app(app) as base:
        yield request.param, base


async def _records(kind: str, base: str, with_lean: bool) -> list[tuple[Any, ...]]:
    """Each known person's record at the source, read through the adapter."""
    _, make = SIMULATORS[kind]
    session = aiohttp.ClientSession()
    if with_lean:
        lean(session, Client(8, 5.0))
    try:
        source = make(session, base)
        out = []
        for person in people(SEED, SIZE):
            if kind not in person.sources:
                continue
            got = await source.fetch_record(
                local_id(kind, person.index), "Patient/p1", None, nhs_number=person.nhs_number
            )
            resources = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in got.resources]
            # as of: the answer's Last-Modified, or the time it came (community, social
            # care): compared as headers by the test below
            out.append((resources, got.version, got.skipped, got.notes))
        return out
    finally:
        await close_session(session)


def test_each_adapter_reads_the_same_records_through_either_client(simulator):
    """Every person's record, through aiohttp and through the lean client: equal resources,
    versions and notes (the sources answered the same bytes)."""
    kind, base = simulator
    plain = asyncio.run(_records(kind, base, with_lean=False))
    leaned = asyncio.run(_records(kind, base, with_lean=True))
    assert plain
    assert leaned == plain


def test_a_record_answer_is_the_same_bytes_and_headers_through_either_client():
    """One GET of a record: status, body bytes and the headers adapters read, the same."""
    person = next(p for p in people(SEED, SIZE) if "acute" in p.sources)
    headers = {"Accept": "application/fhir+json"}
    app = acute.create_app(seed=SEED, size=SIZE, behaviour=Behaviour())

    async def both() -> list[tuple[int, bytes, str, str]]:
        out = []
        for with_lean in (False, True):
            session = aiohttp.ClientSession()
            if with_lean:
                lean(session, Client())
            try:
                fhir_base = AcuteSource(session, base).base
                url = f"{fhir_base}/Patient/{local_id('acute', person.index)}/$everything"
                status, got, body = await send(session, "acute", "GET", url, headers)
                out.append((status, body, got.get("ETag"), got.get("last-modified")))
            finally:
                await close_session(session)
        return out

    with run_app(app) as base:
        plain, leaned = asyncio.run(both())
    assert plain[0] == 200
    assert plain[1]
    assert leaned == plain


class Scripted:
    """A raw HTTP/1.1 server: each request is answered by the next of ``answers`` (bytes
    to write, then whether to close), counting the connections it accepted."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = answers
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.hung_up = 0  # connections the client closed

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # the client has closed its connections: each handler ends at their end (none may
        # be left pending when the loop closes)
        if self.handlers:
            _, pending = await asyncio.wait(self.handlers, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if not self.answers:
                    break
                data, close = self.answers.pop(0)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up += 1
        writer.close()
        await writer.wait_closed()


BODY = b'{"resourceType":"Bundle","type":"searchset"}'
OK = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: W/"7"\r\n\r\n%s' % (len(BODY), BODY)


def _run(
    answers: list[tuple[bytes, bool]],
    script: Callable[..., Any],
    server: Scripted | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> tuple[Any, Scripted]:
    """Run ``script(session, url)`` against a scripted server, the session's requests sent
    by the lean client (on ``loop_factory``'s loop: asyncio's by default)."""
    server = server or Scripted(answers)

    async def go() -> Any:
        async with server as base:
            session = lean(aiohttp.ClientSession(), Client(4, 2.0))
            try:
                # bounded: a connection wrongly reused may never answer
                return await asyncio.wait_for(script(session, f"{base}/Patient/1/$everything"), 10)
            finally:
                await close_session(session)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(go()), server


async def _twice(session: aiohttp.ClientSession, url: str) -> list[Any]:
    return [await fetch(session, "acute", "GET", url) for _ in range(2)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_kept_alive_connections_are_reused(loop):
    """On asyncio's loop and on uvloop's (the gateway's, under uvicorn)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    got, server = _run([(OK, False), (OK, False)], _twice, loop_factory=factory)
    assert [body for body, _ in got] == [BODY, BODY]
    assert got[0][1].get("etag") == 'W/"7"'
    assert server.connections == 1


def test_an_answer_that_closes_its_connection_is_read_and_the_next_request_connects_anew():
    close = OK.replace(b"ETag", b"Connection: close\r\nETag")
    got, server = _run([(close, True), (OK, False)], _twice)
    assert [body for body, _ in got] == [BODY, BODY]
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_used_again():
    async def idle_then_again(session: aiohttp.ClientSession, url: str) -> list[Any]:
        first = await fetch(session, "acute", "GET", url)
        await asyncio.sleep(0.2)  # the server has closed it meanwhile
        return [first, await fetch(session, "acute", "GET", url)]

    got, server = _run([(OK, True), (OK, False)], idle_then_again)
    assert [body for body, _ in got] == [BODY, BODY]
    assert server.connections == 2


def test_chunked_and_until_close_bodies_are_read_whole():
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n" + BODY[:5] + b"\r\n" + b"%x\r\n" % (len(BODY) - 5) + BODY[5:] + b"\r\n0\r\n\r\n"
    )
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY
    got, _ = _run([(chunked, False), (until_close, True)], _twice)
    assert [body for body, _ in got] == [BODY, BODY]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + BODY,  # cut short
        b"this is not HTTP\r\n\r\n",
        b"",  # closed without a word
    ],
    ids=["cut-short", "garbage", "closed"],
)
def test_an_answer_not_read_whole_is_the_source_unavailable_and_its_connection_dropped(answer):
    async def failing_then_fine(session: aiohttp.ClientSession, url: str) -> Any:
        with pytest.raises(SourceUnavailable):
            await fetch(session, "acute", "GET", url)
        return await fetch(session, "acute", "GET", url)

    got, server = _run([(answer, True), (OK, False)], failing_then_fine)
    assert got[0] == BODY
    assert server.connections == 2


def test_a_404_and_an_error_status_are_the_adapters_to_judge():
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    broken = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"

    async def both(session: aiohttp.ClientSession, url: str) -> Any:
        absent = await fetch(session, "acute", "GET", url)
        with pytest.raises(SourceUnavailable, match="HTTP 503"):
            await fetch(session, "acute", "GET", url)
        return absent

    got, server = _run([(missing, False), (broken, False)], both)
    assert got[0] is None
    assert server.connections == 1


def test_a_request_cancelled_mid_answer_closes_its_connection():
    head_only = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    server = Scripted([(head_only, False), (OK, False)])

    async def cancelled_then_fine(session: aiohttp.ClientSession, url: str) -> Any:
        task = asyncio.ensure_future(fetch(session, "acute", "GET", url))
        await asyncio.sleep(0.2)  # asked, the answer's head only has come
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again, _ = await fetch(session, "acute", "GET", url)
        await asyncio.sleep(0.2)
        return again, server.hung_up  # the first closed, the second kept alive

    got, _ = _run([], cancelled_then_fine, server)
    assert got == (BODY, 1)
    assert server.connections == 2


def test_a_source_that_refuses_connections_is_unavailable():
    async def refused() -> None:
        session = lean(aiohttp.ClientSession(), Client(4, 2.0))
        try:
            with pytest.raises(SourceUnavailable):
                await fetch(session, "acute", "GET", "http://127.0.0.1:1/Patient/1")
        finally:
            await close_session(session)

    asyncio.run(refused())


@pytest.mark.parametrize(
    "header",
    [
        {"X-Request-ID": "a\r\nX-Evil: 1"},
        {"X-Request-ID": "a\nX-Evil: 1"},
        {"X-Request-ID": "a\rX-Evil: 1"},
        {"X-Evil: 1\r\nX-Request-ID": "a"},
        {"Accept": "x", "X-Request-ID": "a\n"},
    ],
    ids=["crlf", "lf", "cr", "in-name", "at-end"],
)
def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(header):
    async def injected(session: aiohttp.ClientSession, url: str) -> Any:
        with pytest.raises(ValueError, match="line break"):
            await send(session, "acute", "GET", url, header)
        return await fetch(session, "acute", "GET", url)

    got, server = _run([(OK, False)], injected)
    assert got[0] == BODY
    assert len(server.requests) == 1
    assert b"X-Evil" not in server.requests[0]


@pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present")
def test_outside_records_read_the_same_through_either_client():
    """Data we did not make: the acute simulator serving the Synthea export (records of
    hundreds of resources, answers far larger than the generated ones). Every person it
    lists, listed and read through aiohttp and through the lean client: the same people,
    resources, versions and notes."""
    app = acute.create_app_from_files(SYNTHEA, behaviour=Behaviour())

    async def read(base: str, with_lean: bool) -> list[Any]:
        session = aiohttp.ClientSession()
        if with_lean:
            lean(session, Client(8, 5.0))
        try:
            source = AcuteSource(session, base)
            out: list[Any] = []
            async for p in source.people():
                got = await source.fetch_record(p.local_id, "Patient/p1", None)
                resources = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in got.resources]
                out.append((p.local_id, p.family, resources, got.version, got.skipped, got.notes))
            return out
        finally:
            await close_session(session)

    with run_app(app) as base:
        plain = asyncio.run(read(base, with_lean=False))
        leaned = asyncio.run(read(base, with_lean=True))
    assert len(plain) >= 10
    assert sum(len(r[2]) for r in plain) > 1000  # the whole export, not a sample
    assert leaned == plain


class Held:
    """A raw HTTP/1.1 server that holds each request until ``release`` is set, noting how
    many it held at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0
        self.most = 0
        self.seen: list[bytes] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.seen.append(head.split(b" ")[1])
                self.held += 1
                self.most = max(self.most, self.held)
                await self.release.wait()
                self.held -= 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        await writer.wait_closed()


def _held(script: Callable[[Client, str, Held], Any]) -> Any:
    async def go() -> Any:
        held = Held()
        server = await asyncio.start_server(held.serve, "127.0.0.1", 0)
        client = Client(2, 2.0)
        try:
            base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            return await asyncio.wait_for(script(client, base, held), 10)
        finally:
            client.close()
            server.close()
            held.release.set()
            # each handler ends as the client's connections close: none left pending
            await asyncio.wait_for(asyncio.gather(*held.handlers), 5)

    return asyncio.run(go())


def test_at_most_limit_requests_go_at_once_and_the_others_go_in_the_order_asked():
    async def five(client: Client, base: str, held: Held) -> Any:
        asked = [asyncio.ensure_future(client.request("GET", f"{base}/{n}", {})) for n in range(5)]
        await asyncio.sleep(0.2)
        first = list(held.seen)
        held.release.set()
        answers = await asyncio.gather(*asked)
        return first, held.seen, held.most, [a.body for a in answers]

    first, seen, most, bodies = _held(five)
    assert sorted(first) == [b"/0", b"/1"]  # the limit is 2: the other three wait
    assert seen[2:] == [b"/2", b"/3", b"/4"]
    assert most == 2
    assert bodies == [BODY] * 5


def test_a_request_cancelled_while_waiting_for_a_slot_takes_none_from_the_others():
    async def cancel_waiters(client: Client, base: str, held: Held) -> Any:
        busy = [asyncio.ensure_future(client.request("GET", f"{base}/b{n}", {})) for n in (0, 1)]
        waiting = [asyncio.ensure_future(client.request("GET", f"{base}/w{n}", {})) for n in (0, 1)]
        await asyncio.sleep(0.1)
        waiting[0].cancel()  # still waiting for a slot
        held.release.set()
        await asyncio.sleep(0)  # the busy ones answer; the slot handed to w1 ...
        await asyncio.gather(*busy)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        # ... and afterwards both slots are free again
        return results, await _at_once_after(client, base, held), held.seen

    _w0_cancelled_w1_answered_and_both_slots_free(*_held(cancel_waiters))


async def _at_once_after(client: Client, base: str, held: Held) -> int:
    """How many of two new requests the client sends at once (2 while no slot leaked)."""
    held.release.clear()
    more = [asyncio.ensure_future(client.request("GET", f"{base}/m{n}", {})) for n in (0, 1)]
    await asyncio.sleep(0.1)
    at_once = held.held
    held.release.set()
    await asyncio.gather(*more)
    return at_once


def _w0_cancelled_w1_answered_and_both_slots_free(
    results: list[Any], at_once: int, seen: list[bytes]
) -> None:
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1].body == BODY
    assert b"/w0" not in seen
    assert at_once == 2


def test_a_waiter_handed_a_slot_just_as_it_is_cancelled_passes_the_slot_on():
    async def handed_then_cancelled(client: Client, base: str, held: Held) -> Any:
        waiting: list[asyncio.Future[Any]] = []

        async def first_busy() -> Any:
            answer = await client.request("GET", f"{base}/b0", {})
            # its slot was just handed to w0, whose task has not run since: cancelled
            # now, w0 wakes with its turn done and must pass the slot on, not drop it
            waiting[0].cancel()
            return answer

        busy = [asyncio.ensure_future(first_busy())]
        await asyncio.sleep(0.05)
        busy.append(asyncio.ensure_future(client.request("GET", f"{base}/b1", {})))
        await asyncio.sleep(0.05)
        waiting.extend(
            asyncio.ensure_future(client.request("GET", f"{base}/w{n}", {})) for n in (0, 1)
        )
        await asyncio.sleep(0.1)
        held.release.set()
        await asyncio.gather(*busy)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        return results, await _at_once_after(client, base, held), held.seen

    _w0_cancelled_w1_answered_and_both_slots_free(*_held(handed_then_cancelled))


def test_headers_are_read_by_any_case_decoded_as_latin_1_and_absent_ones_are_the_default():
    from carelink.sources.http1 import Headers

    got = Headers(
        {b"etag": b'"v1"', b"last-modified": b"Wed, 02 Dec 2026 07:00:00 GMT", b"x": b"\xe9"}
    )
    assert got.get("ETag") == got.get("etag") == got["ETAG"] == '"v1"'
    assert got.get("Last-Modified") == "Wed, 02 Dec 2026 07:00:00 GMT"
    assert got.get("X") == "\u00e9"  # Latin-1, as the server sent it
    assert got.get("Content-Length") is None
    assert got.get("Content-Length", "0") == "0"
    assert "etag" in got
    assert "ETag" in got
    assert "Age" not in got
    assert 3 not in got
    with pytest.raises(KeyError):
        got["Age"]


def test_a_session_given_a_lean_client_is_forgotten_when_it_is_collected():
    import gc

    from carelink.sources import http

    async def made() -> int:
        session = aiohttp.ClientSession()
        client = Client()
        lean(session, client)
        assert http.lean_client(session) is client
        await session.close()
        return id(session)

    key = asyncio.run(made())
    gc.collect()
    assert key not in http._LEAN


def test_a_request_head_is_its_line_host_agent_fields_and_length_in_that_order():
    """What goes on the wire, byte for byte: the request line, ``Host``, ``User-Agent``,
    the caller's fields in their order and, with a body, its ``Content-Length``, each
    line ended by CRLF and the head by an empty line; the same again for the next
    request to the same target (its first lines made once). Fails when a line moves,
    goes or loses its ending."""
    fields = {"Accept": "application/fhir+json", "X-Request-ID": "r-1", "Ssp-From": "200000"}

    async def asked(session: aiohttp.ClientSession, url: str) -> list[Any]:
        return [
            await send(session, "gp", "GET", url, fields),
            await send(session, "gp", "POST", url, fields, b'{"a": 1}'),
            await send(session, "gp", "GET", url, {}),
        ]

    got, server = _run([(OK, False)] * 3, asked)
    assert [status for status, _, _ in got] == [200, 200, 200]
    host = server.requests[0].split(b"\r\nHost: ")[1].split(b"\r\n")[0].decode()
    start = f"/Patient/1/$everything HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
    lines = "Accept: application/fhir+json\r\nX-Request-ID: r-1\r\nSsp-From: 200000\r\n"
    heads = [
        f"GET {start}{lines}\r\n",
        f"POST {start}{lines}Content-Length: 8\r\n\r\n",
        f'{{"a": 1}}GET {start}\r\n',  # the scripted server reads heads only: the body first
    ]
    assert server.requests == [h.encode("latin-1") for h in heads]
