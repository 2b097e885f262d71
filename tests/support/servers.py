"""Serve an ASGI app with a real uvicorn server in a background thread.

For tests that need real HTTP (sockets, headers, status codes) against an
app built in the test process, so the test can still reach into it (a
simulator's ``Behaviour``, say). httpx's own suite runs its test server the
same way. Whole-system tests start separate processes instead
(``tests.support.procs``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def run_app(app: Any, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` on a free loopback port until the block ends; yields its base URL.

    The socket is bound before uvicorn starts, so no other process can take
    the port in between.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn for {app!r} exited before it started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn for {app!r} not started within {timeout} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
