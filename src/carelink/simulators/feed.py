"""A sending system's side of an HL7 v2 feed over MLLP, as an integration engine does it.

Messages go one at a time, each waiting for its acknowledgement: AA moves on;
AE or AR (the receiver read it and refused it) is reported and not resent, as
sending it unchanged would get the same answer; no acknowledgement at all (a
timeout, a closed or refused connection) means the receiver may not have
stored it, so the sender reconnects and sends the same message again, until
``give_up`` seconds pass without progress.

``split_file`` reads a file of messages for ``--replay``: segments one per
line (CR, LF or CRLF), each message starting at its ``MSH``; batch envelopes
(``FHS``/``BHS``/``BTS``/``FTS``) and MLLP framing bytes are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import hl7
from hl7.mllp import open_hl7_connection

_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


@dataclass
class SendReport:
    """How a feed went: control ids by outcome, and how often a message was sent again."""

    accepted: int = 0
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (id, code, text)
    resends: int = 0

    def summary(self) -> str:
        return f"{self.accepted} accepted, {len(self.refused)} refused, {self.resends} sent again"


class FeedGaveUp(ConnectionError):
    """No acknowledgement for one message within the sender's patience."""


def split_file(text: str) -> list[str]:
    """The messages in a file, each with CR between its segments."""
    text = text.replace("\x0b", "").replace("\x1c", "")
    messages: list[list[str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip() or line[:3] in _ENVELOPE:
            continue
        if line.startswith("MSH") or not messages:
            messages.append([line])
        else:
            messages[-1].append(line)
    return ["\r".join(m) for m in messages]


def _control_id(message: str) -> str:
    """MSH-10 of a message, read with its own field separator."""
    parts = message.split("\r", 1)[0].split(message[3:4] or "|")
    return parts[9] if len(parts) > 9 else ""


async def send_feed(
    messages: Iterable[str],
    host: str,
    port: int,
    *,
    ack_timeout: float = 10.0,
    retry_wait: float = 0.2,
    give_up: float = 60.0,
) -> SendReport:
    """Send every message to ``host:port`` over MLLP, in order, each until answered."""
    report = SendReport()
    connection: tuple[Any, Any] | None = None
    loop = asyncio.get_running_loop()
    try:
        for message in messages:
            deadline = loop.time() + give_up
            first = True
            while True:
                if not first:
                    report.resends += 1
                first = False
                try:
                    if connection is None:
                        opened: tuple[Any, Any] = await asyncio.wait_for(
                            open_hl7_connection(host, port), ack_timeout
                        )
                        connection = opened
                    reader, writer = opened
                    writer.writeblock(message.encode("utf-8"))
                    await writer.drain()
                    ack = await asyncio.wait_for(reader.readblock(), ack_timeout)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    await _drop(connection)
                    connection = None
                    if loop.time() > deadline:
                        raise FeedGaveUp(f"no acknowledgement for {_control_id(message)}") from None
                    await asyncio.sleep(retry_wait)
                    continue
                code, echoed, text = _read_ack(ack)
                if echoed != _control_id(message):  # unreadable, or an answer to another
                    await _drop(connection)
                    connection = None
                    if loop.time() > deadline:
                        raise FeedGaveUp(f"no acknowledgement for {_control_id(message)}")
                    continue
                if code in ("AA", "CA"):
                    report.accepted += 1
                else:
                    report.refused.append((echoed, code, text))
                break
    finally:
        await _drop(connection)
    return report


def _read_ack(block: bytes) -> tuple[str, str, str]:
    """MSA-1 (the code), MSA-2 (the control id answered) and MSA-3 (text)."""
    try:
        msa = hl7.parse(block.decode("utf-8")).segment("MSA")
        parts = [str(msa[n]) if len(msa) > n else "" for n in (1, 2, 3)]
    except Exception:  # an acknowledgement we cannot read counts as none
        return "", "", ""
    return parts[0], parts[1], parts[2]


async def _drop(connection: tuple[Any, Any] | None) -> None:
    if connection is not None:
        writer = connection[1]
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
