"""Readiness: does the gateway's database answer, within a bound?

The check runs on a worker thread; an answer later than ``timeout`` counts as
not ready. At most one check is in flight: while a slow one is still running,
further probes are answered "not ready" at once instead of stacking threads up
behind a database that does not answer. Changes are logged (once each way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from carelink.observability.logs import READINESS

_log = logging.getLogger(READINESS)


class Readiness:
    """``await ready()`` is True when ``check()`` returned within ``timeout`` seconds."""

    def __init__(self, check: Callable[[], None], timeout: float = 1.0) -> None:
        self.check = check
        self.timeout = timeout
        self._running: asyncio.Future[None] | None = None
        self._was_ready = True

    async def ready(self) -> bool:
        """Run the check (or find the last one still running) and say whether it passed."""
        if self._running is not None and not self._running.done():
            return self._note(False, "the previous check has not finished")
        self._running = asyncio.ensure_future(asyncio.to_thread(self.check))
        self._running.add_done_callback(_retrieved)
        try:
            await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            return self._note(False, f"no answer within {self.timeout:g} s")
        except Exception as exc:
            return self._note(False, type(exc).__name__)
        return self._note(True, None)

    def _note(self, ready: bool, why: str | None) -> bool:
        if ready != self._was_ready:
            self._was_ready = ready
            if ready:
                _log.info("database ready")
            else:
                _log.warning("database not ready", extra={"fields": {"reason": why}})
        return ready


def _retrieved(done: asyncio.Future[None]) -> None:
    """A check that outlived its probe: its outcome is read here, so asyncio does not
    report an exception nobody retrieved (the probe that gave up already answered)."""
    if not done.cancelled():
        done.exception()
