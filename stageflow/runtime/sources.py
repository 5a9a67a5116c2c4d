"""Reading a data source (CSV, gzipped CSV, Parquet, JSON Lines) into a checked snapshot.

load_a and load_b do the same thing to different sources, so the whole stage body lives here once.

CSV and Parquet sources stream: batches are read, checked and written one at a time, so a load holds one
row group plus the key column (8 bytes a row when it is an integer, for the uniqueness check) whatever the
source's size.
JSON Lines sources are read whole (pyarrow's JSON reader infers types per block, which a stream cannot
reconcile); they are meant for small data.

Every batch of every format then goes through `dataset.conform`, the one place that decides what a value
may be (docs/failures.md, "Values"). What is here is what only a reader can know: where a CSV's quote runs
past its line, and which line of a JSON Lines file the parser stumbled on.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime as dt
import gzip
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stageflow.runtime import cluster, dataset, inputs, schema as schemas
from stageflow.runtime.contract import StageError, StageTree, sha256_file
from stageflow.runtime.inputs import source_format

log = logging.getLogger("stageflow")

CSV_BLOCK = 1 << 20  # bytes of CSV per batch: small blocks keep the reader streaming and its memory flat


class ConversionError(Exception):
    """The typed CSV read met a value that does not convert: re-read as text to trim it or name its row."""


def _csv_batches(path: Path, typed: bool | None, source=None) -> Iterator[pa.RecordBatch]:
    """The CSV at `path` (or `source`, a stream of part of it) a batch at a time."""
    import pyarrow.csv as pcsv

    # Typed read first: it is the fast path. A value that does not convert (padding, a stray word) makes
    # us re-read everything as text so that `dataset.conform` can trim it or name the row that is wrong.
    # Integers are read as text even then, for conform to convert: Arrow's integer parser takes `0x10` for 16.
    # Conform's check that they are decimal digits, and its cast, cost a few percent of a load (measured).
    # `typed` None: no schema at all (draft-schema), every column as its text.
    # One thread: the streaming reader's threads cost more in hand-offs than they save (measured).
    # Only an empty field is missing (not NA, NULL, N/A...: pyarrow's default list), and text is checked
    # for UTF-8 by `dataset.conform`, which names the row, rather than by the reader, which does not.
    def reader(types: dict[str, pa.DataType]):
        return pcsv.open_csv(path if source is None else source, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK, use_threads=False),
                             convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""],
                                                                 check_utf8=False))
    try:
        if typed is None:
            with reader({}) as first:  # the header: a block read, its types guessed and left unused
                types = dict.fromkeys(dataset.column_names(first.schema, f"input data_path: {path}"), pa.string())
        else:
            types = {name: kind if typed and kind != pa.int64() else pa.string()
                     for name, kind in dataset.arrow_types(schemas.active()).items()}
        yield from reader(types)
    except pa.ArrowInvalid as err:
        if typed and "conversion error" in str(err):
            raise ConversionError() from None
        raise


def _parquet_batches(path: Path, typed: bool) -> Iterator[pa.RecordBatch]:
    yield from dataset.parquet_file(path, f"input data_path: {path}").iter_batches(batch_size=dataset.ROW_GROUP)


def _jsonl_batches(path: Path, typed: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow.json as pjson

    table = pjson.read_json(path)
    # JSON has no timestamps, but pyarrow reads a string that looks like one as one ("2024-01-01" would
    # reach a text key as "2024-01-01 00:00:00"): read those columns again as the strings they are.
    names = dataset.column_names(table, f"input data_path: {path}")
    stamped = [name for name, kind in zip(names, table.schema.types) if pa.types.is_timestamp(kind)]
    if stamped:
        strings = pa.schema([(name, pa.string()) for name in stamped])
        table = pjson.read_json(path, parse_options=pjson.ParseOptions(explicit_schema=strings,
                                                                       unexpected_field_behavior="infer"))
    yield from table.to_batches()


READERS = {"csv": _csv_batches, "csv.gz": _csv_batches, "parquet": _parquet_batches, "jsonl": _jsonl_batches}


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def _has_text(path: Path) -> bool:
    """Whether the first CSV block holds anything but blank lines (after decompression)."""
    with pa.input_stream(str(path), compression="detect") as stream:
        return bool(stream.read(CSV_BLOCK).strip())


def _open_quote(line: str) -> tuple[int, int] | None:
    """Where one CSV line leaves a quote open at its end, reading it as pyarrow's parser does (a quote opens a
    value only at the value's start; a doubled quote inside it is a quote): that value's field index and its
    first character; None when every quote closes."""
    field, opened, start, i = 0, None, True, 0
    while i < len(line):
        ch = line[i]
        if opened is not None:
            if ch == '"':
                if line[i + 1:i + 2] == '"':
                    i += 1
                else:
                    opened = None
        elif ch == ",":
            field, start, i = field + 1, True, i + 1
            continue
        elif ch == '"' and start:
            opened = i
        start = False
        i += 1
    return None if opened is None else (field, opened)


def csv_problem(path: Path) -> str | None:
    """The first quote that a CSV leaves open at the end of its line, as `row R (line L), column C: ...`;
    None when every quote closes on its line.

    The reader is told that values never span lines, which keeps it streaming. A quote left open then
    swallows the lines after it into one value (1,000 rows read as 11) or, past a block, puts the parser
    "out of sync with the chunker". Neither says where, so on either sign this reads the text again, a line
    at a time, to point at it (only on the way to an error: Python looks at each character of a line that
    holds a quote)."""
    opener = gzip.open if source_format(path) == "csv.gz" else open
    header: list[str] | None = None
    row = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline=None) as lines:
            for number, line in enumerate(lines, 1):
                line = line.rstrip("\n")
                if not line:  # pyarrow skips empty lines: they are not rows
                    continue
                found = _open_quote(line) if '"' in line else None
                if header is None:
                    header, where = next(csv.reader([line])), f"the header (line {number})"
                else:
                    row += 1
                    where = f"row {row} (line {number})"
                if found:
                    field, start = found
                    column = header[field] if row and field < len(header) else str(field + 1)
                    return (f"{where}, column {column}: the quote that opens {line[start:start + 40]!r} is not "
                            f"closed on its line; a value may not span lines, so the rows after it would be read "
                            f"into it. Close the quote (a quote inside a quoted value is written \"\")")
    except (OSError, EOFError):  # a truncated gzip, say: the reader's own words are all there is
        return None
    return None


class _Repeated(ValueError):
    """A JSON object that names a key twice (Python's json keeps the last without a word)."""


def _once(pairs: list[tuple[str, object]]) -> dict:
    record: dict = {}
    for key, value in pairs:
        if key in record:
            raise _Repeated(key)
        record[key] = value
    return record


class _TooLarge(ValueError):
    """A JSON number beyond a float's range (Python's json would take it as infinity; pyarrow refuses it)."""


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _TooLarge(text)
    return value


def _json_kind(value: object) -> str | None:
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "text"), (list, "a list"), (dict, "an object"))
    return next((word for types, word in kinds if isinstance(value, types)), None)  # None: null, any column


