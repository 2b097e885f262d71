"""The tamper-evident trail: append (group commit) and write checkpoints as it grows.

Rows are chained by hash (``storage.audit_store``); signed checkpoints
(``audit.checkpoints``) are kept outside the database; ``audit.verify``
checks both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carelink.audit.checkpoints import Checkpointer, sign
from carelink.audit.events import Row, row_of
from carelink.errors import AuditError
from carelink.storage.audit_store import AuditStore

Json = dict[str, Any]
#: a batch this large is committed without gathering more (the gateway's bound): its
#: commit (the sync to disk) is shared enough already; about five searches' events
GATHER_EVENTS = 64


class Serving:
    """How many requests this process is serving now (the gateway's front layer counts
    them): the most a gathering batch could still be joined by. A window is waited only
    while more requests are in flight than the batch holds, so a lone request is never
    kept waiting for others that do not exist."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0


class AuditTrail:
    """Writes events durably; any failure is an ``AuditError`` (the request fails closed)."""

    def __init__(self, store: AuditStore, checkpointer: Checkpointer | None = None) -> None:
        self.store = store
        self.checkpointer = checkpointer

    def record(self, events: Sequence[Json | Row]) -> tuple[int, str]:
        """Append AuditEvents (their columns read from themselves; each a dict, or a row
        already serialised, ``RequestEvents.rows``); the new head."""
        try:
            rows = [e if isinstance(e, tuple) else row_of(e) for e in events]
        except Exception as exc:
            raise AuditError("audit trail unavailable") from exc
        return self.append_rows(rows)

    def append_rows(self, rows: Sequence[Row]) -> tuple[int, str]:
        """Append events already serialised with their columns (``AuditStore.append_rows``:
        the writer child's frame, a plain tuple each); the new head. A checkpoint follows
        when one is due; if it cannot be written the events stay stored but the request
        fails closed all the same: a trail that silently stopped being checkpointed would
        lose its protection against truncation unnoticed."""
        try:
            seq, head = self.store.append_rows(rows)
            if self.checkpointer is not None:
                self.checkpointer.after_append(seq, head)
        except Exception as exc:  # any storage failure means: do not answer
            raise AuditError("audit trail unavailable") from exc
        return seq, head

    def settle(self) -> int:
        """Write the patient index's next block if it is due (``AuditStore.settle``),
        after the answers that waited for the appends; events it covered (0 if none, or
        if it failed: the tail is scanned meanwhile and the next call tries again)."""
        try:
            return self.store.settle()
        except Exception:  # derived data: nothing depends on it being written now
            return 0

    def tick(self) -> bool:
        """Write a checkpoint if the interval has passed and the trail grew."""
        if self.checkpointer is None:
            return False
        try:
            return self.checkpointer.tick(self.store.head())
        except Exception as exc:
            raise AuditError("audit checkpoint could not be written") from exc

    def checkpoint(self, key: Ed25519PrivateKey) -> Json:
        """The signed head, to be kept elsewhere."""
        seq, head = self.store.head()
        return sign(key, seq, head)


class Committer(Protocol):
    """Where group commit sends each batch: a thread of this process (``OnThread``) or
    the writer process (``audit.writer.WriterProcess``)."""

    async def record(self, events: Sequence[Json | Row]) -> None:
        """Return once ``events`` (dicts, or rows already serialised) are durable;
        ``AuditError`` if they could not be."""

    async def tick(self) -> None:
        """Write a checkpoint if one is due (``AuditError`` if it could not be)."""

    def close(self) -> None:
        """Release the trail's connection and whatever runs the appends."""


class OnThread:
    """Appends on one dedicated thread of this process: while the thread waits for the
    disk the event loop goes on serving, but every database call hands the GIL over."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")

    async def record(self, events: Sequence[Json | Row]) -> None:
        """Append on the writer thread."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.trail.record, events)
        self._writer.submit(self.trail.settle)  # after the answer, before the next batch

    async def tick(self) -> None:
        """A checkpoint if due, on the writer thread (never racing an append's own)."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.trail.tick)

    def close(self) -> None:
        """Close the store's connection on the thread that made it, then stop that thread."""
        self._writer.submit(self.trail.store.close).result()
        self._writer.shutdown(wait=True)


def _time_out(*groups: list[asyncio.Future[None]]) -> None:
    """A commit took ``GroupCommit.timeout``: its requests, and those queued behind it,
    fail closed."""
    failure = AuditError("audit trail did not answer in time")
    for waiters in groups:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)


def _end_window(enough: asyncio.Future[None]) -> None:
    if not enough.done():
        enough.set_result(None)


