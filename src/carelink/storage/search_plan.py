"""A search's query plan read back from the database: which index each read of a table
uses, or that it scans (``IndexStore.plan``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_SQLITE_READ = re.compile(r"(SCAN|SEARCH) (\w+)(?: USING (?:COVERING )?INDEX (\w+)(?: \((.*)\))?)?")


def sqlite_access(detail: str) -> str | None:
    """One line of SQLite's query plan as ``index:<name>`` or ``scan:<table>`` (None for
    lines that read no table: sorts, unions, subquery headers, rowid seeks)."""
    found = _SQLITE_READ.match(detail)
    if found is None:
        return None
    kind, table, index, test = found.groups()
    if kind == "SEARCH" and test != "id>?":  # only the keyset's id > '': every row in id order
        return f"index:{index}" if index else None  # no index: by rowid or primary key
    return f"scan:{table}"


def postgres_access(node: dict[str, Any]) -> Iterator[str]:
    """PostgreSQL's plan tree as ``index:<name>`` or ``scan:<table>`` per table read (an
    index walked without a condition is a scan)."""
    kind = node["Node Type"]
    if kind == "Seq Scan":
        yield f"scan:{node['Relation Name']}"
    elif "Index Name" in node:
        test = node.get("Index Cond", "")
        # none, or only the keyset's id > '': every row in id order
        walked = not test or re.fullmatch(r"\(id > '[^']*'::\w+( varying)?\)", test)
        yield f"{'scan' if walked else 'index'}:{node['Index Name']}"
    for child in node.get("Plans", ()):
        yield from postgres_access(child)
