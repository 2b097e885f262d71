"""The MLLP listener: one asyncio server per feed source, storing before acknowledging.

For each block a connection delivers, in order: read it (``intake.read``),
store what is accepted (``FeedStore.apply``, a committed transaction, run in
a worker thread so the event loop keeps serving other connections), and only
then write the acknowledgement. A message that cannot be stored gets no
acknowledgement and its connection is closed: the sender has not been told
anything, so it sends the message again, and a message stored but not yet
acknowledged when the listener stopped is recognised by its control id when
it comes back (AA, nothing changed).

MLLP framing is python-hl7's (``hl7.mllp``): ``<VT> message <FS><CR>``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from carelink.feeds.intake import SEGMENT_SEQUENCE_ERROR, Verdict, bare_ack, read
from carelink.observability.context import instant
from carelink.sources.hl7v2_changes import INDEX_EVENTS
from carelink.storage import FeedStore

log = logging.getLogger("carelink.feed")

#: the largest message accepted (bytes); a bigger block is answered AR and skipped
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def now_instant() -> str:
    """The current time as a FHIR instant (UTC, milliseconds)."""
    return instant(places=3)


def new_ack_id() -> str:
    """A fresh MSH-10 for an acknowledgement (20 characters, the v2.5 length)."""
    return uuid.uuid4().hex[:20]


@dataclass
class Tally:
    """What one listener has answered, by acknowledgement code (for logs and tests)."""

    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    unstored: int = 0

    def add(self, code: str) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1


class FeedListener:
    """Takes one source's feed; ``serve`` binds it to an address."""

    def __init__(
        self,
        store: FeedStore,
        source: str,
        *,
        clock: Callable[[], str] = now_instant,
        ack_ids: Callable[[], str] = new_ack_id,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.clock = clock
        self.ack_ids = ack_ids
        #: told (after the commit) when a stored message changes someone in the index
        self.changed = changed
        self.tally = Tally()
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Start listening; the caller closes the server (``stop``)."""
        server: asyncio.Server = await start_hl7_server(
            self._connected, host, port, limit=MAX_MESSAGE_BYTES
        )
        return server

    async def _connected(self, reader: Any, writer: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        await self.converse(reader, writer)

    async def converse(self, r: Any, w: Any) -> None:
        """Answer each block on one connection until the sender closes it (``r`` and
        ``w``: python-hl7's MLLP stream reader and writer)."""
        try:
            while True:
                try:
                    block: bytes = await r.readblock()
                except asyncio.IncompleteReadError:
                    return  # the sender closed the connection
                except (InvalidBlockError, ValueError):  # no <VT>, or over the size limit
                    verdict = bare_ack("AR", self.ack_ids(), SEGMENT_SEQUENCE_ERROR, "bad framing")
                else:
                    verdict = read(block, self.source, self.clock(), self.ack_ids())
                if not await self._keep(verdict):
                    return
                w.writeblock(verdict.ack)
                await w.drain()
                self.tally.add(verdict.code)
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            w.close()

    async def _keep(self, verdict: Verdict) -> bool:
        """Store an accepted message; False when it could not be stored (no answer)."""
        if verdict.arrival is None:
            log.info(
                "feed message refused",
                extra={"source": self.source, "code": verdict.code, "reason": verdict.reason},
            )
            return True
        try:
            fresh = await asyncio.to_thread(self.store.apply, verdict.arrival)
        except Exception:  # any failure to store means no acknowledgement: the sender resends
            self.tally.unstored += 1
            log.exception("feed message not stored", extra={"source": self.source})
            return False
        if not fresh:
            self.tally.duplicates += 1
        elif self.changed is not None and verdict.arrival.kind in INDEX_EVENTS:
            self.changed()
        return True

    async def stop(self, server: asyncio.Server) -> None:
        """Stop listening and drop every open connection (as a crash would)."""
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()


async def listen_all(
    store: FeedStore,
    addresses: Mapping[str, tuple[str, int]],
    changed: Callable[[], None] | None = None,
) -> list[tuple[FeedListener, asyncio.Server]]:
    """One listener per feed source, each on its own address (``changed``: see
    ``FeedListener``)."""
    out = []
    for source, (host, port) in addresses.items():
        listener = FeedListener(store, source, changed=changed)
        out.append((listener, await listener.serve(host, port)))
        log.info("feed listening", extra={"source": source, "address": f"{host}:{port}"})
    return out
