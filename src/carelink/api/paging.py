"""Paging over one stored answer, and partial answers, at the HTTP edge.

- The first page of a search fans out once; when there is more than one page
  its answer is kept (``carelink.federation.pages``) and the links carry
  ``_cursor``. Later pages are cut from it without asking the sources again.
- A cursor belongs to the caller who started the search: ``owner`` is a digest
  of everything that shapes what they may see (subject, organisation, role,
  purpose, scopes, patient context).
- ``X-Carelink-Missing-Sources`` names the sources whose part of the answer is
  missing, as a comma-separated list of ``<source>;status=<status>`` items
  (an RFC 8941 structured-field list of tokens with one parameter), e.g.
  ``acute;status=timeout, gp;status=circuit-open``; absent when nothing is
  missing. ``Prefer: partial=fail`` turns such an answer into a 503. Sources
  consent hides from the caller are never named and never cause a 503.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from operator import is_
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api import params as P
from carelink.api.deps import audit, stored
from carelink.api.responses import Answer, fhir, http_date, not_modified
from carelink.audit.events import FAILED, REFUSED
from carelink.auth import Principal
from carelink.consent import Filtered, Situation
from carelink.errors import Gone
from carelink.federation.fanout import CIRCUIT_OPEN, ERROR, TIMEOUT, SourceResult
from carelink.federation.pages import Pages, Snapshot
from carelink.federation.record import Federated, source_outcome
from carelink.fhir import dumps, searchset
from carelink.fhir.jsonio import Encodings, list_digest
from carelink.fhir.outcome import issue, operation_outcome
from carelink.fhir.search import apply_elements
from carelink.recent import same_objects

Json = dict[str, Any]

MISSING_HEADER = "X-Carelink-Missing-Sources"
FAILED_STATUSES = (TIMEOUT, ERROR, CIRCUIT_OPEN)


@dataclass(frozen=True)
class Asked:
    """One search as the caller asked it, after authorisation and consent."""

    caller: Principal
    situation: Situation
    key: str  # what was asked, e.g. ``Patient/p1/$everything``
    base: str
    url: str  # where links point
    q: dict[str, list[str]]
    used: set[str]  # search parameters the first page's links would carry
    interaction: str  # for the audit trail

    @property
    def pid(self) -> str:
        """The patient searched."""
        return self.situation.patient_id


def owner(caller: Principal) -> str:
    """Who a stored result belongs to: the same person in the same role, organisation,
    purpose and scopes (a changed scope or purpose is a different caller)."""
    shape = [
        caller.subject,
        caller.organisation,
        caller.role,
        caller.purpose,
        sorted(caller.scopes),
        caller.patient,
    ]
    return hashlib.blake2b(orjson.dumps(shape), digest_size=32).hexdigest()


def consent_digest(situation: Situation) -> str:
    """The patient's consent as it shaped a result (a change ends its cursor)."""
    return hashlib.blake2b(repr(situation.directives).encode(), digest_size=16).hexdigest()


def missing(results: Iterable[SourceResult], hidden: frozenset[str]) -> list[str]:
    """Header items for the sources that failed, leaving out those hidden by consent."""
    return [
        f"{r.source};status={r.status}"
        for r in results
        if r.status in FAILED_STATUSES and r.source not in hidden
    ]


def outcome(fed: Federated, hidden: frozenset[str]) -> Json:
    """The per-source outcome, leaving out the sources consent hides from this caller
    (so the answer does not show where else the person has records)."""
    if not hidden:
        return dict(fed.outcome)
    return source_outcome([r for r in fed.results if r.source not in hidden])


def unavailable(items: list[str]) -> Json:
    """The OperationOutcome of a refused partial answer (``Prefer: partial=fail``)."""
    issues = []
    for item in items:
        source, _, status = item.partition(";status=")
        issues.append(
            issue(
                "error",
                "timeout" if status == TIMEOUT else "transient",
                f"source {source}: {status}; the answer would be incomplete "
                "and Prefer: partial=fail asked for no partial answers",
            )
        )
    return operation_outcome(issues)


