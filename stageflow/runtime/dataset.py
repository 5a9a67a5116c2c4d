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

from stageflow.runtime import cluster, schema as schemas
from stageflow.runtime.contract import StageError

LABEL_TYPE = pa.dictionary(pa.int32(), pa.string())
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "text": pa.string(), "label": LABEL_TYPE}
META_KEY = b"stageflow"
ROW_GROUP = 1_000_000  # rows per Parquet row group: what a streaming stage holds in memory at a time
# Unit words a column name may carry or drop (`SepalLengthCm`, `sepal length (cm)`, `sepal_length`).
UNITS = {"cm", "mm", "m", "km", "in", "ft", "g", "kg", "mg", "lb", "ml", "l", "s", "ms", "min", "h", "pct",
         "percent"}


def own_process() -> None:
    """A data stage's own process, set up before its work. Called from the stage's `if __name__ == "__main__"`
    only, never where its logic is imported (a test's process): both settings are the whole process's.

    Arrow's memory comes from jemalloc where pyarrow has it (its Linux wheels): with pyarrow's default,
    mimalloc, each stage spent 0.3-0.4 s more of system time handing row groups' memory to and from the
    kernel, at 1,000,000 rows a row group (measured side by side, docs/performance.md). And pandas is kept
    out (cluster.keep_pandas_out)."""
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without it
        pass
    cluster.keep_pandas_out()


def key() -> str:
    """The active schema's key column: what merge matches and sorts rows by."""
    return schemas.active().key


def label() -> str:
    """The active schema's label column."""
    return schemas.active().label


def arrow_types(schema: schemas.Schema) -> dict[str, pa.DataType]:
    """Each column the schema allows, in snapshot order, with the Arrow type snapshots hold it as."""
    return {name: ARROW_TYPES[kind] for name, kind in schema.types.items()}


# What a column of each schema type takes, by the family of the type it arrives as (`_family`): a value of
# any other type (a timestamp, bytes, a list, a struct, a map...) is refused, since converting it would change
# what it means (a timestamp key would become a count of microseconds). A null column (JSON with no value
# there) fits every type.
ACCEPTS = {"int": ("integer", "float", "decimal", "text"), "float": ("integer", "float", "decimal", "text"),
           "text": ("text", "integer"), "label": ("text", "integer", "boolean")}
EXPECTED = {"int": "an integer", "float": "a number", "text": "text", "label": "text or an integer (a label)"}
# A float holds every integer up to 2**53 exactly and no longer all of them beyond: a float converted to an
# integer column must lie within it, or the integer may not be the one the source meant.
EXACT_INTEGERS = 2 ** 53
# The largest magnitude a feature may have. Training standardises each feature, which adds up the squares of
# its values: from about 1e154 they overflow a float64 and sklearn reports the data as containing NaN. 1e100
# leaves room for 1e100 rows; infinity is out of range too.
FEATURE_LIMIT = 1e100
# Spellings other tools read as a missing value. Here only an empty field is missing: these are refused like
# any other word in a number column, and the error then says how to write a missing value.
MISSING_WORDS = {"na", "n/a", "#n/a", "#n/a n/a", "#na", "<na>", "null", "none", "nil", "missing", "-", "?",
                 "-1.#ind", "1.#ind", "-1.#qnan", "1.#qnan"}
_FAMILIES = (("null", pa.types.is_null), ("boolean", pa.types.is_boolean), ("integer", pa.types.is_integer),
             ("float", pa.types.is_floating), ("decimal", pa.types.is_decimal),
             ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)))
_WORDS = ((pa.types.is_timestamp, "a timestamp"), (pa.types.is_date, "a date"), (pa.types.is_time, "a time of day"),
          (pa.types.is_duration, "a duration"), (pa.types.is_interval, "an interval"), (pa.types.is_map, "a map"),
          (lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
           or pa.types.is_list_view(t) or pa.types.is_large_list_view(t), "a list"),
          (pa.types.is_struct, "a struct"), (pa.types.is_union, "a union"), (pa.types.is_boolean, "a boolean"),
          (pa.types.is_floating, "a float"), (pa.types.is_integer, "an integer"), (pa.types.is_decimal, "a decimal"),
          (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
           or pa.types.is_binary_view(t), "bytes"))


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _family(kind: pa.DataType) -> str:
    kind = _value_type(kind)
    return next((family for family, test in _FAMILIES if test(kind)), "other")


