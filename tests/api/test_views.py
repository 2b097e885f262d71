"""A first page's view of a reused record, made once (``paging.shown`` with the record's
``views``), answers exactly what making it afresh on every request does.

For any sequence of requests against two remembered records (each caller, Consents,
query, sources missing, what is shown of the record, the sources' as-of and versions,
break-glass), the snapshot, ETag, paging, links and the page's bytes are those of the
same request answered without the record's views.
"""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.api import paging
from carelink.api.paging import Asked, Shown
from carelink.auth import Principal
from carelink.consent import Actor, Filtered, Guard
from carelink.consent.directive import CONSENT_SCOPE
from carelink.federation.fanout import SourceResult
from carelink.federation.memo import Made
from carelink.federation.merge import provenance
from carelink.federation.record import Federated, source_outcome
from carelink.fhir import dumps
from carelink.storage import PersonRow
from tests.consent import test_filter_memo
from tests.consent.test_filter_memo import Clock, actors, consent_sets, guard

#: the ConsentStore fixture (a SQLite file of its own, for the module)
store = test_filter_memo.store

SOURCES = ("acute", "gp", "social-care")
BASE = "https://gw.example/fhir"
KEY = "Patient/p1/$everything"
CALLERS = (
    Principal("alice", "R8000", "RXX01", frozenset({"user/*.rs"}), "TREAT"),
    Principal("bob", "R8000", "RXX01", frozenset({"user/Observation.rs"}), "TREAT"),
)
QUERIES = ({}, {"_count": ["2"]}, {"_elements": ["id"]}, {"_type": ["Observation"]})
PERSON = PersonRow("p1", None, "", "", "", "", None, None, None, b"{}", "v1")


def record(n: int, sources: tuple[str, ...] = SOURCES) -> Made:
    """A remembered record: the merged Patient, then three resources from each of
    ``sources`` (those that answered)."""
    patient = {"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2026-01-0{n}"}}
    resources: list[dict[str, Any]] = [patient]
    contributed = []
    for s in sources:
        own = [
            {
                "resourceType": "Observation" if i else "Condition",
                "id": f"{s}-{n}-{i}",
                "meta": {"lastUpdated": f"2025-0{i + 1}-1{n}"},
            }
            for i in range(3)
        ]
        resources.extend(own)
        contributed.append([f"{r['resourceType']}/{r['id']}" for r in own])
    return Made(b"{}", None, frozenset(), (), resources, contributed)


def federated(made: Made, with_views: bool, results: list[SourceResult]) -> Federated:
    answered = [r for r in results if r.status == "ok"]
    provs = [
        made.provenance(
            n,
            (r.source, r.version),
            r.as_of or "",
            lambda at, r=r, kept=kept: provenance("p1", replace(r, as_of=at), kept),
        )
        for n, (r, kept) in enumerate(zip(answered, made.contributed, strict=True))
    ]
    return Federated(
        PERSON,
        (),
        made.resources,
        provs,
        source_outcome(results),
        tuple(results),
        "etag",
        made.encodings,
        made.refs,
        made.contributed,
        made.views if with_views else None,
    )


#: one request: which record, caller, query, Consents, which resources are shown (all,
#: or all but some), how the GP fared, each source's as-of and version, break-glass
steps = st.tuples(
    st.integers(0, 1),
    st.integers(0, 1),
    st.integers(0, len(QUERIES) - 1),
    st.integers(0, 2),
    st.one_of(st.none(), st.just(frozenset({3})), st.sets(st.integers(0, 9), max_size=3)),
    st.sampled_from(["ok", "timeout", "error"]),
    st.sampled_from(["2026-12-02T07:00:00Z", "2026-12-02T07:00:01Z"]),
    st.sampled_from(["v1", "v2"]),
    st.booleans(),
)


def request(g: Guard) -> Any:
    app = SimpleNamespace(
        state=SimpleNamespace(
            guard=g, settings=SimpleNamespace(default_page_size=50, max_page_size=1000)
        )
    )
    return SimpleNamespace(app=app, scope={"headers": []})


