"""Reuse a source's transformed answer when the source sends the same bytes again.

Every request still goes to the source (the record stays live and failures
are still seen); when the body is byte-for-byte what it sent last time for
the same question, the FHIR resources made from it are reused instead of
parsing and transforming the same bytes again. "Byte-for-byte" is meant
exactly: the cache keeps the bytes an answer was made from and compares the
new body with them (a memory comparison, about a hundredth of the time a hash
of the body takes here), so no two different bodies can ever be taken for
each other.

Cached resources are shared between requests: callers must not mutate them.

A bulk read (an extract that visits every person once) runs inside
``bulk_read()`` (``sources.base``): it still reuses what is cached but adds
nothing, so it neither grows the process by a whole population's records nor
evicts the answers clinicians' lookups are reusing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from carelink.recent import Recent
from carelink.sources.base import remembering

Json = dict[str, Any]
Key = tuple[str, str, frozenset[str] | None]  # local id, patient ref, types


def digest(body: bytes) -> bytes:
    """A fingerprint of a response body (a version for a source that sends no ETag)."""
    return hashlib.blake2b(body, digest_size=16).digest()


@dataclass(frozen=True)
class Cached:
    """One remembered answer and the bytes it was made from."""

    body: bytes
    #: a tuple, handed on as it is: the fan-out's results and the record's memo keep the
    #: very object, so "the same answer as last time" is one identity check
    resources: tuple[Json, ...]
    skipped: tuple[str, ...] = ()  # what the adapter left out of this answer, and why
    notes: tuple[str, ...] = ()  # what the source said about its answer (warnings)

    @cached_property
    def fingerprint(self) -> bytes:
        """``digest(body)``, made at most once per remembered answer."""
        return digest(self.body)


class AnswerCache:
    """A bounded LRU of answers by (local id, patient ref, types)."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._items: Recent[Key, Cached] = Recent(maxsize)

    def get(self, key: Key, body: bytes) -> tuple[Json, ...] | None:
        """The resources made last time, if the source sent exactly these bytes then."""
        hit = self.lookup(key, body)
        return None if hit is None else hit.resources

    def lookup(self, key: Key, body: bytes) -> Cached | None:
        """What these bytes became last time (resources and what was skipped), or None."""
        hit = self._items.get(key)
        if hit is None or hit.body != body:
            return None
        self._items.used(key)
        return hit

    def put(
        self,
        key: Key,
        body: bytes,
        resources: Sequence[Json],
        skipped: tuple[str, ...] = (),
        notes: tuple[str, ...] = (),
    ) -> tuple[Json, ...]:
        """Remember what these bytes became (not inside ``bulk_read()``); the resources as
        remembered, the very object a later ``lookup`` gives (answer with them now too)."""
        kept = tuple(resources)
        if remembering():
            self._items.put(key, Cached(body, kept, skipped, notes))
        return kept

    def __len__(self) -> int:
        return len(self._items)
