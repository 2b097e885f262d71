"""Bundle building on plain dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

Json = dict[str, Any]


def entry(
    base: str,
    resource: Json,
    mode: str | None = "match",
    encode: Callable[[Json], Any] | None = None,
) -> Json:
    """A Bundle entry whose ``fullUrl`` is the resource's absolute URL on ``base``; with
    ``encode``, the resource as it gives it (its JSON made once: ``Encodings.fragment``)."""
    out: Json = {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource if encode is None else encode(resource),
    }
    if mode is not None:
        out["search"] = {"mode": mode}
    return out


def searchset(
    base: str,
    matches: Iterable[Json],
    *,
    total: int | None,
    links: dict[str, str],
    includes: Iterable[Json] = (),
    outcomes: Iterable[Json] = (),
    timestamp: str | None = None,
    id_: str | None = None,
    encode: Callable[[Json], Any] | None = None,
    entry_of: Callable[[str, Json, str], Any] | None = None,
    entries_of: Callable[[str, Sequence[Json], str], Any] | None = None,
) -> Json:
    """A ``searchset`` Bundle: matches, then includes, then outcome entries (``encode``:
    as ``entry``'s; ``entry_of(base, resource, mode)``: each entry as it gives it, the
    JSON of ``entry``'s, e.g. ``Encodings.entry``; with it, ``entries_of(base, matches,
    "match")``: every match's entry at once, JSON that stands for them all in the list,
    e.g. ``Encodings.entries``)."""
    if entry_of is not None:
        if entries_of is not None:
            # a list as it is: the one a snapshot fingerprinted, known by its identity
            shown = matches if isinstance(matches, list | tuple) else list(matches)
            entries: list[Any] = [entries_of(base, shown, "match")] if shown else []
        else:
            entries = [entry_of(base, r, "match") for r in matches]
        if includes:
            entries.extend(entry_of(base, r, "include") for r in includes)
    else:
        entries = [entry(base, r, "match", encode) for r in matches]
        if includes:  # nothing to walk for the usual none (a generator is always walked)
            entries.extend(entry(base, r, "include", encode) for r in includes)
    if outcomes:
        # an outcome is about this answer, not a resource the server holds: no fullUrl
        entries.extend({"resource": oo, "search": {"mode": "outcome"}} for oo in outcomes)
    out: Json = {"resourceType": "Bundle", "type": "searchset"}
    if id_ is not None:
        out["id"] = id_
    if timestamp is not None:
        out["timestamp"] = timestamp
    if total is not None:
        out["total"] = total
    out["link"] = [{"relation": rel, "url": url} for rel, url in links.items()]
    out["entry"] = entries
    return out
