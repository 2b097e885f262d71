"""Read FHIR R4 from files as real exports write them, saying where each resource came from.

- ``*.ndjson``: one resource a line (Bulk Data); blank lines are ignored,
  ``\\r\\n`` endings and a UTF-8 byte-order mark are accepted.
- ``*.json``: one resource, or a Bundle whose entries are read one by one.
  A line of an NDJSON file may be a Bundle too.

Nothing here throws for one bad line, entry or file: what cannot be read is
returned as a ``Problem`` naming ``file:line`` (or ``file#entry[i]``) and
why, and reading goes on. Problems never quote the data itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Json = dict[str, Any]
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Problem:
    """Something in the data that is not served as given, and why."""

    where: str  # file:line, file#entry[i] or file
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Item:
    """One resource read from the files."""

    where: str
    resource: Json
    full_url: str | None = None  # the Bundle entry's fullUrl, when it came from one


def data_files(path: Path) -> list[Path]:
    """The files under ``path`` to read; ValueError if there are none."""
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(path.rglob("*.ndjson")) + sorted(path.rglob("*.json"))
        if not files:
            raise ValueError(f"{path}: no .ndjson or .json files found")
        return files
    return [path]


def read(files: list[Path]) -> tuple[list[Item], list[Problem]]:
    """Every resource in ``files``, and what could not be read."""
    items: list[Item] = []
    problems: list[Problem] = []
    for f in files:
        for got in _read_file(f):
            if isinstance(got, Item):
                items.append(got)
            else:
                problems.append(got)
    return items, problems


def _read_file(f: Path) -> Iterator[Item | Problem]:
    try:
        data = f.read_bytes().removeprefix(_BOM)
    except OSError as exc:
        yield Problem(str(f), f"unreadable ({type(exc).__name__})")
        return
    if f.suffix == ".ndjson":
        for n, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                yield from _document(line, f"{f}:{n}")
        return
    yield from _document(data, str(f))


def _document(data: bytes, where: str) -> Iterator[Item | Problem]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        yield Problem(where, "not JSON")
        return
    checked = _resource(doc, where)
    if isinstance(checked, Problem):
        yield checked
    elif checked.get("resourceType") == "Bundle":
        yield from _entries(checked, where)
    else:
        yield Item(where, checked)


def _resource(doc: Any, where: str) -> Json | Problem:
    if not isinstance(doc, dict):
        return Problem(where, "not a JSON object")
    rtype = doc.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return Problem(where, "no resourceType")
    return doc


def _entries(bundle: Json, where: str) -> Iterator[Item | Problem]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        yield Problem(where, "Bundle.entry is not a list")
        return
    for i, entry in enumerate(entries):
        at = f"{where}#entry[{i}]"
        if not isinstance(entry, dict):
            yield Problem(at, "entry is not a JSON object")
            continue
        if "resource" not in entry:
            yield Problem(at, "entry without a resource (a request only)")
            continue
        checked = _resource(entry["resource"], at)
        if isinstance(checked, Problem):
            yield checked
            continue
        url = entry.get("fullUrl")
        yield Item(at, checked, url if isinstance(url, str) and url else None)
