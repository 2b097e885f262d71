"""The community and mental-health trust's system: HL7 v2.5.1 over HTTP, and as a feed.

``feed`` gives the same messages as a stream to push over MLLP
(``carelink.simulators.feed`` sends it); the HTTP interface below answers queries.

Answers are HL7 v2 batches (``FHS``/``BHS`` ... ``BTS``/``FTS``), segments
separated by carriage returns, text escaped with the standard sequences
(``\\F\\`` ``\\S\\`` ``\\T\\`` ``\\R\\`` ``\\E\\``). Content type
``x-application/hl7-v2+er7``.

- ``GET /hl7/patients?page=N&page_size=M``: one ``ADT^A28`` (add person) per
  person; ``X-Total-Count`` says how many there are in all
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

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.simulators.base import (
    Behaviour,
    ResponseCache,
    admin_routes,
    etag_for,
    with_behaviour,
)
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
    """An HL7 DTM with seconds and offset."""
    return value.strftime("%Y%m%d%H%M%S+0000")


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
        refs = people.local_ids()
        w = Writer(STAMP)
        for ref in refs[(page - 1) * size_ : page * size_]:
            add_person(w, people.by_local[ref], ref)
        return answer(w.batch(), total=len(refs))

    async def one(request: Request) -> Response:
        q = request.query_params
        local = q.get("pid") or people.by_nhs.get(q.get("nhs", ""))
        if not local or local not in people.by_local:
            return Response(b"unknown patient", status_code=404)
        w = Writer(STAMP)
        record(w, people.by_local[local], local, people.facts(local))
        return answer(w.batch())

    cache = ResponseCache()
    routes = [
        Route("/hl7/patients", with_behaviour(behaviour, patients, MALFORMED)),
        Route("/hl7/record", with_behaviour(behaviour, one, MALFORMED, cache=cache)),
        *admin_routes(behaviour),
    ]
    return Starlette(routes=routes)
