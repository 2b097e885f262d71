"""The council's adult and children's social-care case-management system.

Its own JSON API, deliberately not FHIR: the council's field names, dates as
``DD/MM/YYYY`` and its own code lists.

- ``GET /api/v2/persons?page=N&pageSize=M`` -> ``{"items", "page", "pageSize", "totalItems"}``
- ``GET /api/v2/persons/search?surname=&forename=&dob=DD/MM/YYYY&postcode=&nhsNo=``
- ``GET /api/v2/persons/{personRef}``
- ``GET /api/v2/persons/changes?since=ISO-8601&page=N&pageSize=M`` -> ``{"items",
  "page", "pageSize", "totalItems"}``, each item one person's latest change after
  ``since``, oldest first: ``changeType`` (``created``, ``updated``, ``merged``,
  ``deleted``), ``changedAt``, ``personRef``, the ``person`` as it is now (none
  when deleted) and, for a merge, ``mergedInto``. People are changed at run time
  through ``/_admin/patients/{id}`` (``carelink.simulators.changes``)
- ``GET /api/v2/persons/{personRef}/case`` -> the person with ``assessments``,
  ``services``, ``alerts`` and ``carers``

Every answer carries an ``ETag`` (the body's version) and ``Last-Modified``
(the data's as-of time). Faults come from ``Behaviour``; this system's
malformed answer is truncated JSON.

Demographics are what the council holds (``social_demographics``): for one
record in five the NHS number is missing and the name or address differs
from the GP's.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from typing import Any

import orjson
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
from carelink.simulators.changes import Changed, PatientChanges
from carelink.simulators.changes import admin_routes as change_routes
from carelink.simulators.clinical import Fact
from carelink.simulators.names import FAMILY, GIVEN_FEMALE, GIVEN_MALE
from carelink.simulators.population import Person, social_demographics
from carelink.simulators.store import PopulationSlice

Json = dict[str, Any]

ASSESSMENT_TYPES = {"care-act": "CA01", "childrens": "CF02"}
SERVICE_TYPES = {
    "home-care": "SV-HC",
    "day-centre": "SV-DC",
    "meals": "SV-ML",
    "telecare": "SV-TC",
    "residential": "SV-RC",
}
ALERT_TYPES = {"safeguarding": "AL-SG", "child-protection": "AL-CP"}
RELATIONSHIPS = {"spouse": "SPO", "daughter": "DAU", "son": "SON", "friend": "FRD"}
MALFORMED = b'{"personRef": "SC0001", "forename": "Ma'


def _uk(d: date | datetime) -> str:
    return d.strftime("%d/%m/%Y")


def person_json(person: Person, ref: str) -> Json:
    """The council's person record."""
    demo = social_demographics(person)
    born = date.fromisoformat(str(demo["birth_date"]))
    return {
        "personRef": ref,
        "forename": demo["given"],
        "surname": demo["family"],
        "dateOfBirth": _uk(born),
        "genderCode": "M" if person.gender == "male" else "F",
        "nhsNo": demo["nhs_number"],
        "addressLines": [demo["address_line"], person.town],
        "postCode": demo["postcode"],
        "caseStatus": "OPEN",
    }


def council_person(patient: Json, ref: str) -> Json:
    """The council's person record of someone changed at run time (an R4 Patient)."""
    name = (patient.get("name") or [{}])[0]
    address = (patient.get("address") or [{}])[0]
    born = patient.get("birthDate")
    nhs = next(
        (
            i.get("value")
            for i in patient.get("identifier", [])
            if i.get("system") == NHS_NUMBER_SYSTEM and i.get("use") != "old"
        ),
        None,
    )
    return {
        "personRef": ref,
        "forename": " ".join(name.get("given", [])),
        "surname": name.get("family", ""),
        "dateOfBirth": _uk(date.fromisoformat(born)) if born else None,
        "genderCode": {"male": "M", "female": "F"}.get(str(patient.get("gender")), "U"),
        "nhsNo": nhs,
        "addressLines": [*address.get("line", []), *filter(None, [address.get("city")])],
        "postCode": address.get("postalCode"),
        "caseStatus": "OPEN" if patient.get("active", True) else "CLOSED",
    }


def change_item(change: Changed, person: Json | None, known: bool) -> Json:
    """One entry of the council's change list."""
    survivor = change.merged_into
    kind = (
        "deleted"
        if change.patient is None
        else "merged"
        if survivor is not None
        else "updated"
        if known
        else "created"
    )
    return {
        "changeType": kind,
        "changedAt": change.instant,
        "personRef": change.local,
        "person": person,
        "mergedInto": survivor,
    }


def case_json(person: Person, ref: str, facts: tuple[Fact, ...]) -> Json:
    """The person with everything the council records about them."""
    out = person_json(person, ref)
    out["assessments"] = [
        {
            "assessmentId": f"{ref}-{f.local_id}",
            "assessmentType": ASSESSMENT_TYPES[f.text or ""],
            "completedOn": _uk(f.when),
            "outcome": "Eligible needs identified",
        }
        for f in facts
        if f.kind == "assessment"
    ]
    out["services"] = [
        {
            "serviceId": f"{ref}-{f.local_id}",
            "serviceType": SERVICE_TYPES[f.text or ""],
            "startDate": _uk(f.when),
            "hoursPerWeek": f.value,
            "provider": "Council in-house team",
        }
        for f in facts
        if f.kind == "service"
    ]
    out["alerts"] = [
        {
            "alertId": f"{ref}-{f.local_id}",
            "alertType": ALERT_TYPES[f.text or ""],
            "raisedOn": _uk(f.when),
            "restricted": f.sensitivity is not None,
            "note": "Concerns raised; plan in place & reviewed",
        }
        for f in facts
        if f.kind == "alert"
    ]
    out["carers"] = [
        {
            "carerId": f"{ref}-{f.local_id}",
            "relationship": RELATIONSHIPS[f.text or ""],
            "carerName": carer_name(person, f),
        }
        for f in facts
        if f.kind == "carer"
    ]
    return out