def snapshot(
    request: Request,
    fed: Federated,
    situation: Situation,
    shown: Filtered,
    key: str,
    matches: list[Json],
    includes: list[Json],
) -> Snapshot:
    """What this search answered the caller, ready to page over."""
    hidden = request.app.state.guard.hidden_sources(situation)
    shown_missing = missing(fed.results, hidden)
    return Snapshot(
        key=key,
        consent=consent_digest(situation),
        matches=matches,
        includes=includes,
        outcome=outcome(fed, hidden),
        missing=shown_missing,
        version=content_version(matches, includes, shown_missing, fed.encodings),
        # made once for the very same matches (``Encodings.of_list``)
        last_modified=fed.encodings.of_list(matches, "last-modified", _last_modified),
        break_glass=shown.break_glass,
    )


@dataclass(frozen=True)
class Shown:
    """A first page ready to answer: its snapshot, its ETag and its paging."""

    snap: Snapshot
    etag: str
    paging: P.Paging
    links: dict[str, str]


@dataclass(frozen=True)
class _View:
    """What one caller's answer to one question about one record gives every request
    (``Federated.views``), and everything it was made from that is not in its key."""

    directives: tuple[Any, ...]  # the situation's Consents, by identity
    matches: list[Json]  # what the caller is shown (kept: never changed, ids stay theirs)
    #: includes: every Provenance of the record as it is (True), or none (False)
    every_provenance: bool
    include_digests: tuple[bytes, ...]  # each include's JSON less ``recorded``, digested
    missing: list[str]
    consent: str
    version: str
    last_modified: str | None
    etag: str
    paging: P.Paging
    links: dict[str, str]


def shown(
    request: Request,
    asked: Asked,
    fed: Federated,
    filtered: Filtered,
    matches: list[Json],
) -> Shown:
    """The first page's snapshot (``snapshot``, with ``access.provenance_for``'s
    includes), ETag and paging.

    While the record is reused (``fed.views``), what depends only on it and on this
    caller's view of it (the consent digest, the content version, ``Last-Modified``, the
    ETag, the paging and its links) is made once: reused while the very same matches are
    shown under the very same Consents, the same sources missing, and the includes are
    every Provenance of the record (or none) with the same JSON less ``recorded``. The
    includes themselves (each source's Provenance for its as-of) and the outcome (each
    source's latency) are this request's."""
    situation = asked.situation
    hidden = request.app.state.guard.hidden_sources(situation)
    shown_missing = missing(fed.results, hidden)
    views = fed.views
    key: Hashable = None
    if views is not None:
        key = (asked.caller, asked.key, asked.url, _query_key(asked.q))
        view: _View | None = views.get(key)
        if (
            view is not None
            and same_objects(view.matches, matches)
            and same_objects(view.directives, situation.directives)
            and view.missing == shown_missing
        ):
            includes = list(fed.provenance) if view.every_provenance else []
            digests = tuple(fed.encodings.without_digest(p, "recorded") for p in includes)
            if digests == view.include_digests:
                snap = Snapshot(
                    key=asked.key,
                    consent=view.consent,
                    matches=view.matches,
                    includes=includes,
                    outcome=outcome(fed, hidden),
                    missing=shown_missing,
                    version=view.version,
                    last_modified=view.last_modified,
                    break_glass=filtered.break_glass,
                )
                return Shown(snap, view.etag, view.paging, view.links)
    includes = access.provenance_for(asked.caller, fed.provenance, matches, fed)
    snap = snapshot(request, fed, situation, filtered, asked.key, matches, includes)
    made = ready(request, asked, snap)
    if views is not None:
        every = len(includes) == len(fed.provenance) and all(map(is_, includes, fed.provenance))
        if every or not includes:
            view = _View(
                tuple(situation.directives),
                list(matches),  # the caller's list may be theirs to change: a copy kept
                every and bool(includes),
                tuple(fed.encodings.without_digest(p, "recorded") for p in includes),
                shown_missing,
                snap.consent,
                snap.version,
                snap.last_modified,
                made.etag,
                made.paging,
                made.links,
            )
            views.put(key, view)
    return made


