"""``carelink serve --workers N``: new connections spread over the workers, and none
waits for a worker that is not there, also after a worker dies or all are replaced.

Each worker listens on a socket of its own (``start.listening_sockets``). With the one
socket uvicorn shares, whichever worker woke first accepted every waiting connection:
64 keep-alive connections opened at once mostly all landed on one worker, and its
clients waited behind each other while the other worker idled.

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
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support.procs import carelink, free_port, own_files, running, workers_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

#: connections opened at once; each worker of two is expected to hold at least FLOOR
#: (binomially, fewer than 12 of 64 on one of two sockets has odds below one in 10^7)
CONNECTIONS = 64
FLOOR = 12
#: with three workers: a burst of BURST, each worker expected to hold FLOOR_OF_THREE
#: (fewer than 10 of 96 on one of three sockets: odds about one in 10^7)
BURST = 96
FLOOR_OF_THREE = 10
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


def listening(workers: set[int], port: int) -> bool:
    """Does every worker hold a listening socket on ``port``?"""
    ours = _sockets_on(port, "0A")
    return all(_inodes_of(pid) & ours for pid in workers)


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


def sockets_in_order(parent: int, port: int) -> list[str]:
    """The inodes of the server's listening sockets in the order they were made (the
    parent holds them all, made one after another: by file descriptor)."""
    ours = _sockets_on(port, "0A")
    return [inode for _, inode in sorted(_socket_fds(parent).items()) if inode in ours]


def holders(parent: int, port: int) -> dict[str, set[int]]:
    """Each listening socket of the server (by inode, all of them) and the workers that
    listen on it."""
    workers = workers_of(parent)
    listened = {pid: _inodes_of(pid) for pid in workers}
    return {
        inode: {pid for pid in workers if inode in listened[pid]}
        for inode in sockets_in_order(parent, port)
    }


def _spread(parent: int, port: int, n: int, floor: int) -> None:
    """Every listening socket has a worker, ``n`` connections opened at once are each
    answered, and the workers of each socket together hold at least ``floor`` of them
    (with a worker a socket: each worker holds that many)."""
    by_socket = holders(parent, port)
    assert all(by_socket.values()), f"a socket without a worker: {by_socket}"
    workers = workers_of(parent)
    with connections(port, n):
        counts = held(workers, port)
    assert sum(counts.values()) == n, counts
    shares = [sum(counts[pid] for pid in pids) for pids in by_socket.values()]
    assert min(shares) >= floor, f"connections per socket: {shares}"


def test_connections_opened_at_once_spread_over_the_workers(server):
    pid, port = server
    for _ in range(3):  # three bursts, each spread (a shared socket gave 64/0 in most)
        _spread(pid, port, CONNECTIONS, FLOOR)


def test_a_replaced_worker_serves_the_socket_of_the_one_it_replaces(server):
    pid, port = server
    first = workers_of(pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: _replaced(pid, port, {victim}), "replacement")
    # a socket left without a worker would keep about half of these waiting: every one
    # is answered, and both workers (the survivor and the replacement) hold a share
    _spread(pid, port, CONNECTIONS, FLOOR)
    before = workers_of(pid)
    os.kill(pid, signal.SIGHUP)  # uvicorn replaces every worker in turn
    _wait_for(lambda: _replaced(pid, port, before), "restart", seconds=180)
    _spread(pid, port, CONNECTIONS, FLOOR)


def test_two_workers_killed_at_once_each_leave_their_socket_to_a_replacement(tmp_path):
    """Of three workers, the two on the second and third sockets are killed together
    (so no replacement finds its socket by being first in line): once both are
    replaced, each socket again has one live worker, and a burst of connections is
    answered in full and spread over all three (a socket left without a worker would
    keep its third waiting; two workers on one socket would leave another so)."""
    with serving(tmp_path, 3) as (pid, port):
        order = sockets_in_order(pid, port)
        assert len(order) == 3
        before = holders(pid, port)
        assert all(len(pids) == 1 for pids in before.values()), before
        victims = before[order[1]] | before[order[2]]
        for victim in victims:
            os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: _replaced(pid, port, victims, 3), "two replacements")
        after = holders(pid, port)
        assert after[order[0]] == before[order[0]]  # the survivor kept its socket
        assert all(len(pids) == 1 for pids in after.values()), after
        _spread(pid, port, BURST, FLOOR_OF_THREE)


def test_a_worker_added_beyond_the_sockets_shares_the_socket_fewest_listen_on(tmp_path):
    """``SIGTTIN`` makes uvicorn's supervisor add a worker: with every socket taken,
    it shares the socket the fewest workers listen on (``OwnSockets._next_slot``), so
    two added to two workers leave two on each socket, and every connection of a
    burst is answered, each socket's workers holding a share."""
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
        shared = holders(pid, port)
        assert sorted(len(pids) for pids in shared.values()) == [2, 2], shared
        _spread(pid, port, CONNECTIONS, FLOOR)


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
