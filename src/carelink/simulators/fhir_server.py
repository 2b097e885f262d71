"""HTTP plumbing shared by the two FHIR-speaking simulators."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from carelink.simulators.base import etag_for, http_now
from carelink.simulators.fhir_store import FhirStore

Json = dict[str, Any]
FHIR_JSON = "application/fhir+json"
Endpoint = Callable[[Request], Awaitable[Response]]


def fhir_response(body: Json | bytes, status: int = 200, etag: str | None = None) -> Response:
    """A FHIR JSON response carrying an ETag of its bytes (``etag``, when made already)
    and the time it was current."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(
        data,
        status_code=status,
        media_type=FHIR_JSON,
        headers={"ETag": etag or etag_for(data), "Last-Modified": http_now()},
    )


def capability(
    software: str, fhir_version: str, resources: list[str], operations: list[Json]
) -> Endpoint:
    """``GET [base]/metadata``: a CapabilityStatement naming the FHIR version, the resource
    types served and the operations; a source adapter's first question (``sources.kind``)."""
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": software},
        "fhirVersion": fhir_version,
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                    for t in resources
                ],
                "operation": operations,
            }
        ],
    }

    async def metadata(request: Request) -> Response:
        return fhir_response(statement)

    return metadata


def not_found(what: str) -> Response:
    """404 with an OperationOutcome."""
    return fhir_response(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "not-found", "diagnostics": f"{what} not found"}
            ],
        },
        404,
    )


def bad_request(what: str) -> Response:
    """400 with an OperationOutcome."""
    return fhir_response(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": what}],
        },
        400,
    )


def searchset(base: str, resources: list[Json], total: int, links: dict[str, str]) -> Json:
    """A searchset Bundle."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": k, "url": v} for k, v in links.items()],
        "entry": [
            {**full_url(base, r), "resource": r, "search": {"mode": "match"}} for r in resources
        ],
    }


def full_url(base: str, resource: Json) -> dict[str, str]:
    """``{"fullUrl": ...}`` for a Bundle entry, or nothing for a resource without an id
    (data loaded with ``--data`` may hold such resources; they are served as given)."""
    rid = resource.get("id")
    return {"fullUrl": f"{base}/{resource['resourceType']}/{rid}"} if rid else {}


def page_links(url: str, offset: int, count: int, total: int) -> dict[str, str]:
    """self / next / previous links for offset paging."""
    sep = "&" if "?" in url else "?"
    links = {"self": f"{url}{sep}_count={count}&_offset={offset}"}
    if offset + count < total:
        links["next"] = f"{url}{sep}_count={count}&_offset={offset + count}"
    if offset > 0:
        links["previous"] = f"{url}{sep}_count={count}&_offset={max(0, offset - count)}"
    return links


def int_param(value: str | None, default: int, upper: int) -> int:
    """A non-negative integer query parameter, capped; raises ValueError if not a number."""
    if value is None:
        return default
    n = int(value)
    if n < 0:
        raise ValueError("negative")
    return min(n, upper)


def resource_read(store: FhirStore) -> Endpoint:
    """``GET {base}/{type}/{id}``: any resource the store holds, shared ones included."""

    async def read(request: Request) -> Response:
        rtype, rid = request.path_params["type"], request.path_params["id"]
        found = store.resource(rtype, rid)
        return fhir_response(found) if found else not_found(rtype)

    return read


def identifier_search(request: Request, store: FhirStore, base: str) -> Response:
    """``GET {base}/{type}?identifier=system|value`` (one page: identifiers are near-unique)."""
    rtype = request.path_params["type"]
    ident = request.query_params.get("identifier", "")
    if not ident:
        return bad_request(f"{rtype} search needs an identifier parameter")
    system, sep, value = ident.partition("|")
    hits = store.search(rtype, system if sep else None, value if sep else system)
    url = f"{base}/{rtype}?identifier={ident}"
    links = page_links(url, 0, len(hits) or 1, len(hits))
    return fhir_response(searchset(base, hits, len(hits), links))
