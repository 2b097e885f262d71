"""Consent on the request path: load a patient's choices, filter an answer.

``Guard`` is what the API calls. It reads the patient's active consents on
every request (one indexed read, so a change made through any gateway
process is in force on the next request), keeps the parsed rule trees
cached by content, and asks the database about break-glass grants only when
a grant could change the answer.

Filtering leaves no trace: withheld resources are simply absent (the caller
counts, pages and includes only what is left), and the merged Patient loses
the local identifiers of every source whose data this caller may not see,
so the answer does not even show where the person has records.

A federated record is reused while its sources answer the same
(``federation.memo``), so the same caller asks about the very same resource
objects again and again. What the engine decides of them depends only on the
resources, the caller, the patient's practice and the patient's Consents, and
on the clock only through a provision's ``period``: so, when no provision has
one, the answer is remembered (``FilterMemo``) and reused for the very same
objects (compared by identity and kept alive while remembered). Break-glass
grants are still read on every request whose answer one could change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from carelink.consent.decision import Actor, Decision, Engine, Situation, label
from carelink.consent.directive import ODS_SYSTEM, Directive, Provision, directive
from carelink.errors import ConsentDenied
from carelink.recent import Recent, same_objects
from carelink.storage import ConsentStore

Json = dict[str, Any]


@dataclass(frozen=True)
class Filtered:
    """What consent let through, and what it says about the rest."""

    resources: list[Json]
    withheld: int
    sources_seen: frozenset[str]
    break_glass: bool


#: no source seen
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Remembered:
    """One filter's answer and everything it was decided from that is not in its key."""

    resources: tuple[Json, ...]  # the very objects filtered (kept alive: ids stay theirs)
    directives: tuple[Directive, ...]
    filtered: Filtered  # the answer without break-glass
    overridable: bool  # a denial a break-glass grant would turn (the grant is read each time)


def _timeless(p: Provision) -> bool:
    """Does nothing in this provision (or under it) depend on the time of the request?"""
    return p.period is None and all(_timeless(c) for c in p.children)


class FilterMemo:
    """The last answers of ``Guard.filter``, at most ``maxsize`` (least recently used go
    first), by caller, patient and practice; each reused only for the very same resource
    objects and Consents. Threads may share it (filters run on database threads on
    PostgreSQL)."""

    def __init__(self, maxsize: int = 2_000) -> None:
        self._items: Recent[tuple[Any, ...], _Remembered] = Recent(maxsize)
        self._lock = threading.Lock()

    def get(
        self, key: tuple[Any, ...], resources: Sequence[Json], s: Situation
    ) -> _Remembered | None:
        """The answer remembered for exactly these resources and Consents, if any."""
        with self._lock:
            got = self._items.get(key)
            if got is None or not same_objects(got.resources, resources):
                return None
            if not same_objects(got.directives, s.directives):
                return None
            self._items.used(key)
            return got

    def put(self, key: tuple[Any, ...], remembered: _Remembered) -> None:
        """Remember an answer."""
        with self._lock:
            self._items.put(key, remembered)

    def __len__(self) -> int:
        return len(self._items)


