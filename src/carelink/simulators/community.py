"""The community and mental-health trust's system: HL7 v2.5.1 over HTTP, and as a feed.

``feed`` gives the same messages as a stream to push over MLLP
(``carelink.simulators.feed`` sends it); the HTTP interface below answers queries.

Answers are HL7 v2 batches (``FHS``/``BHS`` ... ``BTS``/``FTS``), segments
separated by carriage returns, text escaped with the standard sequences
(``\\F\\`` ``\\S\\`` ``\\T\\`` ``\\R\\`` ``\\E\\``). Content type
``x-application/hl7-v2+er7``.

- ``GET /hl7/patients?page=N&page_size=M``: one ``ADT^A28`` (add person) per
  person; ``X-Total-Count`` says how many there are in all
- ``GET /hl7/changes?since=DTM&page=N&page_size=M``: what changed after the HL7
  DTM ``since``, oldest first, one message per person (their latest change):
  ``ADT^A28`` a person added, ``ADT^A31`` a person's details updated, ``ADT^A40``
  a merge (``PID`` the survivor, ``MRG-1`` the retired local id), ``ADT^A29``
  a person's information deleted; MSH-7 says when. People are changed at run
  time through ``/_admin/patients/{id}`` (``carelink.simulators.changes``)
- ``GET /hl7/record?pid=LOCAL`` (or ``?nhs=NUMBER``): the person's
  ``ADT^A28``; an ``ADT^A01`` opening each episode of care, with a ``ZEP``
  segment (episode id, team, start, status, sensitivity); an ``ADT^A03`` per
  contact (``PV1-19`` visit number, ``PV1-44``/``45`` start and end,
  ``PV1-50`` the episode); a ``PPR^PC1`` per problem (``PRB-3`` SNOMED CT
  code with the ICD-10 code as the alternate identifier, ``PRB-25``
  security/sensitivity); an ``ORU^R01`` per score (``OBX`` with a SNOMED CT
  code and the LOINC code as the alternate identifier, followed by ``ZSN``
  carrying its sensitivity when it has one)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.base import (
    Behaviour,
    ResponseCache,
    admin_routes,
    etag_for,
    kept_first,
    with_behaviour,
)
from carelink.simulators.changes import Changed, PatientChanges, parse_instant
from carelink.simulators.changes import admin_routes as change_routes
from carelink.simulators.clinical import Fact
from carelink.simulators.population import REFERENCE_DATE, Person
from carelink.simulators.store import PopulationSlice

MEDIA_TYPE = "x-application/hl7-v2+er7"
TEAMS = {
    "mental-health": ("MH", "Community Mental Health & Wellbeing Team"),
    "district-nursing": ("DN", "District Nursing | Adult Community Services"),
}
FACILITY = "RCOMM"
#: MSH-7 / FHS-7: when the extract was made. Fixed, so the same data gives the same bytes
#: (and the same ETag) on every request; the serving time goes in Last-Modified only.
STAMP = datetime.combine(REFERENCE_DATE, datetime.min.time(), tzinfo=UTC)
MALFORMED = b"PID|1||C123^^^RCOMM^MR||Trunc"


def escape(text: str) -> str:
    """HL7 v2 escaping of the delimiters inside data."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from numbered fields (HL7 numbering: the first field after the name is 1)."""
    values = [""] * max(fields)
    for n, v in fields.items():
        values[n - 1] = v
    return "|".join((name, *values))


def ts(value: datetime) -> str:
    """An HL7 DTM with seconds and offset (ten-thousandths when there are any)."""
    if value.microsecond:
        return value.strftime("%Y%m%d%H%M%S.") + f"{value.microsecond // 100:04d}+0000"
    return value.strftime("%Y%m%d%H%M%S+0000")