def json_problem(path: Path) -> str | None:
    """The first line of a JSON Lines file that pyarrow's reader cannot take, as `row R (line L): ...`; None
    when there is none to find. pyarrow says `in row N` counting from the start of its block of the file,
    not of the file, so on its error this reads the file again, a line at a time (the error path only)."""
    first: dict[str, tuple[str, int]] = {}  # column -> the kind of its first value, and that row
    row = 0
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():  # pyarrow skips blank lines: they are not rows
                continue
            row += 1
            where = f"row {row} (line {number})"
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM, which pyarrow's reader skips
            try:
                record = json.loads(line.decode("utf-8"), object_pairs_hook=_once, parse_float=_finite)
            except UnicodeDecodeError:
                return f"{where} is not UTF-8 text ({line[:60].decode('utf-8', 'backslashreplace')!r})"
            except _Repeated as err:
                return f"{where} names column {err} twice"
            except _TooLarge as err:
                return f"{where}: {str(err)[:40]} is too large for a float"
            except ValueError as err:
                return f"{where} is not valid JSON ({err})"
            if not isinstance(record, dict):
                return f"{where} is not a JSON object ({_json_kind(record) or 'null'}); each line must be one"
            for key, value in record.items():
                kind = _json_kind(value)
                if kind:
                    had, since = first.setdefault(key, (kind, row))
                    if had != kind:
                        return (f"{where}: column {key} holds {kind} ({json.dumps(value)[:40]}) where row {since} "
                                f"holds {had}")
    return None


