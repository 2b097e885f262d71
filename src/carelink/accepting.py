"""New connections shared fairly by ``carelink serve --workers N``'s workers.

All workers listen on one socket, and a worker accepts a waiting connection only while
it holds no more connections than any other living worker (``Loads``, counts in memory
the workers share). So 32 keep-alive connections opened at once split 16/16 over two
workers, where the kernel's choice split them by chance: with one socket shared, the
worker that woke first took them all (32/0 in most runs); with a socket per worker
(``SO_REUSEPORT``), by a hash of each connection's addresses, 16 +- 3 (9/23 seen).
Every connection's requests are served by the worker that accepted it, so the clients
of the busier worker waited longest: p99 followed the larger share.

A connection that has waited ``GRACE`` seconds is taken by any worker, and while the
worker with fewest still takes none, one more every tenth of that: so a worker whose
loop is stalled, or that died with few connections before the supervisor replaced it,
delays new connections, never stops them, and a worker only slowed for a moment (a
loaded machine) loses a connection or two of its share, not all that waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Process

#: seconds a waiting connection is left to the worker with fewest connections before any
#: worker takes it
GRACE = 0.5
#: seconds between looks while another worker should take the waiting connection
POLL = 0.002
#: connections accepted at most a wake-up (asyncio's own loop takes up to its backlog)
BATCH = 64
#: accept errors that are the client's (gone before it was accepted), not the server's
_CLIENT_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}

log = logging.getLogger("uvicorn.error")


class Loads:
    """Each worker's count of open connections, in memory the supervisor shares with
    the workers it starts: a slot a worker (its pid and count), written only by that
    worker once claimed. A slot whose process is gone is free again."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._cells = multiprocessing.get_context("spawn").Array("q", 2 * slots)

    def claim(self, pid: int) -> int | None:
        """A slot for worker ``pid`` (count 0), or ``None`` if every slot is held by a
        living worker (that worker then accepts without looking at the others)."""
        with self._cells.get_lock():
            for slot in range(self.slots):
                held = self._cells[2 * slot]
                if held == 0 or held == pid or not _alive(held):
                    self._cells[2 * slot] = pid
                    self._cells[2 * slot + 1] = 0
                    return slot
        return None

    def release(self, slot: int, pid: int) -> None:
        """Give ``slot`` back (a worker stopping)."""
        with self._cells.get_lock():
            if self._cells[2 * slot] == pid:
                self._cells[2 * slot] = 0
                self._cells[2 * slot + 1] = 0

    def add(self, slot: int, delta: int) -> None:
        """The worker of ``slot`` opened (1) or lost (-1) a connection."""
        self._cells[2 * slot + 1] += delta

    def count(self, slot: int) -> int:
        return int(self._cells[2 * slot + 1])

    def fewest(self, slot: int) -> bool:
        """Does the worker of ``slot`` hold no more connections than every other living
        worker? A slot whose worker has exited is freed on the way."""
        mine = self._cells[2 * slot + 1]
        for other in range(self.slots):
            if other == slot:
                continue
            pid = self._cells[2 * other]
            if pid == 0 or self._cells[2 * other + 1] >= mine:
                continue
            if _alive(pid):
                return False
            self.release(other, pid)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user took the number: not a worker
        return False
    return True


class _Accepting:
    """What uvicorn keeps in ``Server.servers`` for the accept loop: ``close`` stops it."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class FairServer(uvicorn.Server):
    """uvicorn's server in a worker, its connections accepted by ``accept`` on the
    shared socket instead of by the event loop's own server."""

    def __init__(self, config: uvicorn.Config, loads: Loads) -> None:
        super().__init__(config)
        self.loads = loads
        self._slot: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup([])  # the app started, no listener made by uvicorn
        if not self.started or sockets is None:
            return
        pid = os.getpid()
        self._slot = self.loads.claim(pid)
        if self._slot is None:
            log.warning("more workers than connection slots: worker %s accepts unbalanced", pid)
        counted = _counted(self.config.http_protocol_class, self.loads, self._slot)

        def protocol() -> asyncio.Protocol:
            return counted(  # type: ignore[no-any-return]
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )

        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.listen(self.config.backlog)  # the first worker to serve opens it
        # closed and awaited at shutdown as the event loop's servers are
        self.servers = [
            _Accepting(loop.create_task(accept(sock, protocol, self.loads, self._slot)))  # type: ignore[misc]
            for sock in sockets
        ]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self._slot is not None:
            self.loads.release(self._slot, os.getpid())


def _counted(cls: type[Any], loads: Loads, slot: int | None) -> type[Any]:
    """``cls`` (the HTTP protocol), counting its connection out of ``slot`` when lost."""
    if slot is None:
        return cls
    held = slot

    class Counted(cls):  # type: ignore[misc]
        def connection_lost(self, exc: Exception | None) -> None:
            loads.add(held, -1)
            super().connection_lost(exc)

    return Counted


async def accept(
    sock: socket.socket,
    protocol: Callable[[], asyncio.Protocol],
    loads: Loads,
    slot: int | None,
) -> None:
    """Accept connections on ``sock`` for as long as the task runs: each while this
    worker holds fewest (``Loads.fewest``) or once a connection has waited ``GRACE``."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    waiting_since: float | None = None
    while True:
        await _readable(loop, sock)
        overdue = False
        if slot is not None and not loads.fewest(slot):
            now = loop.time()
            if waiting_since is None:
                waiting_since = now
            if now - waiting_since < GRACE:
                await asyncio.sleep(POLL)  # the worker with fewest should take it
                continue
            overdue = True  # it has not: take one, and the next after a tenth as long
        else:
            waiting_since = None
        for _ in range(1 if overdue else BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                waiting_since = None  # nothing waits
                break
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                # out of file descriptors or memory: the connection waits for a retry
                log.error("cannot accept a connection: %s", exc.strerror)
                await asyncio.sleep(0.1)
                break
            if slot is not None:
                loads.add(slot, 1)
            try:
                await loop.connect_accepted_socket(protocol, conn)
            except Exception:  # the connection is lost, the server serves on
                if slot is not None:
                    loads.add(slot, -1)
                conn.close()
                log.exception("a connection accepted could not be served")
            if not overdue and slot is not None and not loads.fewest(slot):
                break
        if overdue and waiting_since is not None:
            waiting_since = loop.time() - GRACE * 0.9


def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Future[None]:
    """A future done once ``sock`` has a connection waiting."""
    done: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    done.add_done_callback(lambda _: loop.remove_reader(fd))
    return done


class FairProcess(Process):
    """uvicorn's worker process, its server a ``FairServer`` on the shared ``loads``."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], loads: Loads) -> None:
        self.loads = loads
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = FairServer(self.config, self.loads)
        return self._server