def dtm_instant(text: str) -> datetime:
    """An HL7 DTM (``YYYYMMDDHHMMSS[.SSSS][+ZZZZ]``) as an aware datetime (UTC when it
    has no offset); ``ValueError`` when it is not one."""
    body, sign, offset = text.partition("+") if "+" in text else text.partition("-")
    whole, _, fraction = body.partition(".")
    if len(whole) != 14 or not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError("not an HL7 DTM to the second")
    iso = f"{whole[:4]}-{whole[4:6]}-{whole[6:8]}T{whole[8:10]}:{whole[10:12]}:{whole[12:14]}"
    if fraction:
        iso += "." + fraction[:6].ljust(6, "0")
    zone = f"{sign}{offset[:2]}:{offset[2:4]}" if sign and len(offset) == 4 else "+00:00"
    return parse_instant(iso + zone)


class Writer:
    """Builds the messages of one answer with sequential control ids (MSH-10:
    ``prefix`` and a count)."""

    def __init__(self, now: datetime, prefix: str = "MSG") -> None:
        self.now = now
        self.prefix = prefix
        self.count = 0
        self.messages: list[str] = []

    def message(self, kind: str, *segments: str) -> None:
        self.count += 1
        msh = (
            f"MSH|^~\\&|COMMUNITY-EPR|{FACILITY}|CARELINK|ICS|{ts(self.now)}||{kind}|"
            f"{self.prefix}{self.count:06d}|P|2.5.1"
        )
        self.messages.append("\r".join((msh, *segments)))

    def batch(self) -> bytes:
        head = f"FHS|^~\\&|COMMUNITY-EPR|{FACILITY}|||{ts(self.now)}\rBHS|^~\\&|COMMUNITY-EPR"
        tail = f"BTS|{len(self.messages)}\rFTS|1"
        return "\r".join((head, *self.messages, tail)).encode() + b"\r"


def pid(person: Person, local: str) -> str:
    """The PID segment: local id and NHS number, name, birth, sex, address, phone."""
    given = escape(person.given) + (f"^{escape(person.middle)}" if person.middle else "")
    sex = "M" if person.gender == "male" else "F"
    return segment(
        "PID",
        {
            1: "1",
            3: f"{local}^^^{FACILITY}^MR~{person.nhs_number}^^^NHS^NH",
            5: f"{escape(person.family)}^{given}",
            7: person.birth_date.strftime("%Y%m%d"),
            8: sex,
            11: f"{escape(person.address_line)}^^{escape(person.town)}^^{person.postcode}^GBR^H",
            13: f"{person.phone.replace(' ', '')}^PRN^CP",
        },
    )


def pid_of(patient: dict[str, Any], local: str) -> str:
    """The PID segment of a person changed at run time (an R4 Patient)."""
    ids = [f"{local}^^^{FACILITY}^MR"]
    ids += [
        f"{i['value']}^^^NHS^NH"
        for i in patient.get("identifier", [])
        if i.get("system") == NHS_NUMBER_SYSTEM and i.get("use") != "old" and i.get("value")
    ][:1]
    name = (patient.get("name") or [{}])[0]
    given = "^".join(escape(g) for g in name.get("given", [])[:2])
    address = (patient.get("address") or [{}])[0]
    line = escape(" ".join(address.get("line", [])))
    return segment(
        "PID",
        {
            1: "1",
            3: "~".join(ids),
            5: f"{escape(name.get('family', ''))}^{given}",
            7: str(patient.get("birthDate", "")).replace("-", ""),
            8: {"male": "M", "female": "F"}.get(str(patient.get("gender")), "U"),
            11: f"{line}^^{escape(address.get('city', ''))}^^{address.get('postalCode', '')}^GBR^H",
        },
    )


