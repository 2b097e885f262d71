"""Instructions per source request: what the HTTP client costs the gateway's event loop.

    PYTHONPATH=src .venv/bin/python benchmarks/source_client.py [--port P] [--requests 2000]
        [--body 12000]

``$everything`` asks each of the person's sources once (2.2 requests a record over
``federation_bench.py``'s spread of patients); each request goes through
``sources.http.fetch`` and aiohttp. This counts, under ``valgrind --tool=callgrind``
as ``lookup_instructions.py`` does, the instructions one such request costs the
client process, four in flight over keep-alive connections to a loopback server (a
process of its own, not counted) that answers every GET with the same JSON body and
the headers an adapter reads (``ETag``, ``Last-Modified``, ``Content-Length``):

- ``aiohttp``: ``sources.http.fetch`` on a session made as ``app.open_sessions`` makes
  one (pooled connector, keep-alive, connect timeout), ``ETag`` and ``Last-Modified``
  read from the answer;
- ``bare``: the least a client can do on asyncio: an ``asyncio.Protocol`` per
  connection, the answer parsed by ``httptools`` (the parser uvicorn serves with), the
  connections kept in a list. Not a client to ship (no chunked-body, TLS, limits,
  timeouts or errors handled here): the floor an HTTP/1.1 client written for the
  sources could approach.

The difference, times the source requests per ``$everything``, is what a leaner client
could take off the gateway worker's instructions (``lookup_instructions.py
--everything``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.callgrind import control, counted  # noqa: E402

PATH = "/Patient/acute-1/$everything?_count=1000"


def _body(size: int) -> bytes:
    one = b'{"resource":{"resourceType":"Observation","id":"o%d","status":"final"}}'
    entries: list[bytes] = []
    while sum(map(len, entries)) < size:
        entries.append(one % len(entries))
    return b'{"resourceType":"Bundle","type":"searchset","entry":[' + b",".join(entries) + b"]}"


def serve(port: int, size: int) -> None:
    """Answer every request on ``port`` with the same body (keep-alive, Content-Length)."""
    body = _body(size)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\n"
        b'etag: W/"1"\r\nlast-modified: Mon, 01 Dec 2026 10:00:00 GMT\r\n'
        b"content-length: %d\r\n\r\n" % len(body)
    )

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:  # GETs only: no request body to skip
                _, _, self.buf = self.buf.partition(b"\r\n\r\n")
                self.transport.write(head + body)

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(run())


class _Bare(asyncio.Protocol):
    """One keep-alive connection, its answers parsed by httptools."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, dict[bytes, bytes], bytes]] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.waiter is not None
        self.waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.chunks)))


async def _measure(client: str, port: int, requests: int) -> None:
    url = f"http://127.0.0.1:{port}{PATH}"
    if client == "aiohttp":
        import aiohttp

        from carelink.sources.http import fetch

        session = aiohttp.ClientSession(  # as app.open_sessions makes each source's
            connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=0.8),
            raise_for_status=False,
        )

        async def one() -> None:
            data, headers = await fetch(session, "acute", "GET", url)
            assert data is not None
            headers.get("ETag")
            headers.get("Last-Modified")

    else:
        loop = asyncio.get_running_loop()
        idle: list[_Bare] = []
        head = (
            f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: application/fhir+json\r\nX-Request-ID: {rid}\r\n\r\n"
        )

        async def one() -> None:
            conn = (
                idle.pop() if idle else (await loop.create_connection(_Bare, "127.0.0.1", port))[1]
            )
            conn.waiter = loop.create_future()
            conn.transport.write(head.format(rid="0f8fad5b-d9cb-469f-a165-70867728950e").encode())
            status, headers, data = await conn.waiter
            assert status == 200
            assert data
            headers.get(b"etag")
            headers.get(b"last-modified")
            idle.append(conn)

    async def connection(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(connection(100) for _ in range(4)))  # warm: connections made
    control("-i", "on")
    started = time.process_time()
    await asyncio.gather(*(connection(requests // 4) for _ in range(4)))
    cpu = time.process_time() - started
    control("-i", "off")
    print(f"cpu {cpu / requests * 1e6:.1f} us a request (under callgrind)", file=sys.stderr)
    if client == "aiohttp":
        await session.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--body", type=int, default=12_000, help="answer body, bytes")
    ap.add_argument("--port", type=int, default=33800 + random.Random().randrange(100))
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=["aiohttp", "bare"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.port, args.body)
        return
    if args.child:
        asyncio.run(_measure(args.child, args.port, args.requests))
        return
    me = str(Path(__file__).resolve())
    server = subprocess.Popen(
        [sys.executable, me, "--serve", f"--port={args.port}", f"--body={args.body}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        for client in ("aiohttp", "bare"):
            child = [f"--child={client}", f"--port={args.port}", f"--requests={args.requests}"]
            total = counted(Path(me), child)[-1]
            print(f"{client}: {total / args.requests:,.0f} instructions per source request")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
