"""``carelink feed listen``: every configured feed's listener, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from carelink.errors import ConfigError
from carelink.feeds.listener import listen_all
from carelink.settings import Settings
from carelink.storage import Database, FeedStore


def listen_until_stopped(settings: Settings) -> int:
    """Bind each ``mllp://`` source's address and take its feed until SIGINT or SIGTERM."""
    addresses = settings.feeds()
    if not addresses:
        raise ConfigError(
            "no feed to take: name a source as name=mllp://host:port in CARELINK_SOURCES"
        )
    db = Database(settings.database_url)
    db.migrate()
    try:
        asyncio.run(_serve(FeedStore(db), addresses))
    finally:
        db.dispose()
    return 0


async def _serve(store: FeedStore, addresses: dict[str, tuple[str, int]]) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    running = await listen_all(store, addresses)
    for source, (host, port) in addresses.items():
        print(f"carelink feed: {source} listening on mllp://{host}:{port}", flush=True)
    try:
        await stopped.wait()
    finally:
        for listener, server in running:
            with contextlib.suppress(Exception):
                await listener.stop(server)