def _unreadable(path: Path, fmt: str, err: Exception, rows: int) -> StageError:
    """The reader's error in the user's terms, naming the row where a look at the text can find it (a quote
    left open sends pyarrow's CSV reader wrong in several ways). pyarrow's words for a line longer than a CSV
    block advise a larger block size, which a user cannot set; a row (or header) that long means the file is
    not a table."""
    reason = " ".join(str(err).split())
    locate = {"csv": csv_problem, "csv.gz": csv_problem, "jsonl": json_problem}.get(fmt)
    problem = locate(path) if locate else None
    if problem:
        return StageError(f"input data_path: {path}: {problem}")
    hint = "is this a CSV file with one row per line?"
    if "straddles two block boundaries" in reason:
        where = f"a line after row {rows}" if rows else "a line"
        return StageError(f"input data_path: {path}: {where} is longer than {_size(CSV_BLOCK)}, the most a row may "
                          f"take: {hint}")
    if "Empty CSV file or block" in reason:  # the file is not empty (checked), so no whole line in a block
        if not _has_text(path):
            return StageError(f"input data_path: {path} has only blank lines; expected a header row naming the "
                              f"columns, then data rows")
        return StageError(f"input data_path: {path}: its first line is longer than {_size(CSV_BLOCK)}, too long "
                          f"for a header naming the schema's columns: {hint}")
    return StageError(f"input data_path: {path} is not a valid {fmt} file ({reason[:200]})")


def source_tables(path: Path, fmt: str, typed: bool | None = True) -> Iterator[pa.Table]:
    """The source as raw (unchecked) tables, batch by batch; any unreadable part is one named error. A CSV's
    columns come as the schema's types (`typed`), as text where the schema names them (False), or all as text
    without a schema (None)."""
    batches = READERS[fmt](path, typed)
    rows = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError, EOFError) as err:
            raise _unreadable(path, fmt, err, rows) from None
        if batch.num_rows:
            rows += batch.num_rows
            yield pa.Table.from_batches([batch])


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_header(names: list[str], path: Path) -> None:
    """A CSV whose first line is data lends its values to the columns as names; say so, instead of
    reporting every column of the schema missing."""
    schema = schemas.active()
    if any(name in schema.types for name in names) or not any(is_number(name) for name in names):
        return
    optional = f" (and optionally {', '.join(schema.dropped)})" if schema.dropped else ""
    raise StageError(f"input data_path: {path}: the header row is missing: the first row "
                     f"({dataset.listed(names)}) looks like data; the first line must name the columns "
                     f"{dataset.listed(list(schema.required), 30)}{optional}, in any order")


def check_lines(raw: pa.Table, path: Path, first_row: int, columns: list[str]) -> None:
    """Refuse a CSV batch with a line break inside a value of `columns`: the reader reads values on one line
    only, so a value holding one is a quote left open, which has swallowed the lines after it."""
    for col in columns:
        values = raw.column(col)
        if pa.types.is_dictionary(values.type):  # a typed read's labels: a handful of entries to look at
            values = pa.chunked_array([chunk.dictionary for chunk in values.chunks], values.type.value_type)
        if not pa.types.is_string(values.type):
            continue
        broken = pc.or_(pc.match_substring(values, "\n"), pc.match_substring(values, "\r"))
        if pc.any(broken).as_py():
            problem = csv_problem(path)
            if not problem:  # (not seen: a value that holds a line break had an open quote before it)
                row = pc.index(broken, True).as_py()
                problem = f"row {first_row + row + 1}, column {col}: a value holds a line break"
            raise StageError(f"input data_path: {path}: {problem}")


