"""Every reference in a Bundle, and which of them point nowhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Json = dict[str, Any]


def references(value: Any) -> Iterator[Json]:
    """Every Reference-shaped element (a dict with ``reference`` or a lone ``identifier``)."""
    if isinstance(value, dict):
        logical = isinstance(value.get("identifier"), dict) and set(value) <= {
            "identifier",
            "display",
            "type",
        }
        if isinstance(value.get("reference"), str) or logical:
            yield value
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


def unresolved(bundle: Json, readable: Callable[[str], bool]) -> list[str]:
    """References of the Bundle's resources that neither name an entry nor can be read.

    ``readable("Type/id")`` asks the server (a read answering 200). Contained
    (``#``) references count as resolved when the resource contains the id.
    Identifier-only (logical) references are ``logical_only``'s business.
    """
    held = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    held |= {e["fullUrl"] for e in bundle["entry"] if "fullUrl" in e}
    out = []
    asked: dict[str, bool] = {}
    for e in bundle["entry"]:
        resource = e["resource"]
        contained = {f"#{c.get('id')}" for c in resource.get("contained", [])}
        for ref in references({k: v for k, v in resource.items() if k != "contained"}):
            target = ref.get("reference")
            if not isinstance(target, str):
                continue
            if target in held or target in contained:
                continue
            if "?" in target or target.count("/") != 1:
                out.append(target)
                continue
            if target not in asked:
                asked[target] = readable(target)
            if not asked[target]:
                out.append(target)
    return out


def logical_only(bundle: Json) -> list[tuple[str, Json]]:
    """Identifier-only references left in the Bundle: (type of the holding resource, ref)."""
    return [
        (e["resource"]["resourceType"], ref)
        for e in bundle["entry"]
        for ref in references(e["resource"])
        if "reference" not in ref
    ]
