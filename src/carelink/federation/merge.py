"""Merge the sources' answers: one list, duplicates folded, provenance per source."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from carelink.federation.fanout import OK, SourceResult
from carelink.sources.base import source_uri

Json = dict[str, Any]

PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
_IGNORED = frozenset(("id", "meta", "text"))
#: a Provenance's ``recorded`` when the source gave no as-of
NO_AS_OF = "1970-01-01T00:00:00Z"


def fold_key(resource: Json) -> bytes:
    """What makes two resources from different sources the same fact.

    Everything but id, meta and narrative: equal content (the same allergy,
    code, onset and patient) recorded in two places is one fact.
    """
    content = {k: v for k, v in resource.items() if k not in _IGNORED}
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def merge(results: Sequence[SourceResult]) -> tuple[list[Json], list[list[str]]]:
    """All resources of the sources that answered, exact duplicates folded.

    Only copies from different sources fold: two identical entries within
    one source are two records there and both are kept. Returns the
    resources (in source order, then as each source sent them) and, per
    answer (each result that is ok, in the order of ``results``), the
    references of the resources it contributed (including the ones folded
    into another source's copy). Per answer, not per source: a person may
    have two records at one source, and each answer's Provenance names its own.
    """
    seen: dict[bytes, tuple[str, Json]] = {}
    out: list[Json] = []
    contributed: list[list[str]] = []
    for result in results:
        if result.status != OK:
            continue
        refs: list[str] = []
        contributed.append(refs)
        for resource in result.resources:
            if resource["resourceType"] == "Patient":
                out.append(resource)
                refs.append(f"Patient/{resource['id']}")
                continue
            key = fold_key(resource)
            hit = seen.get(key)
            if hit is not None and hit[0] != result.source:
                kept = hit[1]  # the same fact from another source: one copy, both credited
            else:
                seen.setdefault(key, (result.source, resource))
                out.append(resource)
                kept = resource
            refs.append(f"{kept['resourceType']}/{kept['id']}")
    return out, contributed


def provenance(
    person_id: str, result: SourceResult, targets: list[str], ods: str | None = None
) -> Json:
    """A reproducible Provenance: same source data for the same person -> same resource.

    The author is the source's organisation by ODS code when ``ods`` is known (as UK
    Core names organisations), else the source by its carelink name.
    """
    who = (
        {"system": ODS_SYSTEM, "value": ods}
        if ods
        else {"system": "urn:carelink:source", "value": result.source}
    )
    digest = hashlib.blake2b(
        f"{person_id}|{result.source}|{result.version}".encode(), digest_size=16
    ).hexdigest()
    return {
        "resourceType": "Provenance",
        "id": f"prov-{digest}",
        "meta": {"source": "urn:carelink:gateway"},
        "target": [{"reference": t} for t in targets] or [{"reference": f"Patient/{person_id}"}],
        "recorded": result.as_of or NO_AS_OF,
        "activity": {"text": "federated retrieval"},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "author"}]},
                "who": {"identifier": who, "display": result.source},
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "identifier": {
                        "system": "urn:carelink:source-version",
                        "value": result.version or "unknown",
                    },
                    "display": source_uri(result.source),
                },
            }
        ],
    }