def carer_name(person: Person, fact: Fact) -> str:
    """A carer's name, the same every time: family share the person's surname."""
    rng = random.Random(f"{person.index}:{fact.local_id}:carer")
    relationship = fact.text or ""
    spouse = GIVEN_MALE if person.gender == "female" else GIVEN_FEMALE
    given = {"son": GIVEN_MALE, "daughter": GIVEN_FEMALE, "friend": GIVEN_MALE + GIVEN_FEMALE}
    family = rng.choice(FAMILY) if relationship == "friend" else person.family
    return f"{rng.choice(given.get(relationship, spouse))} {family}"


def _json(body: Any, status: int = 200) -> Response:
    data = orjson.dumps(body)
    now = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return Response(
        data,
        status_code=status,
        media_type="application/json",
        headers={"ETag": etag_for(data), "Last-Modified": now},
    )


def create_app(*, seed: int, size: int, behaviour: Behaviour) -> Starlette:
    """The social-care simulator serving its slice of the synthetic population."""
    people = PopulationSlice("social-care", seed, size)
    cache = ResponseCache()
    changes = PatientChanges(on_change=cache.items.clear)

    def current(ref: str) -> Json | None:
        """The person as the council holds them now (None: not held, or merged away)."""
        changed = changes.latest.get(ref)
        if changed is None:
            person = people.by_local.get(ref)
            return person_json(person, ref) if person else None
        if changed.patient is None or changed.merged_into is not None:
            return None
        return council_person(changed.patient, ref)

    def held() -> list[str]:
        """Everyone the council holds now: not deleted, not merged away."""
        return changes.present(people.local_ids())

    def paged(q: Any, items: list[Any]) -> tuple[list[Any], int, int]:
        page = max(1, int(q.get("page", "1")))
        page_size = min(1000, max(1, int(q.get("pageSize", "100"))))
        return items[(page - 1) * page_size : page * page_size], page, page_size

    async def persons(request: Request) -> Response:
        refs = held()
        try:
            chunk, page, page_size = paged(request.query_params, refs)
        except ValueError:
            return _json({"error": "page and pageSize must be whole numbers"}, 400)
        return _json(
            {
                "items": [current(r) for r in chunk],
                "page": page,
                "pageSize": page_size,
                "totalItems": len(refs),
            }
        )

    async def changed(request: Request) -> Response:
        q = request.query_params
        try:
            listed = changes.since(q.get("since", ""))
            chunk, page, page_size = paged(q, listed)
        except ValueError:
            return _json(
                {"error": "since must be an ISO 8601 date-time; page and pageSize whole numbers"},
                400,
            )
        items = [change_item(c, current(c.local), c.local in people.by_local) for c in chunk]
        return _json(
            {"items": items, "page": page, "pageSize": page_size, "totalItems": len(listed)}
        )

    async def search(request: Request) -> Response:
        q = request.query_params
        surname = q.get("surname", "").casefold()
        forename = q.get("forename", "").casefold()
        dob, postcode = q.get("dob", ""), q.get("postCode", q.get("postcode", ""))
        nhs = q.get("nhsNo", "")
        if not any((surname, forename, dob, postcode, nhs)):
            return _json(
                {"error": "give at least one of surname, forename, dob, postcode, nhsNo"}, 400
            )
        hits = []
        for ref in held():
            p = current(ref)
            assert p is not None
            if surname and not str(p["surname"]).casefold().startswith(surname):
                continue
            if forename and not str(p["forename"]).casefold().startswith(forename):
                continue
            if dob and p["dateOfBirth"] != dob:
                continue
            if (
                postcode
                and str(p["postCode"]).replace(" ", "").upper() != postcode.replace(" ", "").upper()
            ):
                continue
            if nhs and p["nhsNo"] != nhs:
                continue
            hits.append(p)
        return _json({"items": hits, "totalItems": len(hits)})

    async def one(request: Request) -> Response:
        ref = request.path_params["ref"]
        found = current(ref)
        if found is None:
            return _json({"error": f"no person {ref}"}, 404)
        return _json(found)

    async def case(request: Request) -> Response:
        ref = request.path_params["ref"]
        found = current(ref)
        if found is None:
            return _json({"error": f"no person {ref}"}, 404)
        person = people.by_local.get(ref)
        empty: Json = {"assessments": [], "services": [], "alerts": [], "carers": []}
        out = case_json(person, ref, people.facts(ref)) if person else empty
        return _json({**out, **found})

    routes = [
        Route("/api/v2/persons", with_behaviour(behaviour, persons, MALFORMED)),
        Route("/api/v2/persons/search", with_behaviour(behaviour, search, MALFORMED)),
        Route("/api/v2/persons/changes", with_behaviour(behaviour, changed, MALFORMED)),
        Route(
            "/api/v2/persons/{ref}/case", with_behaviour(behaviour, case, MALFORMED, cache=cache)
        ),
        Route("/api/v2/persons/{ref}", with_behaviour(behaviour, one, MALFORMED)),
        *admin_routes(behaviour),
        *change_routes(changes),
    ]
    return Starlette(routes=routes, middleware=[kept_first(behaviour, cache, MALFORMED)])
