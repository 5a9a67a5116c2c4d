"""The table every data stage reads and writes, checked against the schema (stageflow/runtime/schema.py).

Between stages data travels as Parquet: typed, columnar and compressed, so no stage re-parses text or
re-guesses types, and metadata (where the data came from, its hash) rides along with the rows.

Snapshots are read and written a row group at a time (`Snapshot.tables`, `Writer`), so a stage that works
row by row holds one row group in memory, not the data set. Labels are dictionary-encoded (a handful of
distinct strings stored once, an int32 code per row): about 4 bytes a row in memory instead of a string, and
a pandas reader gets a categorical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stageflow.runtime import schema as schemas
from stageflow.runtime.contract import StageError

LABEL_TYPE = pa.dictionary(pa.int32(), pa.string())
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "text": pa.string(), "label": LABEL_TYPE}
META_KEY = b"stageflow"
ROW_GROUP = 1_000_000  # rows per Parquet row group: what a streaming stage holds in memory at a time
# Unit words a column name may carry or drop (`SepalLengthCm`, `sepal length (cm)`, `sepal_length`).
UNITS = {"cm", "mm", "m", "km", "in", "ft", "g", "kg", "mg", "lb", "ml", "l", "s", "ms", "min", "h", "pct",
         "percent"}


def key() -> str:
    """The active schema's key column: what merge matches and sorts rows by."""
    return schemas.active().key


def label() -> str:
    """The active schema's label column."""
    return schemas.active().label


def arrow_types(schema: schemas.Schema) -> dict[str, pa.DataType]:
    """Each column the schema allows, in snapshot order, with the Arrow type snapshots hold it as."""
    return {name: ARROW_TYPES[kind] for name, kind in schema.types.items()}


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


def _blank_to_null(text: pa.ChunkedArray) -> pa.ChunkedArray:
    blank = pc.equal(pc.utf8_trim_whitespace(text), "")
    return pc.if_else(blank, pa.scalar(None, pa.string()), text)


def _label_column(values: pa.ChunkedArray, name: str, label: str) -> pa.ChunkedArray:
    """Labels as LABEL_TYPE, whatever they arrived as: text, dictionary-encoded text, integers (a Parquet or
    JSON source) or booleans become text, so `1` from a CSV and `1` from Parquet are one label.

    A blank label (a CSV's empty field, what pandas writes for a missing value) is a missing label, as a JSON
    null or a Parquet null is: one meaning whatever the format, and process drops such rows and counts them."""
    kind = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = pc.cast(pc.cast(values, kind), pa.string())
    elif not pa.types.is_string(kind) and not pa.types.is_large_string(kind) and not pa.types.is_null(kind):
        raise StageError(f"{name}: column {label} must hold text or integer labels, found {values.type}")
    labels = pc.cast(values, LABEL_TYPE)
    # Checked on each chunk's dictionary (a handful of entries), so labels that are all present cost nothing.
    if any(chunk.dictionary.null_count or pc.any(pc.equal(pc.utf8_trim_whitespace(chunk.dictionary), "")).as_py()
           for chunk in labels.chunks):
        # a missing label must be a missing row, not a dictionary entry
        labels = pc.cast(_blank_to_null(pc.cast(labels, pa.string())), LABEL_TYPE)
    return labels