def _conformed(raw: pa.Table, path: Path, fmt: str, first_row: int) -> pa.Table:
    """`dataset.conform` on one batch; for a CSV, first the check that no quote was left open. It looks at the
    text columns (a label, a text key) only, unless conform refuses the batch: a value that swallowed lines
    fails as a number too, and then the open quote is what to report."""
    name = f"input data_path: {path}"
    if fmt not in ("csv", "csv.gz"):
        return dataset.conform(raw, name, first_row)
    names = dataset.column_names(raw, name)
    if not first_row:
        check_header(names, path)
    types = schemas.active().types
    check_lines(raw, path, first_row, [col for col in names if types.get(col) in ("text", "label")])
    try:
        return dataset.conform(raw, name, first_row)
    except StageError:
        check_lines(raw, path, first_row, names)
        raise


def _snapshot(path: Path, fmt: str, tmp: Path, typed: bool) -> dict:
    """Check and write the source batch by batch into `tmp`; return the lineage in its footer."""
    name = f"input data_path: {path}"
    schema = schemas.active()
    key = schema.key
    with dataset.Writer(tmp) as writer:
        ids, first_row = [], 0
        for raw in source_tables(path, fmt, typed):
            table = _conformed(raw, path, fmt, first_row)
            first_row += table.num_rows
            writer.write(table)
            ids.extend(table.column(key).chunks)
        if not writer.rows:
            raise StageError(f"input data_path: {path} has a header but no data rows")
        dataset.check_ids(pa.table({key: pa.chunked_array(ids, type=dataset.ARROW_TYPES[schema.key_type])}), name)
        writer.meta = {"source": {"path": str(path), "format": fmt, "sha256": sha256_file(path), "rows": writer.rows,
                                  "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    return writer.meta["source"]


# ------------------------------------------------------------------ on a cluster

SPLITTABLE = ("csv", "parquet")  # formats a cluster reads in parts; a gzip stream or JSON read whole is one
CSV_PART_MIN = 16 << 10  # bytes: the smallest CSV part (small sources are still cut, for every worker to have one)
CSV_PART_MAX = 64 << 20  # bytes: the largest (a worker holds one part's rows at a time)


def csv_parts(size: int, workers: int) -> list[tuple[int, int]]:
    """Byte ranges of a CSV, a part each; a part begins at the first line that starts in its range."""
    step = max(CSV_PART_MIN, min(CSV_PART_MAX, -(-size // (cluster.PARTS_PER_WORKER * workers))))
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def csv_block(path: Path, start: int, end: int) -> bytes:
    """The lines that start in [start, end), after the header line (which every part is given)."""
    with open(path, "rb") as handle:
        header = handle.readline()
        if start == 0:
            handle.seek(0)
        else:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":
                handle.readline()  # the rest of a line that began in the part before
            if handle.tell() < len(header):
                handle.seek(len(header))
        begin = handle.tell()
        data = handle.read(max(0, end - begin))
        if data and not data.endswith(b"\n"):
            data += handle.readline()  # the line that begins here ends in the next part
    return data if start == 0 else header + data


def load_part(item: tuple[tuple, str], path: str, fmt: str) -> dict:
    """On a worker: one part of a source, checked by the schema as a load checks it, into its part file."""
    unit, part = item
    source = Path(path)
    if fmt == "parquet":
        group, start, rows = unit
        raw = dataset.parquet_file(source, f"input data_path: {source}").read_row_group(group).slice(start, rows)
        tables = [_conformed(raw, source, fmt, first_row=start + group)]  # (not the first: no header to check)
    else:
        block = csv_block(source, *unit)
        try:
            batches = list(_csv_batches(source, True, pa.BufferReader(block)))
        except ConversionError:
            batches = list(_csv_batches(source, False, pa.BufferReader(block)))
        except (pa.ArrowInvalid, OSError, EOFError) as err:
            raise StageError(f"input data_path: {source}: {err}") from None
        tables, first_row = [], 0 if unit[0] == 0 else 1  # only the first part holds the header row to check
        for batch in batches:
            if batch.num_rows:
                tables.append(_conformed(pa.Table.from_batches([batch]), source, fmt, first_row))
                first_row += batch.num_rows
    if not tables:
        return {"rows": 0}
    table = pa.concat_tables(tables)
    cluster.write_part(table, Path(part))
    ids = table.column(schemas.active().key)
    rising = ids.null_count == 0 and dataset.strictly_increasing(ids)
    return {"rows": table.num_rows, "rising": rising, "first": ids[0].as_py(), "last": ids[-1].as_py()}


def ids_rise(reports: list[dict]) -> bool:
    """Whether the parts' Ids rise strictly from the first part to the last (a source sorted by its key, as
    extracts usually are): then none is missing or repeated, and the job need not gather them."""
    rising = [r for r in reports if r["rows"]]
    return all(r["rising"] for r in rising) and all(a["last"] < b["first"] for a, b in zip(rising, rising[1:]))


def _snapshot_on(dask: cluster.Cluster, path: Path, fmt: str, tmp: Path) -> dict | None:
    """The snapshot made on the cluster: the workers check the source's parts (they read the source where it
    lies: a dataset, which Domino mounts on them too), the job checks the keys and writes the parts in order.
    None when a part is refused: the one-machine path then names the problem in its own words."""
    if fmt == "parquet":
        groups = dataset.parquet_file(path, f"input data_path: {path}").metadata
        units = cluster.slices([groups.row_group(i).num_rows for i in range(groups.num_row_groups)], dask.workers)
    else:
        units = csv_parts(path.stat().st_size, dask.workers)
    parts = [dask.part(f"load-{n}") for n in range(len(units))]
    with concurrent.futures.ThreadPoolExecutor(1) as hasher:
        digest = hasher.submit(sha256_file, path)
        reports = dask.run(load_part, [(unit, str(part)) for unit, part in zip(units, parts)], str(path), fmt)
        written = [part for part, report in zip(parts, reports) if report.get("rows")]
        if any(report.get("refused") for report in reports) or not written:
            log.info("a part of the source was refused: naming the problem on one machine")
            return None
        if not ids_rise(reports):  # the Ids of every part, checked as one machine checks them
            key, name = schemas.active().key, f"input data_path: {path}"
            keys = pa.chunked_array([chunk for part in written for chunk in pq.read_table(part, columns=[key])
                                     .column(key).chunks], type=dataset.ARROW_TYPES[schemas.active().key_type])
            dataset.check_ids(pa.table({key: keys}), name)
            del keys
        with dataset.Writer(tmp) as writer:
            for table in cluster.read_parts(written):
                writer.write(table)
            writer.meta = {"source": {"path": str(path), "format": fmt, "sha256": digest.result(), "rows": writer.rows,
                                      "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    return writer.meta["source"]


def load(tree: StageTree, output: str) -> None:
    """Snapshot the source named by input `data_path` as output `output`, with its hash and row count."""
    started = time.perf_counter()
    inputs.use_schema(tree)
    path = inputs.read(tree, "data_path")
    fmt = source_format(path)
    if fmt not in SPLITTABLE and cluster.scheduler_address():
        log.info("a %s source is read whole: it is loaded on one machine, not on the cluster", fmt)
    with tree.output_file(output) as tmp:
        source = None
        if fmt in SPLITTABLE:
            with cluster.attached() as dask:
                source = _snapshot_on(dask, path, fmt, tmp) if dask else None
        if source is None:
            try:
                source = _snapshot(path, fmt, tmp, typed=True)
            except ConversionError:  # the typed writer has released tmp: the text read starts it afresh
                source = _snapshot(path, fmt, tmp, typed=False)
    log.info("loaded %d rows from %s (%s, sha256 %s) in %.2f s", source["rows"], path, fmt,
             source["sha256"][:12], time.perf_counter() - started)
