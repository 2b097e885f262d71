"""``carelink feed listen``: every configured feed's listener, until stopped, and beside
them the ``FeedKeeper`` the caller hands in (the app's: the patient index kept current from
what was stored), woken whenever a listener has stored a message that changes someone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from carelink.errors import ConfigError
from carelink.feeds.listener import listen_all
from carelink.settings import Settings
from carelink.storage import Database, FeedStore

#: runs beside the listeners until cancelled; the event is set when a change is stored
FeedKeeper = Callable[[Database, asyncio.Event], Coroutine[Any, Any, None]]


def listen_until_stopped(settings: Settings, keeper: FeedKeeper | None = None) -> int:
    """Bind each ``mllp://`` source's address and take its feed until SIGINT or SIGTERM."""
    addresses = settings.feeds()
    if not addresses:
        raise ConfigError(
            "no feed to take: name a source as name=mllp://host:port in CARELINK_SOURCES"
        )
    db = Database(settings.database_url)
    db.migrate()
    try:
        asyncio.run(_serve(db, addresses, keeper))
    finally:
        db.dispose()
    return 0


async def _serve(
    db: Database, addresses: dict[str, tuple[str, int]], keeper: FeedKeeper | None
) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    changed = asyncio.Event()
    running = await listen_all(FeedStore(db), addresses, changed.set)
    keeping = asyncio.create_task(keeper(db, changed)) if keeper is not None else None
    for source, (host, port) in addresses.items():
        print(f"carelink feed: {source} listening on mllp://{host}:{port}", flush=True)
    try:
        await stopped.wait()
    finally:
        if keeping is not None:
            keeping.cancel()
            with contextlib.suppress(BaseException):
                await keeping
        for listener, server in running:
            with contextlib.suppress(Exception):
                await listener.stop(server)