def ready(request: Request, asked: Asked, snap: Snapshot) -> Shown:
    """``snap`` with its ETag, the query's paging and the first page's links."""
    paging = _paging(request, asked.q, asked.used)
    return Shown(snap, _etag(asked, snap), paging, paging.links(asked.url, len(snap.matches)))


def _query_key(q: dict[str, list[str]]) -> Hashable:
    """The query as a key (the order of its names, and of each name's values, kept: the
    links carry them in that order)."""
    if not q:
        return ()
    return tuple((k, tuple(v)) for k, v in q.items())


def _paging(request: Request, q: dict[str, list[str]], used: set[str]) -> P.Paging:
    settings = request.app.state.settings
    return P.paging(q, used, settings.default_page_size, settings.max_page_size)


def content_version(
    matches: list[Json],
    includes: list[Json],
    missing: list[str],
    encodings: Encodings | None = None,
) -> str:
    """The version of what the caller is shown, and of nothing else.

    Built from the released resources (and which visible sources are missing), never
    from the sources' own versions or times: those change when data the caller may not
    see changes (a withheld diagnosis recorded), and an ETag that moved with them would
    tell the caller so. ``encodings`` give the matches' JSON where it is made already
    (the same bytes: the version is the same with or without them).
    """
    digest = hashlib.blake2b(digest_size=16)
    # the matches' fingerprint is made once per record and view (``Encodings.digest``)
    digest.update(list_digest(matches) if encodings is None else encodings.digest(matches))
    # a Provenance's ``recorded`` is when the source answered (often "now"): a time of
    # the request, not a change of the data; each include is hashed as the digest of its
    # JSON without it, made once for the record's own Provenance however many instants
    # its copies say (``Encodings.without_digest``), so kilobytes of targets are not
    # hashed again on every request
    known = encodings or Encodings()
    digest.update(len(includes).to_bytes(4, "big"))
    for r in includes:
        digest.update(known.without_digest(r, "recorded"))
    digest.update(orjson.dumps(missing))
    return digest.hexdigest()


def _last_modified(_: Encodings, matches: Sequence[Json]) -> str | None:
    return http_date(newest_update(matches))


def newest_update(resources: Iterable[Json]) -> str | None:
    """The newest ``meta.lastUpdated`` among the resources shown (``Last-Modified``)."""
    stamps = [
        str(r["meta"]["lastUpdated"])
        for r in resources
        if isinstance(r.get("meta"), dict) and r["meta"].get("lastUpdated")
    ]
    return max(stamps, default=None)


def page(
    base: str,
    url: str,
    matches: list[Json],
    q: dict[str, list[str]],
    used: set[str],
    request: Request,
    *,
    includes: list[Json] | None = None,
    outcomes: list[Json] | None = None,
    cursor: str | None = None,
    encodings: Encodings | None = None,
    paging: P.Paging | None = None,
    links: dict[str, str] | None = None,
) -> Json:
    """One page of ``matches``; with ``cursor``, the links page over that stored result;
    ``encodings``, the JSON of resources made already; ``paging`` (and its ``links``),
    the query's paging read already (``P.paging``)."""
    if paging is None:
        paging = _paging(request, q, used)
        links = None
    if cursor is not None:
        paging = paging.on_cursor(cursor)
        links = None
    total = len(matches)
    if links is None:
        links = paging.links(url, total)
    if P.summary_count(q):
        return searchset(base, [], total=total, links={"self": links["self"]})
    if paging.offset == 0 and paging.count >= total:
        shown = matches  # the whole of it: the very list the snapshot fingerprinted
    else:
        shown = matches[paging.offset : paging.offset + paging.count]
    wanted = P.elements(q)
    if wanted is not None:
        shown = [apply_elements(r, wanted) for r in shown]
    return searchset(
        base,
        shown,
        total=total,
        links=links,
        includes=(includes or []) if paging.offset == 0 else [],
        outcomes=outcomes or [],
        entry_of=None if encodings is None else encodings.entry,
        entries_of=None if encodings is None else encodings.entries,
    )


