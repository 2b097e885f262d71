"""The server sends each answer in as few writes as it can, and the same bytes as uvicorn.

``BoundedHttpTools`` (what ``carelink serve`` runs) holds a response's head until the
first part of its body and writes the two together. The guarantee: for every kind of
answer (a whole body, a body in parts, an empty body, ``HEAD``, a ``304``, a request
that asked for ``100 Continue``, pipelined requests) the bytes on the connection are
exactly those uvicorn's own protocol sends, and a response sent whole is one write.
Both protocols run here on the same real event loop against a transport that records
what is written (the transport is asyncio's part, not ours).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from carelink.serving import BoundedHttpTools


class Recording(asyncio.Transport):
    """A transport that keeps each write as it comes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers by path: ``/whole``, ``/parts``, ``/empty``, ``/304``, ``/echo``."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/304":
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"1"')]})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/parts":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first,", "more_body": True})
        await send({"type": "http.response.body", "body": b"second", "more_body": False})
        return
    answer = {"/whole": b"a whole body", "/empty": b"", "/echo": body}.get(path, b"?")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


async def _exchanged(protocol_class: type[HttpToolsProtocol], sent: bytes) -> Recording:
    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Recording()
    protocol.connection_made(transport)
    protocol.data_received(sent)
    for _ in range(200):  # let the answers run to their end
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def _exchange(protocol_class: type[HttpToolsProtocol], sent: bytes) -> Recording:
    return asyncio.run(_exchanged(protocol_class, sent))


CASES = {
    "whole": b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n",
    "parts": b"GET /parts HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty": b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n",
    "head": b"HEAD /whole HTTP/1.1\r\nHost: x\r\n\r\n",
    "304": b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\n",
    "close": b"GET /whole HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http10": b"GET /whole HTTP/1.0\r\n\r\n",
    "continue": b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "pipelined": b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\nGET /parts HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_bytes_as_uvicorn_sends(case: str) -> None:
    ours = _exchange(BoundedHttpTools, CASES[case])
    theirs = _exchange(HttpToolsProtocol, CASES[case])
    assert b"".join(ours.writes) == b"".join(theirs.writes)
    assert b"".join(ours.writes).startswith(b"HTTP/1.1 ")
    assert ours.closed == theirs.closed
    assert len(ours.writes) <= len(theirs.writes)


def test_a_whole_answer_is_one_write() -> None:
    ours = _exchange(BoundedHttpTools, CASES["whole"])
    theirs = _exchange(HttpToolsProtocol, CASES["whole"])
    assert len(theirs.writes) == 2  # uvicorn: the head, then the body
    assert len(ours.writes) == 1
    assert ours.writes[0].endswith(b"\r\n\r\na whole body")


def test_a_body_in_parts_starts_with_the_head_and_keeps_its_parts() -> None:
    ours = _exchange(BoundedHttpTools, CASES["parts"])
    assert len(ours.writes) == 2  # the head with the first part, then the second with the end
    assert ours.writes[0].startswith(b"HTTP/1.1 200 ")
    assert ours.writes[0].endswith(b"first,\r\n")
