"""Flattening FHIR NDJSON to pandas-ready tables, Parquet files and a data dictionary.

One row per resource; nested elements become dotted column names
(``code.coding.0.code``), read in chunks so a large file never sits in memory
as JSON all at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 5000


def _flat(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _flat(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = obj


def flatten(resource: dict[str, Any]) -> dict[str, Any]:
    """One resource as one flat row."""
    row: dict[str, Any] = {}
    _flat(resource, "", row)
    return row


def chunks(path: Path, size: int = CHUNK) -> Iterator[pd.DataFrame]:
    """A resource NDJSON file as DataFrames of ``size`` rows."""
    rows: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                rows.append(flatten(orjson.loads(line)))
                if len(rows) >= size:
                    yield pd.DataFrame(rows)
                    rows = []
    if rows:
        yield pd.DataFrame(rows)


def read_table(path: Path) -> pd.DataFrame:
    """A whole NDJSON file as one DataFrame."""
    parts = list(chunks(path))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def to_parquet(ndjson: Path, parquet: Path) -> int:
    """Write the flattened file as Parquet (columns as strings where types vary); rows written."""
    columns: set[str] = set()
    for part in chunks(ndjson):
        columns |= set(part.columns)
    ordered = sorted(columns)
    schema = pa.schema([(c, pa.string()) for c in ordered])
    written = 0
    with pq.ParquetWriter(parquet, schema) as writer:
        for part in chunks(ndjson):
            frame = part.reindex(columns=ordered)
            table = pa.table(
                {c: [None if pd.isna(v) else str(v) for v in frame[c]] for c in ordered},
                schema=schema,
            )
            writer.write_table(table)
            written += len(frame)
    return written


def dictionary(tables: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """The data dictionary: every column of every table, its FHIR path and an example."""
    out = []
    for name, df in sorted(tables.items()):
        for col in df.columns:
            values = df[col].dropna()
            out.append(
                {
                    "table": name,
                    "column": col,
                    "fhirPath": f"{name}." + ".".join(p for p in col.split(".") if not p.isdigit()),
                    "nonEmpty": int(values.shape[0]),
                    "distinct": int(values.astype(str).nunique()),
                }
            )
    return out


async def extract(
    record: Any,
    spec: Any,
    master_key: bytes,
    rules_dir: Path,
    opt_outs: dict[str, set[str]],
    out: Path,
    progress: Any = None,
) -> dict[str, pd.DataFrame]:
    """The analyst's extract: NDJSON, then one flattened Parquet table per resource type,
    a data dictionary, the manifest and the risk report, all in ``out``. Returns the
    tables as DataFrames."""
    from carelink.export.pipeline import Output, run

    raw = out / "ndjson"
    result = await run(record, spec, master_key, rules_dir, opt_outs, Output(raw), progress)
    tables: dict[str, pd.DataFrame] = {}
    for rtype in sorted(result.counts):
        to_parquet(raw / f"{rtype}.ndjson", out / f"{rtype}.parquet")
        tables[rtype] = pd.read_parquet(out / f"{rtype}.parquet")
    (out / "dictionary.json").write_bytes(
        orjson.dumps(dictionary(tables), option=orjson.OPT_INDENT_2)
    )
    manifest = {"counts": result.counts, "carelink": result.manifest_extension()}
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if result.risk is not None:
        (out / "risk.txt").write_text(result.risk.summary() + "\n")
    return tables
