"""The audit trail's writer in a process of its own, so appends never hold the server's GIL.

Appending a batch is a few small SQLite (or PostgreSQL) calls and a sync to
disk. On a thread of the gateway's process each of those calls gives the GIL
up and must win it back from the busy event loop, which can take a whole
switch interval (5 ms) each time: under load a commit that needs a fraction of
a millisecond of disk took 12 ms, and the requests waiting for it with it. A
child process has its own interpreter, so the loop only writes one frame and
reads one back per batch.

The parent (``WriterProcess``) starts ``python -m carelink.audit.writer FD``
with one end of a socket pair, sends it the ``WriterSpec`` (where the database
and the checkpoints are), then one frame per batch; the child answers each
frame once its events are committed (durable) or could not be, in order. The
child exits when the socket closes, so it never outlives the gateway process.
If it dies, the batch under way fails (the requests fail closed, as with any
audit failure) and the next batch starts a new child.

Frames, both ways: one kind byte, a 4-byte big-endian length, the payload.
To the child: ``S`` the spec (JSON), ``R`` a batch of rows (``rows_frame``:
each AuditEvent's bytes with the columns stored beside it, read from the event
here, so the child stores the very bytes and parses none of them again; what
the events of a request share, once), ``T``
a checkpoint tick. From the child: ``K`` done (JSON), or ``E`` failed (a short
reason, never the data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from carelink.audit.events import Row, row_of
from carelink.errors import AuditError
from carelink.storage.audit_store import Shared

Json = dict[str, Any]
_HEAD = struct.Struct(">cI")
_SIZE = struct.Struct(">I")
#: a frame larger than this is refused (a batch of events is far smaller)
MAX_FRAME = 256 * 1024 * 1024


@dataclass(frozen=True)
class WriterSpec:
    """What the child needs to open the trail: the database and the checkpoint settings
    (``keys`` is None for no checkpoints)."""

    database_url: str
    connect_timeout: float = 5.0
    statement_timeout: float | None = None
    keys: str | None = None
    checkpoints: str | None = None
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 3600.0


class _Channel(asyncio.Protocol):
    """The parent's end of the child's socket: each frame written with a future, and the
    child's answers (which come in the order of the frames) read as they arrive, each
    given to the oldest future waiting. One protocol on the event loop instead of a
    stream reader and writer, a lock and two reads a batch: a batch's answer costs one
    callback (benchmarks/README.md, "The request envelope")."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[tuple[bytes, bytes]]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def call(self, kind: bytes, payload: bytes) -> asyncio.Future[tuple[bytes, bytes]]:
        """Send one frame; the child's answer to it, (kind, body), when it comes."""
        answer: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            answer.set_exception(EOFError())
            return answer
        self.transport.write(_HEAD.pack(kind, len(payload)) + payload)
        self._waiting.append(answer)
        return answer

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEAD.size:
            kind, size = _HEAD.unpack_from(buffer)
            if size > MAX_FRAME:
                self._fail(ValueError("frame too large"))
                if self.transport is not None:
                    self.transport.close()
                return
            end = _HEAD.size + size
            if len(buffer) < end:
                return
            body = bytes(buffer[_HEAD.size : end])
            del buffer[:end]
            if self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():  # else its caller stopped waiting (cancelled)
                    waiter.set_result((kind, body))

    def eof_received(self) -> bool:
        self._fail(EOFError())
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc if exc is not None else EOFError())

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