def answered(ready: Shown, made: Made, asked: Asked) -> bytes:
    snap = ready.snap
    body = paging.page(
        asked.base,
        asked.url,
        snap.matches,
        asked.q,
        asked.used,
        None,  # type: ignore[arg-type]  # the paging is given: no settings read
        includes=snap.includes,
        outcomes=[snap.outcome],
        encodings=made.encodings,
        paging=ready.paging,
        links=ready.links,
    )
    return dumps(body)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    consents=st.lists(consent_sets().filter(bool), min_size=2, max_size=2).map(lambda c: [[], *c]),
    actor=actors,
    run=st.lists(steps, min_size=1, max_size=12),
)
def test_a_view_made_once_answers_as_one_made_afresh(store, consents, actor, run):
    g = guard(store, Clock(), None)
    req = request(g)
    answering = tuple(s for s in SOURCES if s != "gp")
    #: by record and whether the GP timed out: a record is made from the answers it had
    made = {(n, late): record(n, answering if late else SOURCES) for n in (0, 1) for late in (0, 1)}
    situations = [g.situation(actor, "p1", None, c) for c in consents]
    for which, who, q, consent, hidden_ids, gp, at, version, glass in run:
        m = made[which, gp != "ok"]
        results = [
            SourceResult(s, gp if s == "gp" else "ok", 5.0, (), version, at) for s in SOURCES
        ]
        shown = [
            r
            for i, r in enumerate(m.resources)
            if hidden_ids is None or i == 0 or i not in hidden_ids
        ]
        filtered = Filtered(shown, len(m.resources) - len(shown), frozenset(), glass)
        q_ = {k: list(v) for k, v in QUERIES[q].items()}
        asked = Asked(
            CALLERS[who], situations[consent], KEY, BASE, f"{BASE}/{KEY}", q_, set(q_), "operation"
        )
        with_views = paging.shown(req, asked, federated(m, True, results), filtered, list(shown))
        afresh = paging.shown(req, asked, federated(m, False, results), filtered, list(shown))
        for f in fields(afresh.snap):
            a, b = getattr(with_views.snap, f.name), getattr(afresh.snap, f.name)
            assert orjson.dumps(a) == orjson.dumps(b), f.name
        assert with_views.etag == afresh.etag
        assert with_views.paging == afresh.paging
        assert with_views.links == afresh.links
        assert answered(with_views, m, asked) == answered(afresh, m, asked)


def test_a_view_is_reused_for_the_same_request_and_not_for_another(store):
    """The second of two identical requests is answered from the view the first made;
    a request showing other resources is not."""
    g = guard(store, Clock(), None)
    req = request(g)
    m = record(0)
    situation = g.situation(Actor("dr", "R8000", "RXX01", "TREAT", None, "dr"), "p1", None, [])
    asked = Asked(CALLERS[0], situation, KEY, BASE, f"{BASE}/{KEY}", {}, set(), "operation")
    results = [SourceResult(s, "ok", 5.0, (), "v1", "2026-12-02T07:00:00Z") for s in SOURCES]
    every = Filtered(list(m.resources), 0, frozenset(), False)
    first = paging.shown(req, asked, federated(m, True, results), every, list(m.resources))
    assert len(m.views) == 1
    view = m.views.get((CALLERS[0], KEY, asked.url, ()))
    again = paging.shown(req, asked, federated(m, True, results), every, list(m.resources))
    assert again.etag == first.etag
    assert again.snap.matches is view.matches  # the view's, not a list made anew
    fewer = m.resources[:-1]
    other = paging.shown(
        req, asked, federated(m, True, results), Filtered(fewer, 1, frozenset(), False), fewer
    )
    assert other.snap.matches is not view.matches
    assert other.etag != first.etag


@pytest.mark.parametrize("change", ["consent", "version", "as-of", "caller", "query"])
def test_a_view_is_made_again_when_what_it_was_made_from_changes(store, change):
    """Each input of a view, changed alone, gives the answer made afresh (and the view
    is reused when only the as-of moved: the includes are this request's)."""
    g = guard(store, Clock(), None)
    req = request(g)
    m = record(0)
    actor = Actor("dr", "R8000", "RXX01", "TREAT", None, "dr")
    denial = {
        "resourceType": "Consent",
        "id": "c0",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "patient": {"reference": "Patient/p1"},
        "provision": {"type": "deny", "class": [{"code": "Condition"}]},
    }

    def ask(consents: list[tuple[str, bytes]], version: str, at: str, who: int, q: Any) -> None:
        situation = g.situation(actor, "p1", None, consents)
        asked = Asked(CALLERS[who], situation, KEY, BASE, f"{BASE}/{KEY}", q, set(q), "operation")
        results = [SourceResult(s, "ok", 5.0, (), version, at) for s in SOURCES]
        every = Filtered(list(m.resources), 0, frozenset(), False)
        with_views = paging.shown(req, asked, federated(m, True, results), every, m.resources)
        afresh = paging.shown(req, asked, federated(m, False, results), every, m.resources)
        assert with_views.etag == afresh.etag
        assert answered(with_views, m, asked) == answered(afresh, m, asked)
        assert orjson.dumps(with_views.snap.consent) == orjson.dumps(afresh.snap.consent)

    at = "2026-12-02T07:00:00Z"
    ask([], "v1", at, 0, {})
    made = len(m.views)
    if change == "consent":
        ask([("c0", orjson.dumps(denial))], "v1", at, 0, {})
    elif change == "version":
        ask([], "v2", at, 0, {})
    elif change == "as-of":
        ask([], "v1", "2026-12-02T07:00:01Z", 0, {})
        assert len(m.views) == made  # the same view, this request's includes
    elif change == "caller":
        ask([], "v1", at, 1, {})
    else:
        ask([], "v1", at, 0, {"_count": ["2"]})
