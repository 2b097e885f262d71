"""The server's own bounds against slow and silent clients, on a real ``carelink serve``
process and real sockets: a request head must arrive within ``CARELINK_HEADER_TIMEOUT``
(else 408 and closed), an idle keep-alive connection is closed after
``CARELINK_KEEPALIVE_TIMEOUT``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.procs import free_port, running

HEAD_TIMEOUT = 1.0
KEEPALIVE = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("serving")
    port = free_port()
    env = {
        "CARELINK_DATABASE_URL": str(tmp / "gateway.db"),
        "CARELINK_AUTH": "development",
        "CARELINK_HEADER_TIMEOUT": str(HEAD_TIMEOUT),
        "CARELINK_KEEPALIVE_TIMEOUT": str(KEEPALIVE),
    }
    with running(["serve", "--port", str(port)], f"http://127.0.0.1:{port}/livez", env):
        yield "127.0.0.1", port


def _until_closed(conn: socket.socket, limit: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed
    (seconds from now); fails if it is still open after ``limit``."""
    conn.settimeout(limit)
    started = time.monotonic()
    received = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def test_a_silent_connection_is_answered_408_and_closed(server):
    with socket.create_connection(server) as conn:
        received, after = _until_closed(conn)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert HEAD_TIMEOUT * 0.8 <= after <= HEAD_TIMEOUT + 1.5


def test_half_a_head_then_nothing_is_answered_408_and_closed(server):
    with socket.create_connection(server) as conn:
        conn.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        received, after = _until_closed(conn)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in received.lower()
    assert after <= HEAD_TIMEOUT + 1.5


def test_a_head_trickled_byte_by_byte_is_cut_off_all_the_same(server):
    """Slowloris: every byte arriving in time does not restart the clock."""
    head = b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 100
    with socket.create_connection(server) as conn:
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > HEAD_TIMEOUT + 0.5:
                break
        received, _ = _until_closed(conn) if not closed else (b"HTTP/1.1 408 ", 0.0)
        took = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 ")
    assert took <= HEAD_TIMEOUT + 2.0


def test_complete_requests_are_served_and_an_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(server) as conn:
        for _ in range(2):  # the second head on the same connection gets its own clock
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            conn.settimeout(5)
            answer = b""
            while not answer.endswith(b"\r\n\r\nok\n"):
                answer += conn.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(HEAD_TIMEOUT * 0.6)  # idle, within the keep-alive time
        received, after = _until_closed(conn)
    assert received == b""  # closed quietly: it was idle, not in the middle of a request
    assert after <= KEEPALIVE + 1.5


def test_half_a_head_after_a_complete_request_on_the_same_connection_is_cut_off(server):
    """A head that comes whole in one read needs no clock; one that does not gets it,
    on a connection already used for a request as on a new one."""
    with socket.create_connection(server) as conn:
        conn.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        conn.settimeout(5)
        answer = b""
        while not answer.endswith(b"\r\n\r\nok\n"):
            answer += conn.recv(4096)
        conn.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        received, after = _until_closed(conn)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert after <= HEAD_TIMEOUT + 1.5
