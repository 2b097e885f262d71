"""Keeping the index current on a schedule: ``update_from`` again and again, supervised.

``keep_current`` runs an update, then waits ``every`` seconds or until woken
(the feed listener wakes it when it has stored a message that changes
someone), and runs the next. It never ends but by cancellation: a failed
update (a source down, the database away) is logged as one line naming the
kind of failure and never the data, and tried again after a pause that
doubles up to a limit; one line says when updates work again. An update that
left a cursor source behind (more stored than one update reads) is followed at
once by the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from carelink.errors import SourceError
from carelink.federation.update import UpdateReport

log = logging.getLogger("carelink.index")


def _why(exc: BaseException) -> str:
    """What failed, without data: the kind of error, and the source when one failed."""
    if isinstance(exc, SourceError):
        return f"{type(exc).__name__} at {exc.source}"
    return type(exc).__name__


async def keep_current(
    update: Callable[[], Awaitable[UpdateReport]],
    every: float,
    wake: asyncio.Event | None = None,
    backoff: tuple[float, float] = (1.0, 60.0),
    done: Callable[[UpdateReport], None] | None = None,
) -> None:
    """Run ``update`` every ``every`` seconds (sooner when ``wake`` is set) until
    cancelled; ``done`` is told each report (the CLI prints it)."""
    first, longest = backoff
    pause = 0.0
    since = 0.0
    while True:
        if wake is not None:
            wake.clear()  # what is stored from here on is for this update or the next
        try:
            report = await update()
        except Exception as exc:  # supervised: any failure is retried, never fatal
            if not pause:
                since = time.monotonic()
                log.warning("index update failed: %s; retrying until it works", _why(exc))
            pause = min(longest, pause * 2 if pause else first)
            await asyncio.sleep(pause)
            continue
        if pause:
            log.warning("index update works again after %.1f s", time.monotonic() - since)
            pause = 0.0
        if done is not None:
            done(report)
        if report.behind:
            continue
        if wake is None:
            await asyncio.sleep(every)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), every)