def change_message(w: Writer, change: Changed, pid_now: Any, known: bool) -> None:
    """The ADT message saying what ``change`` did (``pid_now``: a local id's PID now)."""
    w.now = change.stamp
    evn = f"{ts(change.stamp)}"
    survivor = change.merged_into
    if change.patient is None:
        short = f"PID|1||{change.local}^^^{FACILITY}^MR"
        w.message("ADT^A29^ADT_A21", f"EVN|A29|{evn}", short)
    elif survivor is not None:
        mrg = f"MRG|{change.local}^^^{FACILITY}^MR"
        w.message("ADT^A40^ADT_A39", f"EVN|A40|{evn}", pid_now(survivor), mrg)
    else:
        event = "A31" if known else "A28"
        segments = (f"EVN|{event}|{evn}", pid_of(change.patient, change.local))
        w.message(f"ADT^{event}^ADT_A05", *segments)


def add_person(w: Writer, person: Person, local: str) -> None:
    """ADT^A28 with the registered GP practice in PD1-3."""
    w.message(
        "ADT^A28^ADT_A05",
        f"EVN|A28|{ts(w.now)}",
        pid(person, local),
        f"PD1|||GP PRACTICE^^{person.gp_ods}",
    )


def record(w: Writer, person: Person, local: str, facts: tuple[Fact, ...]) -> None:
    """Every message about one person."""
    add_person(w, person, local)
    short = f"PID|1||{local}^^^{FACILITY}^MR"
    for f in facts:
        visit = f"{local}-{f.local_id}"
        if f.kind == "episode":
            code, team = TEAMS[f.text or "district-nursing"]
            pv1 = segment(
                "PV1",
                {1: "1", 2: "O", 3: f"{code}^^^{FACILITY}", 10: code, 19: visit, 44: ts(f.when)},
            )
            zep = segment(
                "ZEP",
                {
                    1: visit,
                    2: f"{code}^{escape(team)}",
                    3: ts(f.when),
                    4: f.status,
                    5: f.sensitivity or "",
                },
            )
            w.message("ADT^A01^ADT_A01", f"EVN|A01|{ts(f.when)}", short, pv1, zep)
        elif f.kind == "contact":
            code, _ = TEAMS[f.text or "district-nursing"]
            end = f.end or f.when.replace(minute=min(59, f.when.minute + 30))
            episode = f"{local}-{f.encounter}" if f.encounter else ""
            pv1 = segment(
                "PV1",
                {
                    1: "1",
                    2: "O",
                    3: f"{code}^^^{FACILITY}",
                    10: code,
                    19: visit,
                    44: ts(f.when),
                    45: ts(end),
                    50: episode,
                },
            )
            w.message("ADT^A03^ADT_A03", f"EVN|A03|{ts(end)}", short, pv1)
        elif f.kind == "condition" and f.code is not None:
            alt = f"^{f.related.code}^{escape(f.related.display)}^I10" if f.related else ""
            prb = segment(
                "PRB",
                {
                    1: "AD",
                    2: ts(f.when),
                    3: f"{f.code.code}^{escape(f.code.display)}^SCT{alt}",
                    4: visit,
                    7: ts(f.when),
                    14: "active",
                    15: ts(f.when),
                    16: ts(f.when),
                    25: f.sensitivity or "",
                },
            )
            w.message("PPR^PC1^PPR_PC1", short, prb)
        elif f.kind == "score" and f.code is not None:
            concept = f"{f.code.code}^{escape(f.code.display)}^SCT"
            if f.related is not None:  # the LOINC code as the alternate identifier
                concept += f"^{f.related.code}^{escape(f.related.display)}^LN"
            segments = [
                short,
                segment("OBR", {1: "1", 3: visit, 4: concept, 7: ts(f.when)}),
                segment(
                    "OBX",
                    {
                        1: "1",
                        2: "NM",
                        3: concept,
                        5: f"{f.value:g}",
                        6: escape(f.unit or ""),
                        11: "F",
                        14: ts(f.when),
                    },
                ),
            ]
            if f.sensitivity:
                segments.append(f"ZSN|{f.sensitivity}")
            w.message("ORU^R01^ORU_R01", *segments)