class WriterProcess:
    """Group commit's back end: each batch committed by the writer child, awaited here."""

    def __init__(self, spec: WriterSpec, python: str = sys.executable) -> None:
        self.spec = spec
        self.python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: _Channel | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Start the child now (else the first batch starts it)."""
        await self._ensure()

    async def record(self, events: Sequence[Json | Row]) -> None:
        """Return once the child has committed ``events`` (each a dict, or a row already
        serialised); ``AuditError`` if it could not."""
        await self._call(b"R", rows_frame(events))

    async def tick(self) -> None:
        """Ask the child to write a checkpoint if one is due."""
        await self._call(b"T", b"")

    async def _call(self, kind: bytes, payload: bytes) -> Any:
        channel = await self._ensure()
        try:
            # frames in flight are answered in order, each to its own future
            answer, body = await channel.call(kind, payload)
        except (OSError, EOFError, ValueError) as exc:
            self._stop(grace=0.0)
            raise AuditError("audit writer process is not answering") from exc
        if answer != b"K":
            raise AuditError(f"audit trail unavailable ({body.decode(errors='replace')})")
        return orjson.loads(body)

    async def _ensure(self) -> _Channel:
        channel = self._channel
        if (
            channel is not None
            and not channel.closed
            and self._proc is not None
            and self._proc.poll() is None
        ):
            return channel
        self._stop(grace=0.0)
        self._proc, ours = _spawn(self.python)
        self._sock = ours
        loop = asyncio.get_running_loop()
        transport, channel = await loop.create_unix_connection(_Channel, sock=ours)
        self._channel = channel
        spec = orjson.dumps(asdict(self.spec))
        transport.write(_HEAD.pack(b"S", len(spec)) + spec)
        return channel

    def _stop(self, grace: float = 10.0) -> None:
        if self._channel is not None and self._channel.transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop has already closed
                self._channel.transport.close()
        if self._sock is not None:
            # shut down now, so the child sees the end at once: closing alone does not
            # end it while the event loop's transport still holds the socket (uvloop
            # keeps its own reference until the transport's close has run)
            with contextlib.suppress(OSError):  # the child has gone already
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self._channel = self._sock = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                # the child exits when its socket closes; at most a moment is waited for
                # that, then it is asked to stop (a commit under way is one transaction:
                # it is in the trail whole or not at all, and nobody awaits it any more)
                self._proc.wait(timeout=min(grace, 0.5))
            if self._proc.poll() is None:
                self._proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=grace)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Close the socket; the child commits nothing more and exits."""
        self._stop()


