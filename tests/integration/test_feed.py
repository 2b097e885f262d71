"""The community trust as an HL7 v2 feed, end to end: its simulator pushes its population
over MLLP to ``carelink feed listen``, and the gateway serves the community part of a
record from what was stored, with its as-of time, also while the trust's system is down."""

from __future__ import annotations

import asyncio
import time

import hl7
import httpx
import pytest
from hl7.mllp import open_hl7_connection

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


def _send(system: System, *messages: str) -> list[str]:
    """Send ``messages`` to the running ``carelink feed listen`` over MLLP; their MSA-1s."""
    address = next(
        url for url in system.env["CARELINK_SOURCES"].split(",") if url.startswith("community=")
    )
    host, _, port = address.removeprefix("community=mllp://").rpartition(":")

    async def go() -> list[str]:
        reader, writer = await open_hl7_connection(host, int(port))
        codes = []
        for m in messages:
            writer.writeblock(m.encode())
            await writer.drain()
            ack = hl7.parse((await asyncio.wait_for(reader.readblock(), 10)).decode())
            codes.append(str(ack.segment("MSA")[1]))
        writer.close()
        await writer.wait_closed()
        return codes

    return asyncio.run(go())


def _found_within(system: System, seconds: float, **params: str) -> list[dict]:
    """The Patients the gateway finds, polled until there are some or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        r = httpx.get(f"{system.base}/Patient", params=params, timeout=10)
        assert r.status_code == 200, r.text
        found = [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _adt(kind: str, control: str, *segments: str) -> str:
    msh = (
        f"MSH|^~\\&|COMMUNITY-EPR|RCOMM|CARELINK|ICS|20261130120000+0000||{kind}|{control}|P|2.5.1"
    )
    return "\r".join((msh, *segments))


def test_a_registration_pushed_over_mllp_is_found_through_the_gateway_within_seconds(
    feed_system: System,
):
    """A28 -> AA -> the gateway finds the person, with no rebuild and no update command;
    then an A31 renames them, and an A40 retires a temporary record into theirs."""
    nhs = "9990000018"
    assert _found_within(feed_system, 0, identifier=f"{NHS_NUMBER_SYSTEM}|{nhs}") == []
    pid = f"PID|1||FEED-1^^^RCOMM^MR~{nhs}^^^NHS^NH||Quenby^Imogen||19580412|F"
    started = time.monotonic()
    assert _send(feed_system, _adt("ADT^A28^ADT_A05", "H3-1", "EVN|A28|20261130120000", pid)) == [
        "AA"
    ]
    found = _found_within(feed_system, 10, identifier=f"{NHS_NUMBER_SYSTEM}|{nhs}")
    assert len(found) == 1
    assert time.monotonic() - started < 10
    person = found[0]["id"]

    renamed = pid.replace("Quenby^", "Quenby-Hart^")
    temp = "PID|1||FEED-TEMP^^^RCOMM^MR||Quenby-Hart^Imogen||19580412|F"
    codes = _send(
        feed_system,
        _adt("ADT^A31^ADT_A05", "H3-2", "EVN|A31|20261130120100", renamed),
        _adt("ADT^A28^ADT_A05", "H3-3", "EVN|A28|20261130120200", temp),
    )
    assert codes == ["AA", "AA"]
    moved = _found_within(feed_system, 10, family="Quenby-Hart", birthdate="1958-04-12")
    assert person in [p["id"] for p in moved]
    local = "https://carelink.example/Id/community"
    assert _found_within(feed_system, 10, identifier=f"{local}|FEED-TEMP")

    merge = _adt(
        "ADT^A40^ADT_A39", "H3-4", "EVN|A40|20261130120300", renamed, "MRG|FEED-TEMP^^^RCOMM^MR"
    )
    assert _send(feed_system, merge) == ["AA"]
    deadline = time.monotonic() + 10
    while _found_within(feed_system, 0, identifier=f"{local}|FEED-TEMP"):
        assert time.monotonic() < deadline, "the merged record is still found"
        time.sleep(0.2)
    assert [p["id"] for p in _found_within(feed_system, 0, identifier=f"{local}|FEED-1")] == [
        person
    ]
