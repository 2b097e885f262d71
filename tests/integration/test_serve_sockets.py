"""``carelink serve --workers N``: new connections shared fairly by the workers, and
none waits for a worker that is not there or does not answer, also after a worker dies,
stalls, or all are replaced.

Invariant: of connections opened at once, each worker accepts an even share (one
socket shared, each connection to the worker holding fewest: ``carelink.accepting``),
and every connection is answered. Before, with a socket per worker, the kernel split
them by a hash (16 +- 3 of 32, 9/23 seen) and the busier worker's clients set the p99;
with the one socket uvicorn shares, the worker that woke first took them all.

Which worker holds a connection is read from ``/proc`` (the connection's socket inode
in ``/proc/net/tcp`` and in the worker's open files), so these run on Linux only.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest

from tests.support.procs import carelink, free_port, own_files, running, workers_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

#: connections opened at once
CONNECTIONS = 64
#: how far from an even share a worker may be in a burst opened at once: a connection
#: the worker with fewest has not taken within ``accepting.GRACE`` (its loop busy on a
#: loaded machine) is taken by another
SLACK = 8
#: connections opened one after another, each answered before the next: with every
#: worker idle when each arrives, the shares differ by at most one (a socket per worker,
#: before, split such a series by the kernel's hash: 16 +- 3 of 32)
SERIES = 32
#: with three and four workers
BURST = 96
GET = b"GET /fhir/metadata HTTP/1.1\r\nHost: gateway\r\n\r\n"


def _socket_fds(pid: int) -> dict[int, str]:
    """A process's open sockets: file descriptor -> socket inode."""
    out = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            out[int(fd.name)] = target[8:-1]
    return out


def _inodes_of(pid: int) -> set[str]:
    return set(_socket_fds(pid).values())


def _sockets_on(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets whose local port is ``port`` in ``state`` (01:
    established, 0A: listening)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                out.add(fields[9])
    return out


def _watched(pid: int) -> set[int]:
    """The file descriptors a process's event loop waits on (its epoll sets)."""
    out: set[int] = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            lines = info.read_text().splitlines()
        except OSError:
            continue  # closed meanwhile
        out.update(int(line.split()[1]) for line in lines if line.startswith("tfd:"))
    return out


def listening(workers: set[int], port: int) -> bool:
    """Is every worker accepting on ``port``: its event loop waiting on the listening
    socket? (A worker holds the socket from its start, long before it serves.)"""
    ours = _sockets_on(port, "0A")
    for pid in workers:
        fds = {fd for fd, inode in _socket_fds(pid).items() if inode in ours}
        if not fds & _watched(pid):
            return False
    return True


def held(workers: set[int], port: int) -> dict[int, int]:
    """How many of the server's established connections each worker holds."""
    ours = _sockets_on(port, "01")
    return {pid: len(_inodes_of(pid) & ours) for pid in workers}


def _answer(sock: socket.socket, deadline: float) -> str:
    """The status line read back on ``sock`` by ``deadline`` (``time.monotonic``), or
    what came instead (``"timeout"``, ``"closed"``)."""
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        head = sock.recv(64)
    except TimeoutError:
        return "timeout"
    return head.split(b"\r\n", 1)[0].decode(errors="replace") if head else "closed"


@contextmanager
def connections(port: int, n: int, wait: float = 60.0) -> Iterator[list[socket.socket]]:
    """``n`` connections opened at once, each sending a request at once (a worker still
    starting answers it when it serves; sent later, one a worker accepted would wait
    for its head past the server's limit, a 408), each answered within ``wait`` s."""
    with ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(n)
        ]
        for sock in socks:
            sock.sendall(GET)
        deadline = time.monotonic() + wait
        answers = Counter(_answer(s, deadline) for s in socks)
        assert answers == {"HTTP/1.1 200 OK": n}, f"the answers to {n} connections: {answers}"
        yield socks


def _settings(tmp_path: Path) -> dict[str, str]:
    return {
        "CARELINK_DATABASE_URL": str(tmp_path / "index.db"),
        "CARELINK_AUTH": "development",
        "CARELINK_LOG_LEVEL": "warning",
        # a burst's first connections stay open while the last are answered, however
        # slowly a busy machine answers them
        "CARELINK_KEEPALIVE_TIMEOUT": "300",
        **own_files(tmp_path),
    }