def _first(values: pa.ChunkedArray, bad) -> int:
    """The index of the first value for which `bad(slice)` holds, given that it holds for the whole column:
    halving, so it costs about two passes over the column (only on the way to an error)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bad(values.slice(lo, mid - lo)):
            hi = mid
        else:
            lo = mid
    return lo


def _shown(values: pa.ChunkedArray, row: int, kind_too: bool) -> str:
    """One value for a message: text quoted, a number as it prints; with `kind_too` anything else also says
    what kind of value it is (`a timestamp (2024-01-01 00:00:00)`)."""
    kind = _value_type(values.type)
    try:
        value = values[row].as_py()
    except (ValueError, OverflowError, pa.ArrowException):  # a timestamp past year 9999, say
        value = None
    text = str(value)
    text = text if len(text) <= 60 else text[:60] + "…"
    if isinstance(value, str):
        return repr(text)
    if not kind_too:
        return text
    word = next((word for test, word in _WORDS if test(kind)), f"a {kind}")
    return f"{word} ({text})" if value is not None else word


def _refuse(values: pa.ChunkedArray, row: int, what: str, col: str, name: str, first_row: int,
            hint: str = "", kind_too: bool = False) -> StageError:
    return StageError(f"{name}: column {col} must be {what} in every row, found {_shown(values, row, kind_too)} in "
                      f"row {first_row + row + 1}{hint}")


def _utf8_valid(values: pa.ChunkedArray) -> bool:
    try:
        values.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _valid_text(values: pa.ChunkedArray, col: str, name: str, first_row: int) -> pa.ChunkedArray:
    """Text columns as they are when they are UTF-8, which no reader guarantees (JSON and Parquet readers pass
    any bytes on); else the row and the bytes that are not, before anything tries to decode them."""
    if _utf8_valid(values):
        return values
    if pa.types.is_dictionary(values.type):  # the bad entry may be one no row uses: then the rows are fine
        values = pc.cast(values, values.type.value_type)
        if _utf8_valid(values):
            return values
    row = _first(values, lambda part: not _utf8_valid(part))
    raw = pc.cast(values.slice(row, 1), pa.large_binary())[0].as_py()
    raise StageError(f"{name}: column {col} is not UTF-8 text in row {first_row + row + 1} ({raw[:60]!r}); "
                     f"save the file as UTF-8")


def _blank_to_null(text: pa.ChunkedArray) -> pa.ChunkedArray:
    blank = pc.equal(pc.utf8_trim_whitespace(text), "")
    return pc.if_else(blank, pa.scalar(None, text.type), text)


def _number_text(values: pa.ChunkedArray, integer: bool) -> pa.ChunkedArray:
    """Text holding numbers, as a cast takes it: padding trimmed, a blank field a missing value. An integer is
    decimal digits after an optional minus: Arrow's cast would also read `0x10` as 16."""
    if integer and pc.all(pc.ascii_is_decimal(values)).as_py():  # the common case: bare digits, none empty
        return values
    text = pc.utf8_trim_whitespace(values)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
    if integer and pc.any(pc.invert(pc.ascii_is_decimal(pc.utf8_ltrim(text, "-")))).as_py():
        raise pa.ArrowInvalid("not decimal digits")
    return text


