"""Starting the gateway: everything checked once in the parent, then served.

``carelink serve`` builds the app and opens (and migrates) the database in the
parent process before uvicorn starts any worker, so a bad setting, policy file,
key or database URL is one line and exit code 3, not a worker traceback repeated
by every worker. A worker that still cannot start (the database went away in
between, say) stops the whole server with a non-zero exit code; uvicorn would
otherwise report success, or start it again and again.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from carelink.anonymise.keys import load_master_key
from carelink.app import _checkpointer, _export_paths, create_app, make_sources, open_sessions
from carelink.observability import log_config
from carelink.serving import PROTOCOL
from carelink.settings import Settings
from carelink.sources.http import close_session
from carelink.sources.kind import confirm_kinds, shown
from carelink.storage import Database


class WorkerFailed(RuntimeError):
    """A worker process exited before it served (its own log says why)."""


def preflight(settings: Settings) -> int:
    """Check what every worker will need, in this process; the database's schema version.

    Raises ``ConfigError`` (settings, policy, profiles, keys) or ``StorageUnavailable``
    (the database cannot be reached). The schema is migrated here, once, under the
    migration lock, so workers find it current.
    """
    db = settings.database()  # first: a missing data folder is not made by what follows
    try:
        create_app(settings)  # settings, policy, profiles, PCNs, token issuer keys
        _checkpointer(settings)  # the audit checkpoint key (production: must exist)
        _, master = _export_paths(settings)
        load_master_key(master, create=settings.mode != "production")
        return db.migrate()
    finally:
        db.dispose()


async def check_sources(settings: Settings, db: Database) -> dict[str, str]:
    """``confirm_kinds`` for the configured sources, over sessions of its own."""
    sessions = open_sessions(settings)
    try:
        return await confirm_kinds(make_sources(settings, sessions, db))
    finally:
        for session in sessions.values():
            await close_session(session)


def source_warnings(settings: Settings) -> list[str]:
    """Ask each configured source whether it is its kind of system, before serving.

    Raises ``SourceWrongKind`` (the CLI's exit code 4) for a URL that answers as another
    kind of system; a source that cannot be reached is a warning line, not a refusal
    to start: it may come up later, and until then its part is reported missing.
    """
    db = settings.database()
    try:
        unreachable = asyncio.run(check_sources(settings, db))
    finally:
        db.dispose()
    return [
        f"source {name!r} at {shown(settings.sources[name])}: not reachable now ({why}); "
        "served without it until it answers"
        for name, why in unreachable.items()
    ]


def serve(settings: Settings, host: str, port: int, workers: int, log_level: str = "info") -> None:
    """Serve until stopped; ``WorkerFailed`` if a worker could not start."""
    config = uvicorn.Config(
        "carelink.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=log_config(log_level),
        access_log=False,  # the gateway writes its own access line (carelink.api.observe)
        timeout_keep_alive=settings.keepalive_timeout,
        # request heads are bounded in size and time before they are parsed (carelink.serving)
        http=PROTOCOL,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # the gateway takes nothing from the client's address or X-Forwarded-* (links
        # come from CARELINK_PUBLIC_BASE_URL), so it trusts no proxy headers; and it
        # does not name its server software
        proxy_headers=False,
        server_header=False,
    )
    if workers <= 1:
        server = uvicorn.Server(config)
        try:
            server.run()
        except SystemExit as exc:
            if exc.code == STARTUP_FAILURE:
                raise WorkerFailed("the gateway could not start (see above)") from None
            raise
        if not server.started:
            raise WorkerFailed("the gateway could not start (see above)")
        return
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise WorkerFailed(f"worker process {failed[0]} could not start (see above)")
