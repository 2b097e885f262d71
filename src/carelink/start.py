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
import weakref
from collections.abc import Iterator

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

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
    if hasattr(socket, "SO_REUSEPORT"):
        sockets = listening_sockets(config, workers)
    else:  # not on this platform: one socket, shared by every worker
        sockets = [config.bind_socket()] * workers
    supervisor = OwnSockets(config, sockets)
    host, port = supervisor.own[0].getsockname()[:2]
    logging.getLogger("uvicorn.error").info(
        "serving on %s:%d, %d workers each listening on a socket of its own", host, port, workers
    )
    try:
        supervisor.run()
    finally:
        for sock in supervisor.own:
            sock.close()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise WorkerFailed(f"worker process {failed[0]} could not start (see above)")


def listening_sockets(config: uvicorn.Config, n: int) -> list[socket.socket]:
    """One socket per worker, all bound to the configured address with ``SO_REUSEPORT``.

    With one socket shared by every worker, whichever worker wakes first accepts every
    connection waiting: measured with two workers and 32 keep-alive connections opened
    at once (wrk), the split was 32/0 in most runs, for a bare FastAPI app and for the
    gateway alike, and the p99 followed the busier worker. With a socket each, the
    kernel hands each new connection to one of them by a hash of its addresses: 32
    connections split 16 +- 3 (mean difference 5.2, against 19.2 shared, ten runs each).
    ``ConfigError`` if the address is taken (the port of the first socket is used by the
    others, so ``--port 0`` gets one port for all)."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    made: list[socket.socket] = []
    try:
        port = config.port
        for _ in range(n):
            sock = socket.socket(family=family)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((config.host, port))
            port = sock.getsockname()[1]
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in made:
            sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    return made


class OwnSockets(Multiprocess):
    """uvicorn's supervisor, each worker listening on a socket of its own
    (``listening_sockets``), a replacement worker on the socket of the one it replaces.

    The supervisor asks for ``sockets`` each time it makes a worker; the answer is the
    one socket of a slot no living worker holds (the first start, a dead worker's
    replacement) or, while ``restart_all`` replaces each living worker in turn, the slot
    of the worker being replaced. A socket left without a worker would keep its share
    of new connections waiting in its queue, so no slot is ever left empty while
    another has two; a worker added beyond the sockets (``SIGTTIN``) shares the socket
    the fewest workers listen on. Which worker holds which slot is learnt when the
    supervisor has put the worker it made in its list (``_learn``).
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.own = list(sockets)
        self._slot_of: weakref.WeakKeyDictionary[Process, int] = weakref.WeakKeyDictionary()
        self._handed: list[int] = []  # slots given out, in order, for workers not yet learnt
        self._replacing: Iterator[int] | None = None
        super().__init__(config, sockets)

    @property
    def sockets(self) -> list[socket.socket]:
        """The socket of the worker about to be made."""
        slot = self._next_slot()
        self._handed.append(slot)
        return [self.own[slot]]

    @sockets.setter
    def sockets(self, value: list[socket.socket]) -> None:
        self.own = list(value)

    def _learn(self) -> None:
        """Pair the workers made since the last call with the slots handed out for them,
        in order (each worker made is put in ``processes`` before the next is made)."""
        for process in self.processes:
            if process not in self._slot_of and self._handed:
                self._slot_of[process] = self._handed.pop(0)

    def _next_slot(self) -> int:
        self._learn()
        if self._replacing is not None:
            # restart_all: the new worker takes over the slot of the living one it replaces
            idx = next(self._replacing)
            if idx < len(self.processes) and self.processes[idx] in self._slot_of:
                return self._slot_of[self.processes[idx]]
        held = [
            self._slot_of[p] for p in self.processes if p in self._slot_of and p.process.is_alive()
        ]
        free = [slot for slot in range(len(self.own)) if slot not in held]
        if free:
            return free[0]
        # every socket has a worker and one more is asked for (SIGTTIN adds a worker):
        # it shares the socket the fewest listen on
        return min(range(len(self.own)), key=held.count)

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
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[idx] = replacement

    def restart_all(self) -> None:
        """Replace each worker in turn (SIGHUP), each replacement on its worker's slot."""
        self._replacing = iter(range(len(self.processes)))
        try:
            super().restart_all()
        finally:
            self._replacing = None
            self._learn()
            self._handed.clear()  # a replacement that never became ready holds nothing


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
