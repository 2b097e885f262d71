"""The HTTP server's own input bound: request heads (line and headers) are limited
before they are parsed into memory.

uvicorn's httptools protocol keeps reading a request head for as long as the
client sends one (50 MB of headers were accepted); h11's has a limit
(``h11_max_incomplete_event_size``). ``BoundedHttpTools`` applies that same
limit to httptools: a head still incomplete after that many bytes is answered
431 and the connection closed. ``carelink serve`` uses it with the limit from
``CARELINK_MAX_HEADER_BYTES`` (the app's front layer, ``limits.judge``, answers 431 too, for
any server).

It bounds the time to send a head as well: uvicorn closes idle keep-alive
connections (``timeout_keep_alive``) but waits forever for a connection that
sends nothing, or half a head and then nothing (slowloris). A timer runs from
the moment a connection is made (for its first request) or a later request's
first byte arrives until its head is complete; when it fires first, the client
is answered 408 and the connection closed. The bound is ``head_timeout``, by
default ``CARELINK_HEADER_TIMEOUT`` seconds (read from the environment the
``carelink serve`` command validated, as each worker process starts).

And it sends each answer in one write where it can: uvicorn writes a response's
status line and headers when the app starts the response, then the body in a
second write. On a loopback or LAN socket each write is a system call that
carries the packet through the kernel (measured on the lookup: 14% of the
worker's time in those two writes). ``OneWrite`` holds the head until the
first part of the body is sent and writes the two together; the bytes on the
wire are the same.
"""

from __future__ import annotations

import asyncio
import os
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PROTOCOL = "carelink.serving:BoundedHttpTools"
DEFAULT_LIMIT = 64 * 1024
REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\n"
    b"connection: close\r\n\r\n"
    b"the request headers are too large"
)
DEFAULT_HEAD_TIMEOUT = 10.0
HEAD_TIMEOUT_ENV = "CARELINK_HEADER_TIMEOUT"
_LATE = b"the request head took too long"
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_LATE), _LATE)
)


@cache
def configured_head_timeout() -> float:
    """``CARELINK_HEADER_TIMEOUT`` (seconds), or the default when unset or unreadable."""
    try:
        value = float(os.environ.get(HEAD_TIMEOUT_ENV, DEFAULT_HEAD_TIMEOUT))
    except ValueError:
        return DEFAULT_HEAD_TIMEOUT
    return value if value > 0 else DEFAULT_HEAD_TIMEOUT


class _Held:
    """A transport stand-in that keeps what is written (the response head)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _Prefixed:
    """The connection's transport, with ``head`` put before the first thing written."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        self.transport.write(data if head is None else head + data)

    def flush(self) -> None:
        """Write the head if nothing has carried it yet (and the connection is open)."""
        if self.head is not None and not self.transport.is_closing():
            self.write(b"")

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWrite(RequestResponseCycle):
    """uvicorn's request-response cycle, with the response head written together with
    the first part of the body (or alone, if the body turns out empty)."""

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            real, held = self.transport, _Held()
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = real
            self._head = held.data or None
            return
        head, self._head = self._head, None
        if head is None:
            await super().send(message)
            return
        real, prefixed = self.transport, _Prefixed(self.transport, head)
        self.transport = prefixed  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = real
            prefixed.flush()


class BoundedHttpTools(HttpToolsProtocol):
    """httptools, with a request head of at most ``config.h11_max_incomplete_event_size``
    bytes, sent within ``head_timeout`` seconds."""

    #: seconds to send a request head; ``None``: ``CARELINK_HEADER_TIMEOUT``
    head_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._timeout = self.head_timeout or configured_head_timeout()
        self._limit = self.config.h11_max_incomplete_event_size or DEFAULT_LIMIT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: it is waiting for its first head from now on."""
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: no timer outlives its connection."""
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A new request: its head starts here. Its timer starts only if the head is not
        complete in the bytes that began it (``data_received``): a head that comes whole
        in one read, as nearly all do, needs none (the first request's timer runs from
        the connection's start)."""
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        """The head is complete: the body is bounded by the app, not here."""
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:  # the one just made for this request
            self.cycle.__class__ = OneWrite

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        """The head did not arrive in time: 408 and close, unless an earlier request on
        the connection is still being answered (then close once that answer is out)."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self._in_head = False
        self.transport.write(TIMED_OUT)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that is still incomplete past the limit."""
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self._limit:
            self._in_head = False
            self._stop_head_timer()
            self.transport.write(REFUSAL)
            self.transport.close()
        elif self._head_timer is None:  # a head still coming: from now on it has a limit
            self._start_head_timer()
