"""The community trust as an HL7 v2 feed, end to end: its simulator pushes its population
over MLLP to ``carelink feed listen``, and the gateway serves the community part of a
record from what was stored, with its as-of time, also while the trust's system is down."""

from __future__ import annotations

import httpx
import pytest

from carelink.federation.record import EXT_AS_OF, EXT_SOURCE
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.support.system import System

pytestmark = pytest.mark.slow


def _everything(system: System) -> tuple[set[str], dict[str, dict]]:
    person = next(
        p
        for p in system.population
        if {"gp", "acute", "community", "social-care"} <= p.sources and p.social_variant is None
    )
    found = httpx.get(
        f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
    ).json()
    pid = found["entry"][0]["resource"]["id"]
    r = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_count": 1000})
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    sources = {
        e["resource"].get("meta", {}).get("source", "")
        for e in entries
        if e["search"]["mode"] == "match"
    }
    outcome = next(e["resource"] for e in entries if e["search"]["mode"] == "outcome")
    issues = {}
    for issue in outcome["issue"]:
        ext = {x["url"]: x for x in issue.get("extension", [])}
        if EXT_SOURCE in ext:
            issues[ext[EXT_SOURCE]["valueString"]] = {"issue": issue, "ext": ext}
    return sources, issues


def test_everything_holds_all_four_sources_with_community_from_the_feed(feed_system: System):
    sources, issues = _everything(feed_system)
    assert {f"urn:carelink:source:{s}" for s in ("gp", "acute", "community", "social-care")} <= (
        sources
    )
    community = issues["community"]
    assert community["issue"]["details"]["coding"][0]["code"] == "ok"
    assert EXT_AS_OF in community["ext"]


def test_the_community_part_is_served_while_the_trusts_system_is_down(feed_system: System):
    _, before = _everything(feed_system)
    feed_system.faults("community", down=True)
    try:
        sources, issues = _everything(feed_system)
    finally:
        feed_system.heal()
    assert "urn:carelink:source:community" in sources
    community = issues["community"]
    assert community["issue"]["details"]["coding"][0]["code"] == "ok"
    as_of = community["ext"][EXT_AS_OF]["valueInstant"]
    assert as_of == before["community"]["ext"][EXT_AS_OF]["valueInstant"]  # the last message's
