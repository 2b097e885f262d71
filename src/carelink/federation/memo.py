"""A person's record put together once, reused while every source answers the same.

Merging, resolving references and the UK Core shape depend only on the
sources' answers, the index's merged Patient, the types asked for and the
reference targets the gateway knew of from before. While a source sends the
same bytes, its adapter hands back the very same resource objects
(``sources.answer_cache``), so when every answer is the same objects as last
time and the other inputs are equal, the record made last time is the record
now. The answers are compared by identity, and the memo keeps them alive, so
an object's id is never reused by another while it is compared.

Only the shared part is remembered: every source is still asked on every
request, and the per-request parts (the per-source outcome with its latencies,
Provenance with each source's as-of, consent, paging and the audit) are made
on every answer. Remembered records are shared between requests: callers must
not mutate them. Within ``bulk_read()`` (an extract that visits each person
once) nothing is added.

Example::

    memo = RecordMemo()
    made = memo.get("p1", patient_json, None, frozenset(), answers)
    if made is None:
        made = Made(patient_json, None, frozenset(), answers, resources, contributed)
        memo.put("p1", made)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from carelink.federation.fanout import OK, SourceResult
from carelink.fhir.jsonio import Encodings, json_digest
from carelink.fhir.shared_types import SHARED_TYPES
from carelink.recent import Recent, same_objects
from carelink.sources.base import remembering

Json = dict[str, Any]
#: per source that answered, in order: its name and the resources it sent
Answers = tuple[tuple[str, tuple[Json, ...]], ...]


def answers_of(results: Sequence[SourceResult]) -> Answers:
    """What the sources that answered sent, in the order of ``results``."""
    return tuple((r.source, r.resources) for r in results if r.status == OK)


def same_answers(a: Answers, b: Answers) -> bool:
    """The same sources sent the very same resource objects, in the same order."""
    if len(a) != len(b):
        return False
    for (source_a, got_a), (source_b, got_b) in zip(a, b, strict=True):
        if source_a != source_b or not same_objects(got_a, got_b):
            return False
    return True


@dataclass(frozen=True)
class Made:
    """A record as it was put together, and everything it was put together from."""

    patient: bytes  # the index's merged Patient (JSON)
    asked: frozenset[str] | None  # the types asked for (None: everything)
    known: frozenset[str]  # reference targets known from before (``resource_locations``)
    answers: Answers  # both rounds: the types asked for, then any asked as targets only
    resources: list[Json]  # merged Patient first, references resolved, in UK Core shape
    contributed: list[list[str]]  # per answer, the kept reference of each resource
    #: each resource's JSON, made once for the ETag and the page
    encodings: Encodings = field(init=False)
    #: per answer (by position): what its Provenance was made from, and the Provenance
    _provenance: dict[int, _Provenance] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    #: the location store that wrote ``located``, and its generation then
    _written_by: tuple[object, int] | None = field(
        init=False, default=None, compare=False, repr=False
    )
    #: the last Provenance list and ETag handed out, and all they were made from
    _stamped: tuple[Hashable, list[Json], str] | None = field(
        init=False, default=None, compare=False, repr=False
    )
    #: what callers derive from this record and keep while it is reused (``Views``)
    views: Views = field(init=False, default_factory=lambda: Views(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encodings", Encodings(self.resources))

    def provenance(
        self, n: int, inputs: Hashable, recorded: str, make: Callable[[str], Json]
    ) -> Json:
        """The Provenance of answer ``n`` recorded at ``recorded``, ``make(recorded)``.

        Made once while ``inputs`` (all it is made from but ``recorded`` and the answer's
        contribution, which is this record's) stay the same; for each ``recorded`` (a
        source's as-of, often the instant it answered) a copy saying so, whose JSON is
        the once-made JSON with that instant put in (its JSON, and the JSON without
        ``recorded``, known to ``encodings``: the copy is a member). Read only."""
        got = self._provenance.get(n)
        if got is None or got.inputs != inputs:
            if got is not None and got.last is not None:
                self.encodings.discard(got.last[1])
            got = _Provenance.of(inputs, make)
            self._provenance[n] = got
        last = got.last  # one read: the instant and its copy together
        if last is not None and last[0] == recorded:
            return last[1]
        if got.head is None:  # no place for the instant in its JSON: made whole
            made = make(recorded)
            json = None
        else:
            made = dict(got.template)
            made["recorded"] = recorded  # in its place: the key is there
            json = b"".join((got.head, orjson.dumps(recorded), got.tail))
        if last is not None:
            self.encodings.discard(last[1])
        self.encodings.add(
            made,
            json,
            None if json is None else ("recorded", got.without),
            None if json is None else got.without_digest,
        )
        got.last = (recorded, made)
        return made

    def stamped(self, inputs: Hashable) -> tuple[list[Json], str] | None:
        """The Provenance list and ETag last noted (``note_stamped``) if made from
        ``inputs`` (all they are made from besides this record: the answers' versions
        and as-of ...), else None. Read only."""
        got = self._stamped
        if got is None or got[0] != inputs:
            return None
        return got[1], got[2]

    def note_stamped(self, inputs: Hashable, provenance: list[Json], etag: str) -> None:
        """The Provenance list (each made by ``provenance``) and ETag made from ``inputs``."""
        object.__setattr__(self, "_stamped", (inputs, provenance, etag))

    def located_written(self, store: object, generation: int) -> bool:
        """Were ``located`` all written by ``store`` (a ``LocationStore``) while it was at
        ``generation`` (``note_written``)?"""
        got = self._written_by
        return got is not None and got[0] is store and got[1] == generation

    def note_written(self, store: object, generation: int) -> None:
        """``located`` are all written by ``store``, which was at ``generation`` before."""
        object.__setattr__(self, "_written_by", (store, generation))

    @cached_property
    def refs(self) -> frozenset[str]:
        """``Type/id`` of every resource of the record."""
        return frozenset(f"{r['resourceType']}/{r['id']}" for r in self.resources)

    @cached_property
    def index_patient(self) -> Json:
        """``patient`` parsed, once (read only: the sources' ODS codes read it)."""
        parsed: Json = orjson.loads(self.patient)
        return parsed

    @cached_property
    def located(self) -> tuple[tuple[str, str], ...]:
        """(type, id) of each resource that lives in the person's record (not the shared
        types): what ``resource_locations`` notes of it."""
        return tuple(
            (r["resourceType"], str(r["id"]))
            for r in self.resources
            if r["resourceType"] not in SHARED_TYPES
        )


class Views:
    """What callers made of one record for one view of it (a caller, a question), kept
    while the record is reused: at most ``LIMIT`` views, the least recently used going
    first. The record knows nothing of what is kept: each caller checks that what it
    kept was made from the very inputs it has now before reusing it."""

    LIMIT = 8

    def __init__(self) -> None:
        self._items: Recent[Hashable, Any] = Recent(self.LIMIT)

    def get(self, key: Hashable) -> Any:
        """What was kept under ``key``, or None."""
        return self._items.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` under ``key`` (not within ``bulk_read()``)."""
        if remembering():
            self._items.put(key, value)

    def __len__(self) -> int:
        return len(self._items)


#: what a Provenance's template is recorded at: no instant looks like it
_SOME_INSTANT = "\u0000carelink-recorded\u0000"


@dataclass
class _Provenance:
    """One answer's Provenance as made once, and its copy for the last instant asked."""

    inputs: Hashable
    template: Json  # recorded at ``_SOME_INSTANT``
    head: bytes | None  # its JSON up to the value of ``recorded`` (None: not found)
    tail: bytes  # and after it
    without: bytes  # its JSON without ``recorded``
    without_digest: bytes  # ``json_digest(without)``, made once
    last: tuple[str, Json] | None = None  # the last instant asked, and its copy

    @classmethod
    def of(cls, inputs: Hashable, make: Callable[[str], Json]) -> _Provenance:
        template = make(_SOME_INSTANT)
        whole = orjson.dumps(template)
        head, found, tail = whole.partition(b'"recorded":' + orjson.dumps(_SOME_INSTANT))
        without = orjson.dumps({k: v for k, v in template.items() if k != "recorded"})
        digest = json_digest(without)
        if not found or _SOME_INSTANT.encode() in tail:
            return cls(inputs, template, None, b"", without, digest)
        return cls(inputs, template, head + b'"recorded":', tail, without, digest)


class RecordMemo:
    """The last record made per person and types asked for, at most ``maxsize`` of them
    (the least recently used go first). Each holds a record's resources and, once it is
    served, their JSON twice (alone, and as Bundle entries): tens of kilobytes for a
    large record, so the bound is the people seen in the last minutes, not the
    population."""

    def __init__(self, maxsize: int = 2_000) -> None:
        self._items: Recent[tuple[str, frozenset[str] | None], Made] = Recent(maxsize)

    def get(
        self,
        person_id: str,
        patient: bytes,
        asked: frozenset[str] | None,
        known: frozenset[str],
        answers: Answers,
    ) -> Made | None:
        """The record made from exactly these inputs, if it is the one remembered."""
        key = (person_id, asked)
        made = self._items.get(key)
        if (
            made is None
            or made.patient != patient
            or made.known != known
            or not same_answers(made.answers, answers)
        ):
            return None
        self._items.used(key)
        return made

    def put(self, person_id: str, made: Made) -> None:
        """Remember ``made`` as the person's record for its types (not in ``bulk_read()``)."""
        if not remembering():
            return
        self._items.put((person_id, made.asked), made)

    def __len__(self) -> int:
        return len(self._items)


class ParsedPatients:
    """The index's merged Patients parsed once per content, the last of each of at most
    ``maxsize`` people (the least recently used go first): the very same bytes give back
    the very same object, so a memo that compares the objects it decided about (the
    consent filter's, ``consent.FilterMemo``) finds its answer again while the person's
    index entry is unchanged. The bytes are compared whole on every use, so it cannot go
    stale: a Patient changed by any process is other bytes, parsed anew. The objects are
    shared between requests: callers must not mutate them. Threads may share it (the
    lookup's reads run on database threads on PostgreSQL)."""

    def __init__(self, maxsize: int = 2_000) -> None:
        self._items: Recent[str, tuple[bytes, Json]] = Recent(maxsize)
        self._lock = threading.Lock()

    def parse(self, person_id: str, patient: bytes) -> Json:
        """``patient``, the person's Patient as the index holds it, parsed: the object
        parsed before from these very bytes while it is remembered, else a new one
        (then remembered)."""
        with self._lock:
            got = self._items.get(person_id)
            if got is not None and got[0] == patient:
                self._items.used(person_id)
                return got[1]
        parsed: Json = orjson.loads(patient)
        with self._lock:
            self._items.put(person_id, (patient, parsed))
        return parsed

    def __len__(self) -> int:
        return len(self._items)
