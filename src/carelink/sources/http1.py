"""A lean HTTP/1.1 client for the sources' requests on the hot path.

``$everything`` asks each of the person's sources once, on the gateway's one event
loop. Through aiohttp one such request costs the loop ~316,000 instructions (request
and response objects, header multidicts, timers, the stream reader); an
``asyncio.Protocol`` per keep-alive connection whose answers ``httptools`` parses (the
parser the gateway's own server uses) costs ~68,000 (``benchmarks/source_client.py``).
This is that client, for plain ``http://`` URLs whose request target is printable
ASCII; anything else (TLS, with its client certificates; a URL it would have to
quote) stays with aiohttp (``Client.takes``).

What it does, as aiohttp did for these requests: connections kept alive and reused
(at most ``limit`` requests at once, each on a connection of its own; an idle
connection kept at most ``keepalive`` seconds), a connect that takes longer than
``connect_timeout`` fails, bodies by ``Content-Length``, chunked or until the
connection closes, as ``httptools`` reads them. It asks for no compression, so the
body is the source's bytes as sent. A connection whose answer was not read whole (a
failure, the caller cancelled) is closed, never reused. A header name or value with
a CR or LF is refused before anything is sent.

Every failure to make the request or read its answer is an ``Http1Error`` (the
adapters' ``fetch`` turns it into ``SourceUnavailable``); the status is the caller's
to judge.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from carelink import __version__

USER_AGENT = f"carelink/{__version__}"


class Http1Error(Exception):
    """The request could not be made, or its answer not read whole."""


class Headers:
    """An answer's headers, names compared without case (the last of a repeated name).

    Kept as the bytes read (names lower-cased), each value decoded (Latin-1) when asked
    for: an answer carries half a dozen headers and its reader asks for one or two."""

    def __init__(self, items: dict[bytes, bytes]) -> None:
        self._items = items  # names lower-cased

    def get(self, name: str, default: Any = None) -> Any:
        """The value of header ``name``, or ``default``."""
        value = self._items.get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower().encode("latin-1")].decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower().encode("latin-1") in self._items


@dataclass(frozen=True)
class Answer:
    """A source's answer: its status, headers and whole body."""

    status: int
    headers: Headers
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time, its answer parsed by httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._headers: dict[bytes, bytes] = {}
        self._chunks: list[bytes] = []
        self._until_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an ``asyncio.Transport`` subclass)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Http1Error(f"unreadable answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and exc is None:  # a body without a length ends here
            self.reusable = False
            self._answered()
        self._fail(Http1Error("connection lost before the whole answer"))

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self._headers = {}
        self._chunks = []
        self._until_close = False

    def on_headers_complete(self) -> None:
        coded = b"chunked" in self._headers.get(b"transfer-encoding", b"").lower()
        bodiless = self.parser.get_status_code() in (204, 304)
        self._until_close = not (coded or bodiless or b"content-length" in self._headers)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        self._until_close = False
        self._answered()

    def _answered(self) -> None:
        answer = Answer(
            self.parser.get_status_code(), Headers(self._headers), b"".join(self._chunks)
        )
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(answer)

    def _fail(self, exc: Http1Error) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


@lru_cache(maxsize=4096)
def _target(url: str) -> tuple[str, int, str, str] | None:
    """(host, port, Host header, request target) of a plain-HTTP URL it can send as it
    is, else None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password:
        return None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not all(33 <= ord(c) < 127 for c in target):
        return None  # aiohttp would quote it: left to aiohttp
    try:
        port = parts.port or 80
    except ValueError:
        return None
    return parts.hostname, port, parts.netloc, target


@lru_cache(maxsize=4096)
def _start(method: str, found: tuple[str, int, str, str]) -> str:
    """The request line, ``Host`` and ``User-Agent`` of a request (each line ended), made
    once per method and target; a method or host holding a line break is refused."""
    start = f"{method} {found[3]} HTTP/1.1\r\nHost: {found[2]}\r\nUser-Agent: {USER_AGENT}\r\n"
    if start.count("\r") != 3 or start.count("\n") != 3:
        raise ValueError("a request line or Host holds a line break")
    return start


class Client:
    """Keep-alive connections to the sources' hosts, at most ``limit`` requests at once."""

    def __init__(
        self,
        limit: int = 64,
        connect_timeout: float | None = None,
        keepalive: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.clock = clock
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        #: requests under way, at most ``limit``; the rest wait their turn in order
        self._busy = 0
        self._turns: deque[asyncio.Future[None]] = deque()

    @staticmethod
    def takes(url: str) -> bool:
        """Does this client send requests to ``url`` (plain HTTP, a target as it is)?"""
        return _target(url) is not None

    #: where a request to a URL goes (host, port, ``Host`` header, request target), or
    #: None when this client does not send it (``takes``): hand it to ``request``
    target = staticmethod(_target)

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
        found: tuple[str, int, str, str] | None = None,
    ) -> Answer:
        """Send one request and read its whole answer (``Http1Error`` when either fails);
        ``found``: ``target(url)``, when the caller has it already."""
        if found is None:
            found = _target(url)
        if found is None:
            raise ValueError(f"not a plain-HTTP URL this client sends as it is: {url!r}")
        host, port = found[0], found[1]
        fields = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        # each field's own CR and LF are the only ones in them
        if fields.count("\r") != len(headers) or fields.count("\n") != len(headers):
            raise ValueError("a header name or value holds a line break")
        length = "" if body is None else f"Content-Length: {len(body)}\r\n"
        head = f"{_start(method, found)}{fields}{length}\r\n".encode("latin-1")
        data = head if body is None else head + body
        # a slot, counted here (no semaphore's coroutines for a request that need not wait)
        if self._busy < self.limit and not self._turns:
            self._busy += 1
        else:
            await self._wait_turn()
        try:
            conn = self._take((host, port)) or await self._connect(host, port)
            loop = asyncio.get_running_loop()
            conn.waiter = loop.create_future()
            try:
                assert conn.transport is not None
                conn.transport.write(data)
                answer = await conn.waiter
            except BaseException:  # failed or cancelled: its answer may be half read
                conn.close()
                raise
            conn.waiter = None
            if conn.reusable and not conn.closed:
                conn.idle_since = self.clock()
                self._idle.setdefault((host, port), []).append(conn)
            else:
                conn.close()
            return answer
        finally:
            self._leave()

    async def _wait_turn(self) -> None:
        """Wait until a finishing request hands this one its slot (in the order asked)."""
        turn = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # handed a slot just as it was cancelled: pass it on
            elif turn in self._turns:  # not yet passed over by a finishing request
                self._turns.remove(turn)
            raise

    def _leave(self) -> None:
        """A request is over: its slot to the first still waiting, else free."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._busy -= 1

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        oldest = self.clock() - self.keepalive
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= oldest:
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, host, port)
        except TimeoutError:
            raise Http1Error(f"no connection to {host}:{port} within the time") from None
        except OSError as exc:
            raise Http1Error(f"no connection to {host}:{port} ({type(exc).__name__})") from exc
        return conn

    def close(self) -> None:
        """Close every idle connection (those in use close when their answer is read)."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
