"""The HTTP server's own input bound: request heads (line and headers) are limited
before they are parsed into memory.

uvicorn's httptools protocol keeps reading a request head for as long as the
client sends one (50 MB of headers were accepted); h11's has a limit
(``h11_max_incomplete_event_size``). ``BoundedHttpTools`` applies that same
limit to httptools: a head still incomplete after that many bytes is answered
431 and the connection closed. ``carelink serve`` uses it with the limit from
``CARELINK_MAX_HEADER_BYTES`` (the app's ``BoundedInput`` answers 431 too, for
any server).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROTOCOL = "carelink.serving:BoundedHttpTools"
DEFAULT_LIMIT = 64 * 1024
REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\n"
    b"connection: close\r\n\r\n"
    b"the request headers are too large"
)


class BoundedHttpTools(HttpToolsProtocol):
    """httptools, with a request head of at most ``config.h11_max_incomplete_event_size``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        """A new request: its head starts here."""
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        """The head is complete: the body is bounded by the app, not here."""
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that is still incomplete past the limit."""
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_LIMIT
        if self._head_bytes > limit:
            self._in_head = False
            self.transport.write(REFUSAL)
            self.transport.close()