async def first_page(
    request: Request, asked: Asked, ready: Shown, encodings: Encodings | None = None
) -> Response:
    """Answer from a fresh fan-out; keep the answer when there is more than one page
    (``ready``: the snapshot, ETag and paging, ``shown``; ``encodings``: the record's JSON
    made already, ``Federated.encodings``)."""
    snap = ready.snap
    if (refused := await _refuse_partial(request, asked, snap)) is not None:
        return refused
    paging = ready.paging
    etag = ready.etag
    if not_modified(request, etag):  # before storing anything: a 304 has no links
        await audit(request, asked.interaction, [asked.pid])
        return Response(status_code=304, headers={"ETag": etag})
    cursor = None
    more = paging.offset > 0 or paging.offset + paging.count < len(snap.matches)
    if more and not P.summary_count(asked.q):
        pages: Pages = request.app.state.pages
        # stored before the disclosure is audited: a store that fails answers 503, and
        # the trail does not record as disclosed what was never sent; a write of up to
        # megabytes, off the loop on SQLite too (a write waits for the audit's commits)
        cursor = await stored(request, pages.keep, snap, owner(asked.caller), encodings)
    await audit(request, asked.interaction, [asked.pid])
    return _respond(request, asked, snap, cursor, encodings, etag, paging, ready.links)


async def stored_page(request: Request, asked: Asked) -> Response:
    """A later page, cut from the answer the first page stored (no fan-out)."""
    cursor = asked.q["_cursor"][-1]
    pages: Pages = request.app.state.pages
    try:
        snap = await stored(
            request,
            pages.load,
            cursor,
            owner(asked.caller),
            asked.key,
            consent_digest(asked.situation),
        )
    except Gone:
        await audit(request, asked.interaction, [asked.pid], REFUSED, "paging cursor gone")
        raise
    request.state.break_glass = snap.break_glass
    if (refused := await _refuse_partial(request, asked, snap)) is not None:
        return refused
    await audit(request, asked.interaction, [asked.pid])
    return _respond(request, asked, snap, cursor)


async def _refuse_partial(request: Request, asked: Asked, snap: Snapshot) -> Response | None:
    """Under ``Prefer: partial=fail``, a 503 naming the missing sources instead of the data."""
    if not (P.prefer(request).complete and snap.missing):
        return None
    await audit(request, asked.interaction, [asked.pid], FAILED, "sources unavailable")
    return fhir(unavailable(snap.missing), 503, headers={MISSING_HEADER: ", ".join(snap.missing)})


def _etag(asked: Asked, snap: Snapshot) -> str:
    """The page's version: what the caller is shown and everything that shaped the page."""
    return f'"{snap.version}-{query_digest(asked.q, asked.caller, asked.situation)}"'


def _respond(
    request: Request,
    asked: Asked,
    snap: Snapshot,
    cursor: str | None,
    encodings: Encodings | None = None,
    etag: str | None = None,
    paging: P.Paging | None = None,
    links: dict[str, str] | None = None,
) -> Response:
    """The page (``etag``: its version, when the first page has made it and found the
    client without it already; ``paging`` and ``links``: the first page's, read once)."""
    if etag is None:
        etag = _etag(asked, snap)
        if not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
    body = page(
        asked.base,
        asked.url,
        snap.matches,
        asked.q,
        asked.used,
        request,
        includes=snap.includes,
        outcomes=[snap.outcome],
        cursor=cursor,
        encodings=encodings,
        paging=paging,
        links=links,
    )
    headers = {"ETag": etag}
    if snap.last_modified is not None:
        headers["Last-Modified"] = snap.last_modified
    if snap.missing:
        headers[MISSING_HEADER] = ", ".join(snap.missing)
    if P.prefer(request).complete:
        headers["Preference-Applied"] = P.PARTIAL_FAIL
    return Answer(dumps(body), headers)


def query_digest(q: dict[str, list[str]], caller: Principal, situation: Situation) -> str:
    """What else shapes the representation: the query, what the caller may see, consent."""
    shape = [
        sorted(q.items()),
        sorted(caller.scopes),
        caller.patient,
        caller.organisation,
        caller.role,
        caller.purpose,
        [(d.id, d.status) for d in situation.directives],
    ]
    return hashlib.blake2b(orjson.dumps(shape, default=str), digest_size=8).hexdigest()
