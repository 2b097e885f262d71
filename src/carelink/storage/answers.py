"""Waiting for PostgreSQL's answers on libpq's own API, for a bounded time.

The request path's reads (``storage.hot``) and the audit append (``storage.audit_store``)
talk to libpq directly. libpq's own waits have no end: a connection lost without a word
(a network path that died, a server host frozen while its kernel still acknowledges)
keeps a blocking call waiting for good, and with it the thread or the writer process
that made it. Here every wait for the socket has a deadline; past it the wait is
``NoAnswer``, and the connection is not to be used again (its answer may still come, to
a later statement's wait). The server's own statement timeout ends a statement that is
merely slow well before: the bound here is for a database that cannot be heard at all.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from psycopg.errors import _WaitTimeout
from psycopg.pq import ExecStatus

PIPELINE_SYNC = ExecStatus.PIPELINE_SYNC

#: seconds past the statement timeout a statement's answer is waited for: the server
#: cancels a statement at its timeout and says so, so an answer later than this will
#: not come
MARGIN = 1.0


class NoAnswer(psycopg.OperationalError):
    """The database did not answer in time: the connection is to be dropped."""


class BoundedConnection(psycopg.Connection[Any]):
    """psycopg's connection, each wait for the server (every statement a cursor runs,
    every commit) ending after ``limit`` seconds: then the connection is closed (its
    state is unknown: a statement may have run) and ``NoAnswer`` raised, which
    SQLAlchemy takes for a lost connection (it replaces the pool's connections made
    before it). ``limit`` None: as long as it takes; a connection may say so for a
    while (``unbounded``: a lock that is waited for on purpose). A subclass per
    database sets ``limit`` and ``lost`` (``bounded_connection``)."""

    limit: float | None = None
    #: told when a wait ended unanswered (the database's count of losses)
    lost: Any = None
    #: called before each commit, which it may refuse by raising (``Database``'s check
    #: that the call committing has not been given up on)
    before_commit: Any = None
    #: set while a statement is to be waited for however long it takes
    unbounded = False

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is None and not self.unbounded:
            timeout = self.limit
        try:
            return super().wait(gen, interval, timeout)
        except _WaitTimeout:
            self.pgconn.finish()
            if self.lost is not None:
                self.lost()
            raise NoAnswer("the database did not answer in time") from None

    def commit(self) -> None:
        if self.before_commit is not None:
            self.before_commit()
        super().commit()


def bounded_connection(
    limit: float | None, lost: Any, before_commit: Any = None
) -> type[BoundedConnection]:
    """A ``BoundedConnection`` class waiting at most ``limit`` seconds, telling ``lost``,
    and asking ``before_commit`` before each commit."""
    return type(
        "Bounded",
        (BoundedConnection,),
        {
            "limit": limit,
            "lost": staticmethod(lost),
            "before_commit": None if before_commit is None else staticmethod(before_commit),
        },
    )


def answer_limit(statement_timeout: float | None) -> float | None:
    """How long to wait for a statement's answer: the statement timeout and ``MARGIN``
    (None, no timeout: as long as it takes)."""
    return None if statement_timeout is None else statement_timeout + MARGIN


def ready(fd: int, event: int, timeout: float | None) -> bool:
    """Whether ``fd`` is ready for ``event`` (``select.POLLIN``, ``POLLOUT``; or has
    failed) within ``timeout`` seconds (0: now; None: however long it takes). ``poll``,
    which takes any descriptor (``select`` refuses those from 1,024 on, which a busy
    process reaches)."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


def results(pg: Any, limit: float | None, pipeline: bool = False) -> list[Any]:
    """Send what is queued on ``pg`` and read the results of what was sent, each within
    what is left of ``limit`` seconds (``NoAnswer`` past it): a statement's results until
    libpq says there are no more, or, on a ``pipeline`` (``pipeline_sync`` sent last), every
    statement's up to the sync. The clock is read only when there is something to wait
    for (a read on the lookup path, whose answer is often in by its first look, pays for
    a few calls into libpq and nothing more)."""
    deadline = None if limit is None else time.monotonic() + limit
    while pg.flush():
        _wait(pg, select.POLLOUT, deadline)
    out: list[Any] = []
    busy, get = pg.is_busy, pg.get_result
    while True:
        while busy():
            _wait(pg, select.POLLIN, deadline)
            pg.consume_input()
        result = get()
        if result is None:
            if pipeline:
                continue  # the end of one statement's results
            return out
        if pipeline and result.status == PIPELINE_SYNC:
            return out
        out.append(result)


def _wait(pg: Any, event: int, deadline: float | None) -> None:
    left = None if deadline is None else deadline - time.monotonic()
    if (left is not None and left <= 0) or not ready(pg.socket, event, left):
        raise NoAnswer("the database did not answer in time")