class Guard:
    """The consent decision applied to one request's resources."""

    def __init__(
        self,
        engine: Engine,
        store: ConsentStore,
        source_uris: Mapping[str, str],
        identifier_systems: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        memo: FilterMemo | None = None,
    ) -> None:
        self.engine = engine
        self.memo = memo
        self.store = store
        self.source_uris = dict(source_uris)  # meta.source URI -> source name
        self.identifier_systems = dict(identifier_systems)  # local id system -> source name
        self._sources = {**self.source_uris, **self.identifier_systems}
        #: ``_seen`` of one resource, by its ``meta.source``: made once per source
        self._seen_from = {uri: frozenset((name,)) for uri, name in self.source_uris.items()}
        self.clock = clock
        self._parsed: Recent[bytes, Directive] = Recent(4096)

    def require_purpose(self, actor: Actor) -> None:
        """Refuse (``ConsentDenied``) a purpose the policy does not serve on the live API."""
        if (
            actor.patient is None
            and actor.purpose not in self.engine.policy.source.directCarePurposes
        ):
            raise ConsentDenied(
                f"purpose of use {actor.purpose or '(none)'} is not a direct-care purpose here; "
                "secondary use is served by extracts"
            )

    def situation(
        self,
        actor: Actor,
        patient_id: str,
        patient: Json | None,
        consents: Sequence[tuple[str, bytes]] | None = None,
    ) -> Situation:
        """Everything the decision needs about this patient, read now (``consents``: the
        patient's active consents as (id, body) when the caller has just read them with
        the person, else they are read here)."""
        if consents is None:
            consents = self.store.active(patient_id)
        now = datetime.fromtimestamp(self.clock(), UTC)
        return self._situation(actor, patient_id, patient, consents, now)

    def _situation(
        self,
        actor: Actor,
        patient_id: str,
        patient: Json | None,
        consents: Sequence[tuple[str, bytes]],
        now: datetime,
    ) -> Situation:
        return Situation(
            actor=actor,
            patient_id=patient_id,
            directives=[self._directive(body) for _, body in consents],
            now=now,
            sources=self._sources,
            registered_practice=registered_practice(patient) if patient else None,
        )

    def filter_people(
        self,
        actor: Actor,
        people: Sequence[tuple[str, Json]],
        consents: Mapping[str, Sequence[tuple[str, bytes]]],
        shared: bool = False,
    ) -> list[Filtered]:
        """``filter`` of each person's own Patient, for a batch of people one request
        found (a page of a search): ``people`` as (person id, Patient), ``consents``
        their active consents as read together (``ConsentStore.active_of``; a person
        it leaves out has none). The same decisions as a ``situation`` and a
        ``filter`` each, with one reading of the clock for the batch. ``shared``: the
        Patients are objects reused between requests (``federation.memo.ParsedPatients``),
        so an answer remembered for the very same Patient and Consents is reused, as
        ``filter`` reuses one for a shared record.

        Most people found hold no Consents and nothing sensitive: for them the decision
        is known without a situation or the memo (``Engine.shown_as_is``), and the
        answer is the one ``filter`` gives, the Patient itself, unlabelled and untrimmed
        (no Consent hides a source). The clock is read when the first person who needs
        a situation comes (never, when none does: the lookup's usual person)."""
        now: datetime | None = None
        as_is = self.engine.shown_as_is
        seen_from = self._seen_from
        out = []
        for pid, patient in people:
            held = consents.get(pid, ())
            if not held and as_is(actor, patient):
                # ``Filtered([patient], 0, self._seen((patient,)), False)``, made a search's
                # many times without the frozen dataclass's field-by-field ``__init__``
                shown = object.__new__(Filtered)
                shown.__dict__.update(
                    resources=[patient],
                    withheld=0,
                    sources_seen=seen_from.get(patient.get("meta", {}).get("source"), _NONE),
                    break_glass=False,
                )
                out.append(shown)
                continue
            if now is None:
                now = datetime.fromtimestamp(self.clock(), UTC)
            s = self._situation(actor, pid, patient, held, now)
            out.append(self.filter(s, [patient], shared))
        return out

    def decide(self, s: Situation, resource: Json) -> Decision:
        """One decision, with break-glass looked up only when it could matter."""
        d = self.engine.decide(s, resource)
        if not d.permit and self._could_override(s, d) and self._granted(s):
            return self.engine.decide(replace(s, break_glass=True), resource)
        return d

    def filter(self, s: Situation, resources: Sequence[Json], shared: bool = False) -> Filtered:
        """The permitted resources, labelled; the merged Patient trimmed of hidden sources.

        ``shared``: the resources are a record's that is reused between requests
        (``federation.memo``). With a ``memo``, an answer decided for the very same
        resource objects, caller and Consents is then reused when nothing in it depends
        on the time; a break-glass grant is looked up on every call whose answer one
        could change. The lists handed back are the caller's own (the resources in them
        are shared: never mutate them)."""
        key = self._memo_key(s, resources) if shared else None
        if key is not None and self.memo is not None:
            got = self.memo.get(key, resources, s)
            if got is not None:
                if got.overridable and self._granted(s):
                    return self._filtered(replace(s, break_glass=True), resources)
                f = got.filtered
                return Filtered(list(f.resources), f.withheld, f.sources_seen, f.break_glass)
        decisions = [self.engine.decide(s, r) for r in resources]
        overridable = any(not d.permit and self._could_override(s, d) for d in decisions)
        if overridable and self._granted(s):
            return self._filtered(replace(s, break_glass=True), resources)
        filtered = self._kept(s, resources, decisions)
        if key is not None and self.memo is not None:
            held = _Remembered(tuple(resources), tuple(s.directives), filtered, overridable)
            self.memo.put(key, held)
            filtered = replace(filtered, resources=list(filtered.resources))
        return filtered

    def _memo_key(self, s: Situation, resources: Sequence[Json]) -> tuple[Any, ...] | None:
        """What of ``s`` (besides its Consents) shapes a filter's answer, and which list
        it is (its first object: one remembered is alive, so its id is its own); None
        when the answer may change with the time (a provision in force for a period) or
        ``s`` was not made by this guard."""
        if s.break_glass or s.sources is not self._sources or not resources:
            return None
        if not all(_timeless(d.provision) for d in s.directives):
            return None
        return (s.actor, s.patient_id, s.registered_practice, id(resources[0]))

    def _filtered(self, s: Situation, resources: Sequence[Json]) -> Filtered:
        return self._kept(s, resources, [self.engine.decide(s, r) for r in resources])

    def _kept(self, s: Situation, resources: Sequence[Json], decisions: list[Decision]) -> Filtered:
        kept = [label(r, d) for r, d in zip(resources, decisions, strict=True) if d.permit]
        withheld = len(resources) - len(kept)
        if any(r.get("resourceType") == "Patient" for r in kept):
            hidden = self.hidden_sources(s)
            kept = [self._trim(r, hidden) for r in kept]
        return Filtered(kept, withheld, self._seen(kept), s.break_glass)

    def _seen(self, kept: Sequence[Json]) -> frozenset[str]:
        """The sources whose data is among ``kept`` (by ``meta.source``)."""
        return frozenset(
            self.source_uris[src]
            for r in kept
            if (src := r.get("meta", {}).get("source")) in self.source_uris
        )

    def for_extract(
        self,
        actor: Actor,
        patient_id: str,
        patient: Json,
        resources: Sequence[Json],
        objections: bool,
    ) -> tuple[list[Json], list[Decision]]:
        """Secondary use: the resources an extract for ``actor.purpose`` may hold, and the
        decisions that withheld the others. The merged Patient is trimmed as on the live
        API, of the sources the Consents keep out. Consents are read only when they
        apply (``objections``)."""
        if objections:
            s = self.situation(actor, patient_id, patient)
        else:
            s = Situation(actor, patient_id, (), datetime.fromtimestamp(self.clock(), UTC))
        kept: list[Json] = []
        refused: list[Decision] = []
        for r in resources:
            d = self.engine.for_secondary_use(s, r, objections)
            if d.permit:
                kept.append(r)
            else:
                refused.append(d)
        if s.directives and any(r.get("resourceType") == "Patient" for r in kept):
            hidden = self.hidden_sources(s, lambda s, r: self.engine.for_secondary_use(s, r, True))
            kept = [self._trim(r, hidden) for r in kept]
        return kept, refused

    def hidden_sources(
        self, s: Situation, decide: Callable[[Situation, Json], Decision] | None = None
    ) -> frozenset[str]:
        """Sources none of whose (non-sensitive) data this caller may see (under
        ``decide``, by default the direct-care decision)."""
        if not s.directives:
            return frozenset()  # the policy alone never withholds a whole source
        decide = decide or self.engine.decide
        out = set()
        for uri, name in self.source_uris.items():
            probe = {"resourceType": "Basic", "id": "-", "meta": {"source": uri}}
            if not decide(s, probe).permit:
                out.add(name)
        return frozenset(out)

    def _trim(self, r: Json, hidden: frozenset[str]) -> Json:
        """The merged Patient without the local identifiers of ``hidden`` sources."""
        if r.get("resourceType") != "Patient" or not hidden:
            return r
        idents = [
            i
            for i in r.get("identifier", ())
            if self.identifier_systems.get(i.get("system")) not in hidden
        ]
        return {**r, "identifier": idents}

    def _could_override(self, s: Situation, d: Decision) -> bool:
        bg = self.engine.policy.source.breakGlass
        return not s.break_glass and d.basis in bg.overrides and s.actor.role in bg.roles

    def _granted(self, s: Situation) -> bool:
        if not s.actor.identity:
            return False
        return self.store.has_grant(s.patient_id, s.actor.identity, self.clock())

    def _directive(self, body: bytes) -> Directive:
        got = self._parsed.get(body)
        if got is None:
            got = directive(orjson.loads(body))
            self._parsed.put(body, got)
        return got


def registered_practice(patient: Json) -> str | None:
    """The ODS code of the patient's registered GP practice, if the record says."""
    for gp in patient.get("generalPractitioner", ()):
        ident = gp.get("identifier", {})
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None