class GroupCommit:
    """Batches the events of concurrent requests into one transaction (group commit).

    Each request awaits the commit that contains its events, so every event
    is durable (synced to disk) before its answer goes out. The commit runs
    elsewhere (``committer``: the writer process, or a thread when given an
    ``AuditTrail``): while it waits for the disk, the event loop goes on
    serving, and the events of every request that finishes meanwhile form the
    next batch. A request waits at most ``timeout`` seconds
    for its commit (a frozen database): then it is an ``AuditError`` and the
    request fails closed, while the commit may still complete later. One timer per
    commit keeps that bound (not one per request): when the first request of a
    commit has waited ``timeout``, that commit's requests and every one queued behind
    it fail, and new ones fail at once until it returns.
    ``observe(seconds, events)`` hears how long each successful commit took and
    how many events it held (the gateway's metrics).

    ``gather`` (seconds, 0: none) is a bounded gathering window: before each commit
    the batch waits up to that long for more events, from the moment the committer is
    free (the previous commit returned, or the first event came), or until
    ``gather_events`` are pending (0: no such bound). Fewer, larger commits, each
    request answered later by at most the window; an answer still waits for the
    commit that holds its events, whatever the window. With ``serving`` (the requests
    the process is serving now), a window is waited only while more requests are in
    flight than the batch holds, and ends once as many are in it: a request served
    alone is committed at once.
    """

    def __init__(
        self,
        trail: AuditTrail | Committer,
        observe: Callable[[float, int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        timeout: float = 10.0,
        gather: float = 0.0,
        gather_events: int = 0,
        serving: Serving | None = None,
    ) -> None:
        self.committer: Committer = OnThread(trail) if isinstance(trail, AuditTrail) else trail
        self.observe = observe
        self.clock = clock
        self.timeout = timeout
        self.gather = gather
        self.gather_events = gather_events
        self.serving = serving
        #: set while a batch gathers: done once ``gather_events`` are pending
        self._enough: asyncio.Future[None] | None = None
        self._pending: list[Json | Row] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._batch_started = 0.0
        self._queued_since = 0.0
        self.commits = 0

    async def record(self, events: Sequence[Json | Row]) -> None:
        """Return once ``events`` (AuditEvents as dicts, or rows already serialised,
        ``RequestEvents.rows``) are committed; ``AuditError`` if they could not be."""
        loop = asyncio.get_running_loop()
        if self._flushing is not None and loop.time() - self._batch_started > self.timeout:
            # the commit under way is stuck (a frozen database): fail at once
            raise AuditError("audit trail did not answer in time")
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._waiters:
            self._queued_since = loop.time()  # the first of the next batch: its deadline
        self._pending.extend(events)
        self._waiters.append(waiter)
        enough = self._enough
        if enough is not None and not enough.done() and self._full():
            enough.set_result(None)  # the batch is full: its window ends now
        if self._flushing is None:
            self._batch_started = loop.time()  # the clock of the stuck-commit check
            self._flushing = asyncio.create_task(self._flush())
        # the commit goes on if the wait ends; its outcome then finds the waiter done
        # (timed out, or cancelled with its request) and leaves it as it is
        await waiter

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self.gather > 0:
                    await self._gathered(loop)
                batch, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                started = self.clock()
                self._batch_started = loop.time()
                # due when the batch's first request has waited ``timeout``; those queued
                # meanwhile wait behind this commit, so a stuck one fails them too
                timer = loop.call_at(
                    self._queued_since + self.timeout, _time_out, waiters, self._waiters
                )
                try:
                    await self.committer.record(batch)
                except AuditError as exc:
                    for w in waiters:
                        if not w.done():
                            w.set_exception(exc)
                else:
                    self.commits += 1
                    if self.observe is not None:
                        self.observe(self.clock() - started, len(batch))
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
                finally:
                    timer.cancel()
        finally:
            self._flushing = None

    async def _gathered(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for more events: at most ``gather`` seconds, less once ``gather_events``
        are pending."""
        if self._full():
            return
        enough: asyncio.Future[None] = loop.create_future()
        self._enough = enough
        timer = loop.call_later(self.gather, _end_window, enough)
        try:
            await enough
        finally:
            timer.cancel()
            self._enough = None

    def _full(self) -> bool:
        """Whether the gathering batch need wait no longer: ``gather_events`` pending, or
        every request in flight already in it."""
        if 0 < self.gather_events <= len(self._pending):
            return True
        return self.serving is not None and self.serving.now <= len(self._waiters)

    async def checkpoints(self, every: float) -> None:
        """Run until cancelled: every ``every`` seconds, a checkpoint if one is overdue
        (where the appends run, so it never races an append's own checkpoint)."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.committer.tick()
            except AuditError:
                continue  # tried again next time; appends keep failing closed meanwhile

    def close(self) -> None:
        """Stop whatever runs the appends (its connection closed where it was made)."""
        self.committer.close()
