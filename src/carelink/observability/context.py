"""What the current request is, for everything that runs on its behalf.

The HTTP edge binds a request id (and an empty list of source outcomes) at the
start of each request; code further down reads them without being handed the
request: the source adapters forward the id on their outbound calls, the audit
writes it into the AuditEvent, the fan-out notes which sources it asked. Context
variables follow the request into every task it starts (``asyncio`` copies the
context), and are unset (``None``) outside a request, e.g. in export jobs.

>>> handle = bind(accept_request_id("abc-123"))
>>> current_request_id()
'abc-123'
>>> unbind(handle)
"""

from __future__ import annotations

import random
import re
import time
from contextvars import ContextVar, Token
from typing import NamedTuple

#: what a caller's ``X-Request-ID`` may be: 1 to 128 characters from a header-, log- and
#: URL-safe set (letters, digits and ``. _ - : + = /``); anything else is replaced
REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
HEADER = "X-Request-ID"


class SourceCall(NamedTuple):
    """One source's part in a request: its name, outcome and time taken (a named tuple:
    made for every source a request asks, and made as a tuple, without a constructor
    call, by ``note_source``)."""

    source: str
    outcome: str
    ms: float


#: the current request: its id and the sources it asked so far (one variable, so binding
#: a request is one ``set`` and leaving it one ``reset``)
_current: ContextVar[tuple[str, list[SourceCall]] | None] = ContextVar(
    "carelink_request", default=None
)
_tuple = tuple.__new__


def new_id() -> str:
    """A new random UUID4, as 32 hex digits.

    From the process's pseudo-random generator (seeded from the system's entropy, and
    again in every forked child), not ``uuid.uuid4``'s system call a time: these ids
    tell requests and events apart, they guard nothing.
    """
    bits = random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)
    return "%032x" % (bits | (0x4000 << 64) | (0x8000 << 48))


def accept_request_id(given: str | None) -> str:
    """The caller's id when well formed, else a new one (a UUID4, hyphenated)."""
    if given is not None and REQUEST_ID.fullmatch(given):
        return given
    h = new_id()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_second = -1
_prefix = ""


def instant(moment: float | None = None, places: int = 6) -> str:
    """``moment`` (default: now) as a FHIR instant in UTC with ``places`` (3 or 6)
    decimals of the second (``2026-11-30T19:14:03.123456Z``). The date and time part is
    formatted once a second: it costs more than the rest."""
    global _second, _prefix
    now = time.time() if moment is None else moment
    second = int(now)
    if second != _second:
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second = second
    fraction = now - second  # its digits cut, not rounded (``%d`` of a float truncates)
    if places == 3:
        return _prefix + "%03dZ" % (fraction * 1000)  # noqa: UP031 - cheaper than f"{:03d}"
    return _prefix + "%06dZ" % (fraction * 1_000_000)  # noqa: UP031 - as above


#: what ``bind`` set, for ``unbind`` to undo
Bound = Token[tuple[str, list[SourceCall]] | None]


def bind(request_id: str) -> Bound:
    """Make ``request_id`` the current request's, with no source asked yet."""
    return _current.set((request_id, []))


def unbind(bound: Bound) -> None:
    """Leave the request (restore what was current before ``bind``)."""
    _current.reset(bound)


def current_request_id() -> str | None:
    """The id of the request being served, or ``None`` outside one."""
    current = _current.get()
    return None if current is None else current[0]


def note_source(source: str, outcome: str, ms: float) -> None:
    """Record that the current request asked ``source`` (ignored outside a request)."""
    current = _current.get()
    if current is not None:
        current[1].append(_tuple(SourceCall, (source, outcome, ms)))


def sources_asked() -> list[SourceCall]:
    """The sources the current request asked so far, in the order they answered."""
    current = _current.get()
    return [] if current is None else list(current[1])
