"""The iris-shaped table every data stage reads and writes, and its checks.

Between stages data travels as Parquet: typed, columnar and compressed, so no stage re-parses text or
re-guesses types, and metadata (where the data came from, its hash) rides along with the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stageflow.contract import StageError

ID = "Id"
FEATURES = ("SepalLengthCm", "SepalWidthCm", "PetalLengthCm", "PetalWidthCm")
NOISE = "RandomColumn"  # the seed's noise column: allowed in sources, dropped by process
LABEL = "Species"
SPECIES = ("setosa", "versicolor", "virginica")

TYPES = {ID: pa.int64(), **{name: pa.float64() for name in FEATURES}, NOISE: pa.float64(), LABEL: pa.string()}
REQUIRED = (ID, *FEATURES, LABEL)
META_KEY = b"stageflow"


def _first_bad(column: pa.ChunkedArray, kind: pa.DataType) -> tuple[int, str]:
    """Find the first value that does not convert, so the error can point at a row (slow path only)."""
    as_text = pc.cast(column, pa.string()).combine_chunks()
    for row, value in enumerate(as_text.to_pylist()):
        if value is None:
            continue
        try:
            pc.cast(pa.array([value.strip()]), kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return row, value
    return -1, ""


def conform(table: pa.Table, name: str) -> pa.Table:
    """Check the iris schema and cast every column to its canonical type, in canonical order.

    Unknown columns are rejected rather than carried along: a misspelt feature column would otherwise
    be silently ignored while the real one is reported missing further down.
    """
    present = table.column_names
    missing = [col for col in REQUIRED if col not in present]
    if missing:
        raise StageError(f"{name}: missing required column {', '.join(missing)} (found {', '.join(present)})")
    unknown = [col for col in present if col not in TYPES]
    if unknown:
        raise StageError(f"{name}: unknown column {', '.join(unknown)}; expected only {', '.join(TYPES)}")
    duplicated = sorted({col for col in present if present.count(col) > 1})
    if duplicated:
        raise StageError(f"{name}: column {', '.join(duplicated)} appears more than once")
    columns = {}
    for col in (c for c in TYPES if c in present):
        values = table.column(col)
        kind = TYPES[col]
        if col == LABEL and not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            raise StageError(f"{name}: column {LABEL} must hold text labels, found {values.type}")
        try:
            if pa.types.is_string(values.type) and kind != pa.string():
                values = pc.utf8_trim_whitespace(values)
            values = pc.cast(values, kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row, bad = _first_bad(values, kind)
            what = "an integer" if kind == pa.int64() else "a number"
            raise StageError(f"{name}: column {col} must be {what} in every row, found {bad!r} in row {row + 1}")
        columns[col] = values
    return pa.table(columns)


def check_ids(table: pa.Table, name: str) -> None:
    """Id is the merge key: it must be present and unique, or rows from two sources cannot be matched."""
    ids = table.column(ID)
    nulls = ids.null_count
    if nulls:
        raise StageError(f"{name}: column {ID} is empty in {nulls} row(s); every row needs an integer Id")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        shown = ", ".join(str(v) for v in sorted(repeated.to_pylist())[:5])
        raise StageError(f"{name}: duplicate Id {shown} ({len(repeated)} Id(s) appear more than once)")


def read(path: Path, name: str) -> tuple[pa.Table, dict]:
    """Read a snapshot written by `write`, with its metadata; `name` is the input it came in as."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise StageError(f"input {name}: not a readable Parquet snapshot ({' '.join(str(err).split())})")
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return conform(table.replace_schema_metadata(None), f"input {name}"), meta


def write(table: pa.Table, path: Path, meta: dict) -> None:
    """Write a snapshot; the metadata (lineage, hashes, counts) travels inside the file itself."""
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    pq.write_table(table, path, compression="zstd")