@contextmanager
def serving(tmp_path: Path, workers: int) -> Iterator[tuple[int, int]]:
    """A gateway with ``workers`` workers on SQLite: (parent pid, port), once each
    worker serves a socket of its own."""
    port = free_port()
    args = ["serve", "--workers", str(workers), "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/fhir/metadata"
    with running(args, ready, _settings(tmp_path), output=tmp_path / "serve.log") as p:
        _wait_for(
            lambda: len(workers_of(p.pid)) == workers and listening(workers_of(p.pid), port),
            f"{workers} workers listening",
        )
        yield p.pid, port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A gateway with two workers on SQLite: (parent pid, port), once both workers serve."""
    with serving(tmp_path, 2) as found:
        yield found


def _wait_for(check: object, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {seconds} s")


def _replaced(pid: int, port: int, gone: set[int], n: int = 2) -> bool:
    """Are there ``n`` workers again, none of ``gone``, each with a listening socket?"""
    now = workers_of(pid)
    return len(now) == n and not now & gone and listening(now, port)


def _even(parent: int, port: int, n: int) -> dict[int, int]:
    """``n`` connections opened at once are each answered, and each worker holds its
    even share of them, give or take ``SLACK``: the connections each worker holds."""
    workers = workers_of(parent)
    with connections(port, n):
        counts = held(workers, port)
    assert sum(counts.values()) == n, counts
    share = n / len(workers)
    assert all(abs(c - share) <= SLACK for c in counts.values()), (
        f"connections per worker: {sorted(counts.values())}, an even share {share:g}"
    )
    return counts


def _fair(parent: int, port: int, n: int = SERIES) -> None:
    """``n`` connections opened one after another, each answered before the next is
    opened and all kept open: the workers' shares differ by at most one."""
    workers = workers_of(parent)
    with ExitStack() as stack:
        for _ in range(n):
            stack.enter_context(connections(port, 1))
        counts = held(workers, port)
    assert sum(counts.values()) == n, counts
    assert max(counts.values()) - min(counts.values()) <= 1, (
        f"connections per worker, opened one at a time: {sorted(counts.values())}"
    )


def test_connections_are_shared_evenly_by_the_workers(server):
    pid, port = server
    for _ in range(3):  # each series even to one (a socket each: 16 +- 3 of 32)
        _fair(pid, port)
    for _ in range(3):  # and bursts opened at once, near even
        _even(pid, port, CONNECTIONS)


def test_connections_kept_open_count_against_their_worker(server):
    """Connections a worker already holds count: a second burst while the first is
    open evens the totals, not the burst."""
    pid, port = server
    workers = workers_of(pid)
    with connections(port, CONNECTIONS // 2):
        first = held(workers, port)
        with connections(port, CONNECTIONS // 2):
            both = held(workers, port)
    assert sum(first.values()) == CONNECTIONS // 2, first
    assert all(abs(c - CONNECTIONS / 2) <= SLACK for c in both.values()), (first, both)


def test_a_stalled_worker_delays_new_connections_and_never_keeps_them(server):
    """A worker that stops running (SIGSTOP: its loop stalled, its process alive, and
    holding fewest) keeps no new connection: each waits at most ``accepting.GRACE``
    and the other worker takes it. With a socket per worker, the kernel left the
    stalled worker's share waiting in its queue until it ran again."""
    pid, port = server
    workers = workers_of(pid)
    with connections(port, 2):  # one each, or both on one: the other then holds fewest
        before = held(workers, port)
        stalled = min(workers, key=lambda w: before[w])
        (other,) = workers - {stalled}
        os.kill(stalled, signal.SIGSTOP)
        try:
            with connections(port, CONNECTIONS // 2, wait=30):
                counts = held(workers, port)
        finally:
            with suppress(ProcessLookupError):  # replaced meanwhile by the supervisor
                os.kill(stalled, signal.SIGCONT)
    assert counts[stalled] == before[stalled], (before, counts)
    assert counts[other] == before[other] + CONNECTIONS // 2, (before, counts)


def test_a_replaced_worker_takes_its_share(server):
    pid, port = server
    first = workers_of(pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: _replaced(pid, port, {victim}), "replacement")
    # the dead worker's slot is taken over: the survivor and the replacement share evenly
    _fair(pid, port)
    _even(pid, port, CONNECTIONS)
    before = workers_of(pid)
    os.kill(pid, signal.SIGHUP)  # every worker replaced in turn
    _wait_for(lambda: _replaced(pid, port, before), "restart", seconds=180)
    _fair(pid, port)
    _even(pid, port, CONNECTIONS)


def test_two_workers_killed_at_once_leave_three_even_shares(tmp_path):
    """Of three workers, two are killed together: once both are replaced, a burst of
    connections is answered in full and shared evenly by all three (a dead worker's
    count, left in its slot, would keep the others from taking connections)."""
    with serving(tmp_path, 3) as (pid, port):
        _even(pid, port, BURST)
        victims = set(sorted(workers_of(pid))[1:])
        for victim in victims:
            os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: _replaced(pid, port, victims, 3), "two replacements")
        _fair(pid, port, 30)
        _even(pid, port, BURST)


def test_workers_added_take_their_share(tmp_path):
    """``SIGTTIN`` makes the supervisor add a worker: two added to two share a burst
    four ways."""
    with serving(tmp_path, 2) as (pid, port):
        for n in (3, 4):
            before = workers_of(pid)
            os.kill(pid, signal.SIGTTIN)
            _wait_for(
                lambda n=n, before=before: (
                    len(workers_of(pid)) == n
                    and before < workers_of(pid)
                    and listening(workers_of(pid), port)
                ),
                f"{n} workers",
            )
        _fair(pid, port)
        _even(pid, port, BURST)


def test_a_port_in_use_is_one_line_and_the_configuration_exit_code(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = carelink(["serve", "--workers", "2", "--port", str(port)], _settings(tmp_path))
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"carelink: configuration error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
