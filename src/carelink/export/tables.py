"""Flattening FHIR NDJSON to pandas-ready tables, Parquet files and a data dictionary.

One row per resource; nested elements become dotted column names
(``code.coding.0.code``). The pipeline's ``Output`` records each table's
columns and the JSON kinds of their values as it writes (``Columns``), so a
table's NDJSON is read once, in chunks, to write its Parquet file with typed
columns: booleans, integers and decimals keep their types (a column that
holds both integers and decimals is a decimal column; any other mixture is
text, written as the JSON spelling); FHIR dates, times and codes are text.
The data dictionary is gathered in the same pass, so nothing grows with the
extract but a bounded sample of each column's values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # pyarrow is loaded when a table is written: a gateway worker that never
    # writes Parquet does not pay its import or its memory
    import pyarrow as pa

CHUNK = 5000
DISTINCT_CAP = 1000  # the dictionary counts distinct values up to this many
Json = dict[str, Any]


def _flat(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _flat(v, f"{prefix}.{i}", out)
    elif obj is not None:
        out[prefix] = obj


def flatten(resource: dict[str, Any]) -> dict[str, Any]:
    """One resource as one flat row."""
    row: dict[str, Any] = {}
    _flat(resource, "", row)
    return row


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if -(2**63) <= v < 2**63 else "str"  # beyond int64: kept exact, as text
    if isinstance(v, float):
        return "float"
    return "str"


def _widen(a: str, b: str) -> str:
    if a == b:
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    return "str"


def _text(v: Any) -> str:
    """A value in a text column, spelt as in the JSON."""
    if isinstance(v, str):
        return v
    return orjson.dumps(v).decode()


@dataclass
class Columns:
    """The columns of one table and the kind of value each holds (``bool|int|float|str``)."""

    kinds: dict[str, str] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        """Take one flattened row into account."""
        kinds = self.kinds
        for k, v in row.items():
            kind = _kind(v)
            old = kinds.get(k)
            if old != kind:
                kinds[k] = kind if old is None else _widen(old, kind)

    def schema(self) -> pa.Schema:
        """The Arrow schema, columns in name order."""
        import pyarrow as pa

        arrow = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
        return pa.schema([(c, arrow[self.kinds[c]]) for c in sorted(self.kinds)])


def rows(path: Path) -> Iterator[dict[str, Any]]:
    """The flattened rows of a resource NDJSON file, one at a time."""
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield flatten(orjson.loads(line))


@dataclass
class _Stats:
    non_empty: int = 0
    seen: set[Any] = field(default_factory=set)
    more: bool = False

    def add(self, v: Any) -> None:
        self.non_empty += 1
        if not self.more:
            self.seen.add(v)
            if len(self.seen) > DISTINCT_CAP:
                self.more, self.seen = True, set()


def to_parquet(ndjson: Path, parquet: Path, cols: Columns) -> list[dict[str, Any]]:
    """Write the flattened file as typed Parquet in one read, with the columns ``Output``
    recorded while writing it; its data dictionary entries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = cols.schema()
    names = schema.names
    text = {c for c in names if cols.kinds[c] == "str"}
    stats = {c: _Stats() for c in names}
    with pq.ParquetWriter(parquet, schema) as writer:
        batch: dict[str, list[Any]] = {c: [] for c in names}
        size = 0
        for row in rows(ndjson):
            for c in names:
                v = row.get(c)
                if v is not None:
                    if c in text:
                        v = _text(v)
                    stats[c].add(v)
                batch[c].append(v)
            size += 1
            if size >= CHUNK:
                writer.write_table(pa.table(batch, schema=schema))
                batch, size = {c: [] for c in names}, 0
        if size or not names:
            writer.write_table(pa.table(batch, schema=schema))
    name = ndjson.stem
    return [
        {
            "table": name,
            "column": c,
            "fhirPath": f"{name}." + ".".join(p for p in c.split(".") if not p.isdigit()),
            "type": cols.kinds[c],
            "nonEmpty": stats[c].non_empty,
            "distinct": f">{DISTINCT_CAP}" if stats[c].more else len(stats[c].seen),
        }
        for c in names
    ]


ERRORS = "OperationOutcome.ndjson"


def write_errors(directory: Path, outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Bulk Data error file (one OperationOutcome a line), if there is anything to
    say; its manifest entries."""
    if not outcomes:
        return []
    (directory / ERRORS).write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in outcomes))
    return [{"type": "OperationOutcome", "url": ERRORS, "count": len(outcomes)}]


class Output:
    """One NDJSON file per resource type, appended as people are processed."""

    def __init__(self, directory: Path, tabulate: bool = False, name: str = "") -> None:
        self.directory = directory
        #: the extract's name (``dateShiftScope: folder``): the job id, or the output folder
        self.name = name or directory.name
        directory.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        self.tabulate = tabulate
        #: each type's table columns, recorded as written when ``tabulate`` (for Parquet)
        self.columns: dict[str, Columns] = {}
        self._files: dict[str, Any] = {}

    def write(self, resource: Json) -> None:
        """Append one resource."""
        rtype = str(resource["resourceType"])
        f = self._files.get(rtype)
        if f is None:
            f = (self.directory / f"{rtype}.ndjson").open("wb")
            self._files[rtype] = f
        f.write(orjson.dumps(resource) + b"\n")
        self.counts[rtype] = self.counts.get(rtype, 0) + 1
        if self.tabulate:
            cols = self.columns.get(rtype)
            if cols is None:
                cols = self.columns[rtype] = Columns()
            cols.add(flatten(resource))

    def close(self) -> None:
        """Flush and close every file."""
        for f in self._files.values():
            f.close()
        self._files.clear()