def _spawn(python: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start the child with one end of a new socket pair; the process and our end."""
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [python, "-m", "carelink.audit.writer", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
    except OSError as exc:
        ours.close()
        raise AuditError("audit writer process could not start") from exc
    finally:
        theirs.close()
    return proc, ours


def _child_env() -> dict[str, str]:
    """This environment, with the folder this ``carelink`` was imported from first on the
    child's path (it may have come from ``sys.path`` rather than an installed package)."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def rows_frame(events: Sequence[Json | Row]) -> bytes:
    """The ``R`` payload: the size of a JSON array, that array, then bytes one after
    another (each event a row already serialised, ``RequestEvents.rows``, or a dict
    serialised here). The array holds the byte counts of each shared part's fragments
    (``storage.audit_store.Shared``), then each event's columns and, for an event whole,
    its byte count, for an event in pieces its part's number (-1 the first, -2 ...) and
    its pieces' counts. The bytes: each event's in turn, a part's fragments before the
    pieces of the first event that names it."""
    rows = [e if isinstance(e, tuple) else row_of(e) for e in events]
    parts: dict[tuple[bytes, ...], int] = {}
    shapes: list[list[int]] = []
    heads: list[list[Any]] = []
    chunks: list[bytes] = []
    for recorded, patient, outcome, agent, body in rows:
        if isinstance(body, bytes):
            heads.append([recorded, patient, outcome, agent, len(body)])
            chunks.append(body)
            continue
        fragments, fills = body
        k = parts.get(fragments)
        if k is None:
            k = parts[fragments] = len(shapes)
            shapes.append([len(f) for f in fragments])
            chunks += fragments
        heads.append([recorded, patient, outcome, agent, -1 - k, *[len(f) for f in fills]])
        chunks += fills
    head = orjson.dumps([shapes, heads])
    return _SIZE.pack(len(head)) + head + b"".join(chunks)


def frame_rows(payload: bytes) -> list[Row]:
    """The rows of an ``R`` payload (``ValueError`` if it does not add up). Each count is
    checked to be a whole number, never negative; the bytes are cut in turn, and a count
    running past the end shows at the end, where the cuts must meet the payload's end."""
    (size,) = _SIZE.unpack_from(payload)
    at = _SIZE.size + size
    shapes, heads = orjson.loads(payload[_SIZE.size : at])
    parts: list[tuple[bytes, ...]] = []
    rows: list[Row] = []
    add = rows.append
    for recorded, patient, outcome, agent, n, *counts in heads:
        if n >= 0:
            counts = [n]
        else:
            k = -1 - n
            if k == len(parts):
                if k >= len(shapes):
                    raise ValueError("rows frame names a part it does not describe")
                counts = [*shapes[k], *counts]
            elif k > len(parts):
                raise ValueError("rows frame names a part not yet sent")
        pieces = []
        for c in counts:
            if not isinstance(c, int) or c < 0:
                raise ValueError("rows frame does not add up")
            pieces.append(payload[at : at + c])
            at += c
        if n >= 0:
            add((recorded, patient, outcome, agent, pieces[0]))
            continue
        if k == len(parts):  # the part's fragments first, then the event's own pieces
            shape = len(shapes[k])
            parts.append(tuple(pieces[:shape]))
            pieces = pieces[shape:]
        add((recorded, patient, outcome, agent, Shared(parts[k], tuple(pieces))))
    if at != len(payload):
        raise ValueError("rows frame does not add up")
    return rows


# --- the child ---------------------------------------------------------------------------


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _frame(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, size = _HEAD.unpack(_read_exact(sock, _HEAD.size))
    if size > MAX_FRAME:
        raise EOFError
    return kind, _read_exact(sock, size)


def _send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(_HEAD.pack(kind, len(payload)) + payload)


def _open(spec: WriterSpec) -> Any:
    """The trail the spec names (imports here: only the child needs the storage stack)."""
    from carelink.audit.checkpoints import Checkpointer, load_key
    from carelink.audit.trail import AuditTrail
    from carelink.storage import Database
    from carelink.storage.audit_store import AuditStore

    db = Database(
        spec.database_url,
        connect_timeout=spec.connect_timeout,
        statement_timeout=spec.statement_timeout,
    )
    checkpointer = (
        Checkpointer(
            Path(spec.checkpoints or "."),
            load_key(Path(spec.keys)),
            spec.checkpoint_every,
            spec.checkpoint_seconds,
            time.time,
        )
        if spec.keys is not None
        else None
    )
    return AuditTrail(AuditStore(db), checkpointer), db


def serve(sock: socket.socket) -> None:
    """The child's loop: the spec, then one answer per frame until the socket closes."""
    try:
        kind, body = _frame(sock)
    except EOFError:
        return
    if kind != b"S":
        return
    trail, db = _open(WriterSpec(**orjson.loads(body)))
    try:
        while True:
            try:
                kind, body = _frame(sock)
            except (EOFError, OSError):
                return
            try:
                if kind == b"R":
                    seq, head = trail.append_rows(frame_rows(body))
                    _send(sock, b"K", orjson.dumps([seq, head]))
                    trail.settle()  # the patient index's next block, once answered
                elif kind == b"T":
                    _send(sock, b"K", orjson.dumps(trail.tick()))
                else:
                    _send(sock, b"E", b"unknown frame")
            except AuditError as exc:
                _send(sock, b"E", str(exc).encode())
            except (ValueError, TypeError, struct.error):
                _send(sock, b"E", b"unreadable batch")
    finally:
        trail.store.close()
        db.dispose()


def main(argv: Sequence[str]) -> None:
    """``python -m carelink.audit.writer FD``: serve the socket inherited as ``FD``."""
    # Ctrl-C reaches the whole process group: the gateway closes the socket when it
    # stops, and the child finishes the batch under way and exits then, not midway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=int(argv[1])) as sock:
        serve(sock)


if __name__ == "__main__":
    main(sys.argv)
    # Everything is committed and the database closed. The interpreter's own teardown
    # (freeing the storage stack's modules: a quarter of a second, more on a busy host)
    # would only keep the stopping gateway waiting for this process.
    os._exit(0)
