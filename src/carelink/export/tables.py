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

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 5000
DISTINCT_CAP = 1000  # the dictionary counts distinct values up to this many
ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}


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
        return pa.schema([(c, ARROW[self.kinds[c]]) for c in sorted(self.kinds)])


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


@dataclass(frozen=True)
class Extracted:
    """Where an analyst's extract was written, and what it holds."""

    directory: Path
    counts: dict[str, int]
    manifest: dict[str, Any]

    def table(self, rtype: str) -> pd.DataFrame:
        """One resource type's table as a DataFrame."""
        if rtype not in self.counts:
            raise KeyError(f"the extract has no {rtype} table")
        return pd.read_parquet(self.directory / f"{rtype}.parquet")

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table as a DataFrame (loads them all: for extracts that fit in memory)."""
        return {rtype: self.table(rtype) for rtype in sorted(self.counts)}


async def extract(
    record: Any,
    spec: Any,
    master_key: bytes,
    rules_dir: Path,
    opt_outs: dict[str, set[str]],
    out: Path,
    progress: Any = None,
    guard: Any = None,
) -> Extracted:
    """The analyst's extract: NDJSON, then one flattened, typed Parquet table per resource
    type, a data dictionary, the manifest and the risk report, all in ``out``."""
    from carelink.export.pipeline import Output, run

    raw = out / "ndjson"
    output = Output(raw, tabulate=True, name=out.name)
    try:
        result = await run(
            record, spec, master_key, rules_dir, opt_outs, output, progress, guard=guard
        )
        entries: list[dict[str, Any]] = []
        for rtype in sorted(result.counts):
            entries += to_parquet(
                raw / f"{rtype}.ndjson", out / f"{rtype}.parquet", output.columns[rtype]
            )
    except BaseException:
        # Refused or failed: nothing half-written stays (NDJSON or tables).
        shutil.rmtree(raw, ignore_errors=True)
        for rtype in output.counts:
            (out / f"{rtype}.parquet").unlink(missing_ok=True)
        raise
    (out / "dictionary.json").write_bytes(orjson.dumps(entries, option=orjson.OPT_INDENT_2))
    errors = result.errors()
    write_errors(out, errors)
    manifest = {
        "counts": result.counts,
        "errors": [o["issue"][0]["diagnostics"] for o in errors],
        "carelink": result.manifest_extension(),
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if result.risk is not None:
        (out / "risk.txt").write_text(result.risk.summary() + "\n")
    return Extracted(out, dict(result.counts), manifest)