def feed(seed: int, size: int) -> Iterator[str]:
    """The trust's population as the feed it pushes: per person, in population order,
    the ``ADT^A28`` that introduces them, then their episodes (``ADT^A01``), contacts
    (``ADT^A03``), problems (``PPR^PC1``) and results (``ORU^R01``). Control ids are
    the person's local id and a count, so sending the feed again is a replay."""
    people = PopulationSlice("community", seed, size)
    for local in people.local_ids():
        w = Writer(STAMP, prefix=f"{local}-")
        record(w, people.by_local[local], local, people.facts(local))
        yield from w.messages


def create_app(*, seed: int, size: int, behaviour: Behaviour) -> Starlette:
    """The community simulator serving its slice of the synthetic population."""
    people = PopulationSlice("community", seed, size)
    cache = ResponseCache()
    changes = PatientChanges(on_change=cache.items.clear)

    def pid_now(local: str) -> str:
        changed = changes.latest.get(local)
        if changed is not None and changed.patient is not None:
            return pid_of(changed.patient, local)
        person = people.by_local.get(local)
        return pid(person, local) if person else f"PID|1||{local}^^^{FACILITY}^MR"

    def answer(body: bytes, status: int = 200, total: int | None = None) -> Response:
        headers = {
            "ETag": etag_for(body),
            "Last-Modified": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }
        if total is not None:
            headers["X-Total-Count"] = str(total)
        return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)

    async def patients(request: Request) -> Response:
        try:
            page = max(1, int(request.query_params.get("page", "1")))
            size_ = min(1000, max(1, int(request.query_params.get("page_size", "100"))))
        except ValueError:
            return Response(b"page and page_size must be whole numbers", status_code=400)
        refs = changes.present(people.local_ids())
        w = Writer(STAMP)
        for ref in refs[(page - 1) * size_ : page * size_]:
            changed = changes.latest.get(ref)
            if changed is not None and changed.patient is not None:
                w.message("ADT^A28^ADT_A05", f"EVN|A28|{ts(w.now)}", pid_of(changed.patient, ref))
            else:
                add_person(w, people.by_local[ref], ref)
        return answer(w.batch(), total=len(refs))

    async def changed(request: Request) -> Response:
        q = request.query_params
        try:
            page = max(1, int(q.get("page", "1")))
            size_ = min(1000, max(1, int(q.get("page_size", "100"))))
            cut = dtm_instant(q.get("since", ""))
        except ValueError:
            return Response(
                b"since must be an HL7 DTM; page and page_size whole numbers", status_code=400
            )
        listed = changes.since(cut.isoformat())
        w = Writer(STAMP, prefix="CHG")
        for c in listed[(page - 1) * size_ : page * size_]:
            change_message(w, c, pid_now, c.local in people.by_local)
        return answer(w.batch(), total=len(listed))

    async def one(request: Request) -> Response:
        q = request.query_params
        local = q.get("pid") or people.by_nhs.get(q.get("nhs", ""))
        changed = changes.latest.get(local or "")
        if changed is not None and (changed.patient is None or changed.merged_into is not None):
            return Response(b"unknown patient", status_code=404)
        if not local or (changed is None and local not in people.by_local):
            return Response(b"unknown patient", status_code=404)
        w = Writer(STAMP)
        person = people.by_local.get(local)
        if person is not None:
            record(w, person, local, people.facts(local))
        if changed is not None and changed.patient is not None:  # the A28 as it is now
            w.messages[:1] = []
            w.message("ADT^A28^ADT_A05", f"EVN|A28|{ts(w.now)}", pid_of(changed.patient, local))
            w.messages.insert(0, w.messages.pop())
        return answer(w.batch())

    routes = [
        Route("/hl7/patients", with_behaviour(behaviour, patients, MALFORMED)),
        Route("/hl7/record", with_behaviour(behaviour, one, MALFORMED, cache=cache)),
        Route("/hl7/changes", with_behaviour(behaviour, changed, MALFORMED)),
        *admin_routes(behaviour),
        *change_routes(changes),
    ]
    return Starlette(routes=routes, middleware=[kept_first(behaviour, cache, MALFORMED)])