def _converted(values: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """`values` as `kind` when every value converts exactly; else ArrowInvalid (ArrowNotImplementedError)."""
    family = _family(values.type)
    if family == "text":
        values = _number_text(values, pa.types.is_integer(kind))
    converted = pc.cast(values, kind)  # a safe cast: it refuses to truncate, overflow or round an integer
    if family == "float" and pa.types.is_integer(kind):
        beyond = pc.or_(pc.greater(converted, EXACT_INTEGERS), pc.less(converted, -EXACT_INTEGERS))
        if pc.any(beyond).as_py():
            raise pa.ArrowInvalid("a float beyond 2**53")
    return converted


def _converts(values: pa.ChunkedArray, kind: pa.DataType) -> bool:
    try:
        _converted(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _accepted(values: pa.ChunkedArray, kind: str, col: str, name: str, first_row: int) -> pa.ChunkedArray:
    """The column, once its type is one a `kind` column takes and its text is UTF-8."""
    family = _family(values.type)
    if family != "null" and family not in ACCEPTS[kind]:
        row = pc.index(pc.is_valid(values), True).as_py()
        if row < 0:  # no value at all (or no rows: a schema read before the data), so nothing to change
            return pa.chunked_array([pa.nulls(len(values))], pa.null())
        raise _refuse(values, row, EXPECTED[kind], col, name, first_row, kind_too=True)
    return _valid_text(values, col, name, first_row) if family == "text" else values


def _in_range(values: pa.ChunkedArray, col: str, name: str, first_row: int) -> None:
    """Refuse a feature too large for training to standardise, naming the first row (NaN is left to process)."""
    if not pa.types.is_floating(values.type):
        return
    bounds = pc.min_max(values)  # NaN left out
    if (bounds["min"].as_py() or 0) < -FEATURE_LIMIT or (bounds["max"].as_py() or 0) > FEATURE_LIMIT:
        row = pc.index(pc.greater(pc.abs(values), FEATURE_LIMIT), True).as_py()
        raise StageError(f"{name}: column {col} must be a number within ±{FEATURE_LIMIT:g} in every row, found "
                         f"{values[row].as_py()!r} in row {first_row + row + 1}; training cannot scale a "
                         f"feature that large")


def _label_column(values: pa.ChunkedArray, name: str, label: str, first_row: int) -> pa.ChunkedArray:
    """Labels as LABEL_TYPE, whatever they arrived as: text, dictionary-encoded text, integers (a Parquet or
    JSON source) or booleans become text, so `1` from a CSV and `1` from Parquet are one label.

    A blank label (a CSV's empty field, what pandas writes for a missing value) is a missing label, as a JSON
    null or a Parquet null is: one meaning whatever the format, and process drops such rows and counts them."""
    values = _accepted(values, "label", label, name, first_row)
    kind = _value_type(values.type)
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = pc.cast(pc.cast(values, kind), pa.string())
    labels = pc.cast(values, LABEL_TYPE)
    # Checked on each chunk's dictionary (a handful of entries), so labels that are all present cost nothing.
    if any(chunk.dictionary.null_count or pc.any(pc.equal(pc.utf8_trim_whitespace(chunk.dictionary), "")).as_py()
           for chunk in labels.chunks):
        # a missing label must be a missing row, not a dictionary entry
        labels = pc.cast(_blank_to_null(pc.cast(labels, pa.string())), LABEL_TYPE)
    return labels


def column_names(table: pa.Table | pa.Schema, name: str) -> list[str]:
    """The column names, which must be UTF-8 like every text (a CSV header in Latin-1 is not): pyarrow decodes
    a name only when it is asked for it, so ask here, once, where the error can name the column."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    names = []
    for i in range(len(schema)):
        try:
            names.append(schema.field(i).name)
        except UnicodeDecodeError as err:
            raise StageError(f"{name}: the name of column {i + 1} ({err.object[:60]!r}) is not UTF-8 text; save "
                             f"the file as UTF-8") from None
    return names


def spelt(name: str) -> str:
    """A column's name as a message shows it: quoted when spaces around it or characters a terminal would act on
    make it look like another (` Id ` is not `Id`)."""
    return repr(name) if name != name.strip() or not name.isprintable() or not name else name


def listed(names: list[str], limit: int = 10) -> str:
    """Names for a message: all of a few, the first `limit` of many (a header can hold a million)."""
    shown = ", ".join(map(spelt, names[:limit]))
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def name_words(name: str) -> list[str]:
    """A column name as lower-case words, whatever its case, separators and units: `SepalLengthCm`,
    `sepal_length` and `sepal length (cm)` are all sepal, length (and cm)."""
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)]
    return words[:-1] if len(words) > 1 and words[-1] in UNITS else words


def did_you_mean(missing: list[str], present: list[str]) -> str:
    """`; did you mean id for Id, ...?` for each missing column that a present one matches apart from case,
    spaces, separators or units; empty when none does."""
    by_words: dict[tuple[str, ...], str] = {}
    for have in present:
        by_words.setdefault(tuple(name_words(have)), have)
    pairs = [f"{spelt(by_words[tuple(name_words(wanted))])} for {wanted}" for wanted in missing
             if tuple(name_words(wanted)) in by_words]
    return f"; did you mean {', '.join(pairs[:10])}?" if pairs else ""


def _column(values: pa.ChunkedArray, kind: str, col: str, name: str, first_row: int,
            feature: bool) -> pa.ChunkedArray:
    """A column as its schema type, each value exactly as the source has it (padding around numbers aside);
    else the first value that does not convert, with its row."""
    values = _accepted(values, kind, col, name, first_row)
    if pa.types.is_dictionary(values.type):  # (a pandas categorical in Parquet)
        values = pc.cast(values, values.type.value_type)
    target = ARROW_TYPES[kind]
    if kind == "text":  # a text key or dropped column: a blank value is a missing one
        return _blank_to_null(pc.cast(values, target))
    if values.type != target:
        try:
            values = _converted(values, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row = _first(values, lambda part: not _converts(part, target))
            bad = values[row].as_py()
            if not isinstance(bad, str):  # a number that the column's type cannot hold as it is
                hint = f" (not exactly {'a 64-bit integer' if kind == 'int' else 'a 64-bit float'})"
            else:
                hint = "; leave a missing value empty" if feature and bad.strip().lower() in MISSING_WORDS else ""
            raise _refuse(values, row, EXPECTED[kind], col, name, first_row, hint) from None
    if feature:
        _in_range(values, col, name, first_row)
    return values


def column_as(values: pa.ChunkedArray, kind: str, feature: bool = False) -> pa.ChunkedArray | None:
    """`values` as conform holds a column of schema type `kind` ("label" for the label column), or None where
    conform would refuse one of them: what draft-schema infers types from, so that a type it writes is one the
    load takes for every value."""
    try:
        if kind == "label":
            return _label_column(values, "", "", 0)
        return _column(values, kind, "", "", 0, feature)
    except StageError:
        return None


def conform(table: pa.Table, name: str, first_row: int = 0) -> pa.Table:
    """Check the table against the active schema and cast every column to its type, in schema order.

    Unknown columns are rejected rather than carried along: a misspelt feature column would otherwise
    be silently ignored while the real one is reported missing further down. `first_row` is where
    `table` starts in the whole source when it is one batch of a stream, so errors name the right row.
    """
    schema = schemas.active()
    types = arrow_types(schema)
    present = column_names(table, name)
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
            values = _label_column(values, name, col, first_row)
        else:
            values = _column(values, schema.types[col], col, name, first_row, col in schema.features)
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


def parquet_file(path: Path, name: str) -> pq.ParquetFile:
    """A Parquet file opened for reading. pyarrow decodes its column names as it opens it, so a name that is
    not UTF-8 fails here, before `column_names` could name its column."""
    try:
        return pq.ParquetFile(path)
    except UnicodeDecodeError as err:
        raise StageError(f"{name}: a column name ({err.object[:60]!r}) is not UTF-8 text; save the file as "
                         f"UTF-8") from None


class Snapshot:
    """A snapshot opened for reading: its metadata and size at once, its rows a row group at a time."""

    def __init__(self, path: Path, name: str):
        self.name = name  # the input it came in as, for error messages
        self.path = path
        try:
            self.file = parquet_file(path, f"input {name}")
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(name, err) from None
        try:
            self.meta = json.loads((self.file.metadata.metadata or {}).get(META_KEY, b"{}"))
        except ValueError:  # (not UTF-8, or not JSON)
            self.meta = None
        if not isinstance(self.meta, dict):
            raise StageError(f"input {name}: not a snapshot a stage wrote (its {META_KEY.decode()} metadata is "
                             f"not a JSON object)")
        self.num_rows = self.file.metadata.num_rows
        self.column_names = column_names(self.file.schema_arrow, f"input {name}")

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

    def row_group_rows(self) -> list[int]:
        return [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]

    def rows(self, group: int, start: int, count: int) -> pa.Table:
        """`count` rows of row group `group` from its row `start`, checked and cast (a cluster's partition)."""
        table = self._read(self.file.read_row_group, group).slice(start, count)
        return conform(table, f"input {self.name}")

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


def _first_seen(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """A dictionary column on the values its rows use, in the order they first appear: what a row group stores
    then depends on its rows alone, not on how they were batched (a slice keeps its batch's whole dictionary),
    so the same rows give the same bytes whichever path, or cluster, made them. It works on the codes only."""
    whole = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    used = pc.drop_null(pc.unique(whole.indices))
    if len(used) == len(whole.dictionary) and pc.all(pc.equal(used, pa.array(range(len(used)), used.type))).as_py():
        return whole  # already so (the usual case): nothing to do
    codes = pc.cast(pc.index_in(whole.indices, value_set=used), whole.type.index_type)
    return pa.DictionaryArray.from_arrays(codes, whole.dictionary.take(used))


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
        table = table.unify_dictionaries()
        for i, column in enumerate(table.columns):
            if pa.types.is_dictionary(column.type):
                table = table.set_column(i, table.field(i), _first_seen(column))
        self.writer.write_table(table, row_group_size=ROW_GROUP)

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
