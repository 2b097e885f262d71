"""A TCP proxy the test controls, between a gateway and its database.

It forwards bytes both ways until told otherwise:

- ``kill()``: the database is down: every connection is cut and the port refuses
  new ones (the listening socket is closed);
- ``freeze()``: the database stalls: connections stay open (and new ones are
  accepted) but no byte goes through, either way;
- ``lose()``: the connections open now are lost without a word (a network path that
  died, a server host gone): nothing is closed, what either side sends on them is
  dropped, for good (with ``requests=True`` only the database's answers: what the
  client sends still reaches it); new connections wait as in ``freeze`` until ``resume``;
- ``resume()``: back to normal (after a kill, the same port listens again; connections
  lost stay lost);
- ``allow(n)``: accept ``n`` more connections, then close each new one at once
  (a database that lets some processes in and not others).

It runs its own event loop in a thread, so a test drives it with plain calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._allowed: int | None = None
        #: each connection's number; those below ``_lost_below`` are lost (``lose``)
        self._made = 0
        self._lost_below = 0
        self._requests_lost = True

    # -- control, from the test's thread ---------------------------------------------

    def start(self, port: int = 0) -> int:
        """Listen on ``port`` (0: a free one); the port."""
        self._thread.start()
        self.port = port
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self._call(self._listen())
        return self.port

    def kill(self) -> None:
        """Cut every connection and refuse new ones."""
        self._call(self._kill())

    def freeze(self) -> None:
        """Hold every byte, both ways, on every connection, until ``resume``."""
        self._call(self._set_flowing(False))

    def lose(self, requests: bool = True) -> None:
        """Lose every open connection silently (their bytes dropped from now on, both
        ways or, ``requests=False``, only the database's answers; nothing closed) and hold
        new ones until ``resume``."""
        self._call(self._lose(requests))

    def resume(self) -> None:
        """Forward again (and listen again after a kill)."""
        self._call(self._resume())

    def allow(self, connections: int | None) -> None:
        """Accept this many more connections, then close new ones at once (None: all)."""
        self._call(self._set_allowed(connections))

    def stop(self) -> None:
        """Close everything and stop the thread."""
        self._call(self._kill())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- the proxy itself, on its own loop -------------------------------------------

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, reuse_address=True
        )

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _lose(self, requests: bool) -> None:
        await self._set_flowing(False)
        self._lost_below = self._made
        self._requests_lost = requests

    async def _set_allowed(self, connections: int | None) -> None:
        self._allowed = connections

    async def _resume(self) -> None:
        await self._set_flowing(True)
        if self._server is None:
            await self._listen()

    async def _kill(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._allowed is not None:
            if self._allowed <= 0:
                writer.transport.abort()
                return
            self._allowed -= 1
        self.accepted += 1
        number = self._made
        self._made += 1
        self._writers.add(writer)
        assert self._flowing is not None
        try:
            await self._flowing.wait()  # a frozen database does not answer a new client
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, number, False)),
            asyncio.create_task(self._pump(up_reader, writer, number, True)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.transport.abort()
                self._writers.discard(w)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        number: int,
        answers: bool,
    ) -> None:
        """Forward one way: the database's ``answers``, or the client's requests."""
        assert self._flowing is not None

        def lost() -> bool:
            return number < self._lost_below and (answers or self._requests_lost)

        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await reader.read(65536)
                if not data:
                    if lost() and answers:  # the database's goodbye never arrives
                        await asyncio.Event().wait()
                    # the client's does, once it has closed its end: as when the path
                    # comes back (else each lost connection kept a backend for good, and
                    # the server ran out of them)
                    return
                if number >= self._lost_below:
                    await self._flowing.wait()
                if lost():
                    continue  # read and dropped, never delivered
                writer.write(data)
                await writer.drain()


@contextmanager
def proxy_to(host: str, port: int) -> Iterator[TcpProxy]:
    """A started ``TcpProxy`` to ``host:port`` for the length of the block."""
    proxy = TcpProxy(host, port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def with_host(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user, database and options kept): the
    database's URL as it is reached through a proxy."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))