def listed(names: list[str], limit: int = 10) -> str:
    """Names for a message: all of a few, the first `limit` of many (a header can hold a million)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _words(name: str) -> list[str]:
    """A column name as lower-case words, whatever its case, separators and units: `SepalLengthCm`,
    `sepal_length` and `sepal length (cm)` are all sepal, length (and cm)."""
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)]
    return words[:-1] if len(words) > 1 and words[-1] in UNITS else words


def did_you_mean(missing: list[str], present: list[str]) -> str:
    """`; did you mean id for Id, ...?` for each missing column that a present one matches apart from case,
    spaces, separators or units; empty when none does."""
    spelt: dict[tuple[str, ...], str] = {}
    for have in present:
        spelt.setdefault(tuple(_words(have)), have)
    pairs = [f"{spelt[tuple(_words(wanted))]} for {wanted}" for wanted in missing if tuple(_words(wanted)) in spelt]
    return f"; did you mean {', '.join(pairs[:10])}?" if pairs else ""


def _cast(values: pa.ChunkedArray, kind: pa.DataType, col: str, name: str, first_row: int) -> pa.ChunkedArray:
    """A column as `kind`, padding around numbers tolerated; else the first value that does not convert."""
    text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    if kind == pa.string():  # a text key or dropped column: a blank value is a missing one
        return _blank_to_null(pc.cast(values, kind))
    if values.type == kind:
        return values
    try:
        return pc.cast(pc.utf8_trim_whitespace(values) if text else values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row, bad = _first_bad(values, kind)
        what = "an integer" if kind == pa.int64() else "a number"
        raise StageError(f"{name}: column {col} must be {what} in every row, "
                         f"found {bad!r} in row {first_row + row + 1}") from None


def conform(table: pa.Table, name: str, first_row: int = 0) -> pa.Table:
    """Check the table against the active schema and cast every column to its type, in schema order.

    Unknown columns are rejected rather than carried along: a misspelt feature column would otherwise
    be silently ignored while the real one is reported missing further down. `first_row` is where
    `table` starts in the whole source when it is one batch of a stream, so errors name the right row.
    """
    schema = schemas.active()
    types = arrow_types(schema)
    present = table.column_names
    missing = [col for col in schema.required if col not in present]
    if missing:
        hint = did_you_mean(missing, present)
        raise StageError(f"{name}: missing required column {', '.join(missing)} (found {listed(present)})" +
                         (f"{hint} Rename the column in the file or in the schema ({schema.path})" if hint else ""))
    unknown = [col for col in present if col not in types]
    if unknown:
        raise StageError(f"{name}: unknown column {listed(unknown)}; expected only {listed(list(types), 30)}")
    duplicated = sorted({col for col in present if present.count(col) > 1})
    if duplicated:
        raise StageError(f"{name}: column {listed(duplicated)} appears more than once")
    columns, names = [], []
    for col in (c for c in types if c in present):
        values = table.column(col)
        if col == schema.label:
            values = _label_column(values, name, col)
        else:
            values = _cast(values, types[col], col, name, first_row)
        columns.append(values)
        names.append(col)
    return pa.Table.from_arrays(columns, names=names)


def strictly_increasing(values: pa.ChunkedArray) -> bool:
    """True when every value is larger than the one before (no nulls expected)."""
    if len(values) < 2:
        return True
    return pc.all(pc.greater(values.slice(1), values.slice(0, len(values) - 1))).as_py() is True


def check_ids(table: pa.Table, name: str) -> None:
    """The key (Id for iris) is what merge matches rows on: it must be present and unique, or rows from two
    sources cannot be matched.

    Sources are usually sorted by their key, and then a strictly increasing column proves uniqueness in one
    pass without a hash table. Otherwise the keys are sorted and neighbours compared: a sorted copy and its
    order, 16 bytes a row for integer keys, where counting 10M shuffled keys in a hash table peaked at 1.3 GB.
    """
    schema = schemas.active()
    ids = table.column(schema.key)
    nulls = ids.null_count
    if nulls:
        kind = "an integer" if schema.key_type == "int" else "a"
        raise StageError(f"{name}: column {schema.key} is empty in {nulls} row(s); every row needs {kind} "
                         f"{schema.key}")
    if strictly_increasing(ids):
        return
    ordered = ids.take(pc.sort_indices(ids))
    later, earlier = ordered.slice(1), ordered.slice(0, len(ordered) - 1)
    repeated = pc.unique(pc.filter(later, pc.equal(later, earlier))).to_pylist()
    if repeated:
        shown = ", ".join(str(v) for v in sorted(repeated)[:5])
        raise StageError(f"{name}: duplicate {schema.key} {shown} ({len(repeated)} {schema.key}(s) appear more "
                         f"than once)")


def _unreadable(name: str, err: Exception) -> StageError:
    return StageError(f"input {name}: not a readable Parquet snapshot ({' '.join(str(err).split())})")


class Snapshot:
    """A snapshot opened for reading: its metadata and size at once, its rows a row group at a time."""

    def __init__(self, path: Path, name: str):
        self.name = name  # the input it came in as, for error messages
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(name, err) from None
        self.meta = json.loads((self.file.metadata.metadata or {}).get(META_KEY, b"{}"))
        self.num_rows = self.file.metadata.num_rows
        self.column_names = self.file.schema_arrow.names

    def _read(self, read, *args, **kwargs) -> pa.Table:
        try:
            table = read(*args, **kwargs)
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(self.name, err) from None
        return table.replace_schema_metadata(None)

    def tables(self) -> Iterator[pa.Table]:
        """Every row group in turn, checked and cast like `read`."""
        first_row = 0
        for group in range(self.file.num_row_groups):
            table = self._read(self.file.read_row_group, group)
            yield conform(table, f"input {self.name}", first_row)
            first_row += table.num_rows

    def empty(self) -> pa.Table:
        """No rows, but the checked columns and types: for comparing schemas before reading data."""
        # (from_batches, not schema.empty_table(): that one makes pyarrow import pandas, 0.5 s, where installed)
        empty = pa.Table.from_batches([], schema=self.file.schema_arrow.remove_metadata())
        return conform(empty, f"input {self.name}")

    def column(self, col: str) -> pa.ChunkedArray:
        """One column, whole (for the key: 8 bytes a row when it is an integer)."""
        table = self._read(self.file.read, columns=[col])
        return table.column(col)

    def read(self) -> pa.Table:
        """The whole snapshot, checked and cast."""
        return conform(self._read(self.file.read), f"input {self.name}")


class Writer:
    """Write a snapshot in row groups of ROW_GROUP rows, as a context manager.

    Leaving the block normally writes the footer with `meta` (lineage, hashes, counts: set it last, as it
    may depend on everything written). Leaving it with an exception aborts: the file is released, never
    finished, and the exception goes on. Without a schema the file is opened at the first `write`, with
    that table's schema, for a stage that learns its columns from its first batch.
    """

    def __init__(self, path: Path, schema: pa.Schema | None = None):
        self.path = path
        self.meta: dict = {}
        self.pending: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.sink = self.writer = None
        if schema is not None:
            self._open(schema)

    def _open(self, schema: pa.Schema) -> None:
        # zstd at its fastest level; Ids (usually ascending) delta-encoded, smaller and cheaper than a
        # dictionary; features and labels dictionary-encoded (few distinct values); dropped columns plain.
        declared = schemas.active()
        key, integer = declared.key, declared.key_type == "int"
        self.sink = pa.OSFile(str(self.path), "wb")  # ours to close, even when the writer cannot finish
        try:
            self.writer = pq.ParquetWriter(
                self.sink, schema, compression="zstd", compression_level=1,
                use_dictionary=[name for name in (*declared.features, declared.label) if name in schema.names],
                column_encoding={key: "DELTA_BINARY_PACKED"} if key in schema.names and integer else None)
        except BaseException:
            self.sink.close()
            raise

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind, err, trace) -> None:
        if kind is None:
            self._close()
        else:
            self._abort()

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self._open(table.schema)
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if self.buffered >= ROW_GROUP:
            # Whole row groups only, the rest kept for the next: every row group but the last holds exactly
            # ROW_GROUP rows, whatever sizes the batches came in, so the same rows give the same file.
            joined = pa.concat_tables(self.pending)
            whole = self.buffered - self.buffered % ROW_GROUP
            self.pending, self.buffered = [joined.slice(whole)], self.buffered - whole
            self._write(joined.slice(0, whole))

    def _write(self, table: pa.Table) -> None:
        # One label dictionary per row group: batches each bring their own, and the Parquet writer
        # re-encodes a column whose dictionary changes from chunk to chunk (4x the cost, measured).
        self.writer.write_table(table.unify_dictionaries(), row_group_size=ROW_GROUP)

    def _flush(self) -> None:
        if self.buffered:
            self._write(pa.concat_tables(self.pending))
        self.pending, self.buffered = [], 0

    def _close(self) -> None:
        if self.writer is None:
            raise ValueError(f"{self.path}: no schema and nothing written, so no snapshot to close")
        try:
            self._flush()
            self.writer.add_key_value_metadata({META_KEY: json.dumps(self.meta, sort_keys=True).encode()})
            self.writer.close()
        except BaseException:
            self._abort()
            raise
        self.sink.close()

    def _abort(self) -> None:
        """Give up on the file (the caller deletes it): release it and never mask the error that got us here.

        On a full disk the footer cannot be written either, and a file left open keeps its blocks, so the
        stage could not even write its _ERROR."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except (OSError, pa.ArrowException):
            pass
        finally:
            self.sink.close()
