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
import logging
import pickle
import socket
import time

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from carelink.accepting import FairProcess, Loads
from carelink.anonymise.keys import load_master_key
from carelink.app import create_app
from carelink.assembly import checkpointer_of, export_paths, sources_open
from carelink.errors import ConfigError
from carelink.observability import log_config
from carelink.serving import PROTOCOL
from carelink.settings import Settings
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
        checkpointer_of(settings)  # the audit checkpoint key (production: must exist)
        _, master = export_paths(settings)
        load_master_key(master, create=settings.mode != "production")
        return db.migrate()
    finally:
        db.dispose()


async def check_sources(settings: Settings, db: Database) -> dict[str, str]:
    """``confirm_kinds`` for the configured sources, over sessions of its own."""
    async with sources_open(settings, db) as sources:
        return await confirm_kinds(sources)


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
        # a worker has this long to start (and to answer the supervisor's ping): uvicorn's
        # 5 s was too short for a worker loading the gateway on a busy host, and a SIGHUP
        # restart then kept the old workers
        timeout_worker_healthcheck=30,
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
    sock = listening_socket(config)
    supervisor = FairShare(config, sock)
    host, port = sock.getsockname()[:2]
    logging.getLogger("uvicorn.error").info(
        "serving on %s:%d, %d workers, each new connection to the worker holding fewest",
        host,
        port,
        workers,
    )
    try:
        supervisor.run()
    finally:
        sock.close()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise WorkerFailed(f"worker process {failed[0]} could not start (see above)")


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The socket every worker listens on (``carelink.accepting`` shares its
    connections fairly), bound here and listened on by the first worker that serves, so
    a client is refused, not kept waiting, until one does; ``ConfigError`` if the
    address is taken."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    sock = socket.socket(family=family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


class FairShare(Multiprocess):
    """uvicorn's supervisor, its workers accepting on one socket in fair shares
    (``carelink.accepting``: each new connection to the worker holding fewest).

    Every worker it makes, at the start, as a replacement, in a restart (SIGHUP) or
    added (SIGTTIN), is a ``FairProcess`` on the one ``Loads``; a worker that exits
    leaves its slot to whichever worker starts next."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        self.loads = Loads(max(16, 4 * config.workers))
        super().__init__(config, [sock])

    def _make(self) -> Process:
        process = FairProcess(self.config, self.sockets, self.loads)
        process.start()
        return process

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self._make())

    def handle_ttin(self) -> None:
        logging.getLogger("uvicorn.error").info("Received SIGTTIN, adding a worker.")
        self.processes_num += 1
        self.processes.append(self._make())

    def restart_all(self) -> None:
        """Replace each worker in turn (SIGHUP), each replacement serving before the
        worker it replaces stops; a replacement not ready in time ends the restart."""
        for idx, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._make()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    logging.getLogger("uvicorn.error").error(
                        "worker process %s was not ready in time; keeping worker %s",
                        new.pid,
                        old.pid,
                    )
                return
            old.terminate()
            old.join()
            self.processes[idx] = new

    def keep_subprocess_alive(self) -> None:
        """Replace each worker that has exited or stopped answering; stop the server if
        one exited before it served (``STARTUP_FAILURE``: every replacement would fail
        the same way).

        uvicorn's own check pings each worker and waits for the answer for the whole
        health-check timeout (30 s here): the supervisor holds both ends of the pipe, so a
        worker that exits with the ping unanswered gives no end-of-file, and an operator
        whose workers could not start waited 30 s to be told. ``answers`` waits in short
        slices and gives up as soon as the worker's process has exited."""
        if self.should_exit.is_set():
            return
        for idx, worker in enumerate(self.processes):
            if answers(worker, self.config.timeout_worker_healthcheck):
                continue
            worker.kill()
            worker.join()
            if worker.exitcode == STARTUP_FAILURE:
                logging.getLogger("uvicorn.error").error(
                    "worker process %s could not start; stopping the server", worker.pid
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logging.getLogger("uvicorn.error").info(
                "worker process %s stopped (exit code %s); starting another",
                worker.pid,
                worker.exitcode,
            )
            self.processes[idx] = self._make()


def answers(worker: Process, timeout: float, slice_s: float = 0.1) -> bool:
    """Whether ``worker``'s process is running and answers a ping within ``timeout``
    seconds; False as soon as the process is seen to have exited."""
    if not worker.process.is_alive():
        return False
    deadline = time.monotonic() + timeout
    try:
        worker.parent_conn.send(b"ping")
        while not worker.parent_conn.poll(slice_s):
            if not worker.process.is_alive() or time.monotonic() >= deadline:
                return False
        worker.parent_conn.recv()
    except (OSError, EOFError, pickle.UnpicklingError):
        return False
    return True
