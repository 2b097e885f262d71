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
GET = b"GET /fhir/metadata HTTP/1.1\r\nHost: gateway\r\n\r\n"


def _inodes_of(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


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


def _answered(sock: socket.socket, timeout: float) -> bool:
    """Send a request on ``sock``; was a status line read back within ``timeout``?"""
    sock.settimeout(timeout)
    sock.sendall(GET)
    try:
        return sock.recv(12).startswith(b"HTTP/1.1 200")
    except TimeoutError:
        return False


@contextmanager
def connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections opened at once, each answered once (so each is accepted)."""
    with ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(n)
        ]
        answered = [_answered(s, 10.0) for s in socks]
        assert all(answered), f"{answered.count(False)} of {n} connections were not answered"
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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A gateway with two workers on SQLite: (parent pid, port), once both workers serve."""
    port = free_port()
    args = ["serve", "--workers", "2", "--port", str(port)]
    with running(args, f"http://127.0.0.1:{port}/fhir/metadata", _settings(tmp_path)) as p:
        _wait_for(
            lambda: len(workers_of(p.pid)) == 2 and listening(workers_of(p.pid), port),
            "two workers listening",
        )
        yield p.pid, port


def _wait_for(check: object, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {seconds} s")


def _replaced(pid: int, port: int, gone: set[int]) -> bool:
    """Are there two workers again, none of ``gone``, each with a listening socket?"""
    now = workers_of(pid)
    return len(now) == 2 and not now & gone and listening(now, port)


def _both_hold_some(pid: int, port: int) -> None:
    workers = workers_of(pid)
    with connections(port, CONNECTIONS):
        counts = held(workers, port)
    assert sum(counts.values()) == CONNECTIONS, counts
    assert min(counts.values()) >= FLOOR, f"connections per worker: {sorted(counts.values())}"


def test_connections_opened_at_once_spread_over_the_workers(server):
    pid, port = server
    for _ in range(3):  # three bursts, each spread (a shared socket gave 64/0 in most)
        _both_hold_some(pid, port)


def test_a_replaced_worker_serves_the_socket_of_the_one_it_replaces(server):
    pid, port = server
    first = workers_of(pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: _replaced(pid, port, {victim}), "replacement")
    # a socket left without a worker would keep about half of these waiting: every one
    # is answered, and both workers (the survivor and the replacement) hold a share
    _both_hold_some(pid, port)
    before = workers_of(pid)
    os.kill(pid, signal.SIGHUP)  # uvicorn replaces every worker in turn
    _wait_for(lambda: _replaced(pid, port, before), "restart", seconds=180)
    _both_hold_some(pid, port)


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
