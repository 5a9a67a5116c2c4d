"""Reading a data source (CSV, gzipped CSV, Parquet, JSON Lines) into a checked snapshot.

load_a and load_b do the same thing to different sources, so the whole stage body lives here once.

CSV and Parquet sources stream: batches are read, checked and written one at a time, so a load holds one
row group plus the Id column (8 bytes a row, for the uniqueness check) whatever the source's size.
JSON Lines sources are read whole (pyarrow's JSON reader infers types per block, which a stream cannot
reconcile); they are meant for small data.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from stageflow.runtime import dataset
from stageflow.runtime.contract import StageError, StageTree, not_a_regular_file, sha256_file

log = logging.getLogger("stageflow")

FORMATS = {".csv": "csv", ".csv.gz": "csv.gz", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}
CSV_BLOCK = 1 << 20  # bytes of CSV per batch: small blocks keep the reader streaming and its memory flat


class ConversionError(Exception):
    """The typed CSV read met a value that does not convert: re-read as text to trim it or name its row."""


def source_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise StageError(f"input data_path: {path} has an unsupported extension; expected one of {', '.join(FORMATS)}")


def _csv_batches(path: Path, typed: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    # Typed read first: it is the fast path. A value that does not convert (padding, a stray word) makes
    # us re-read everything as text so that `dataset.conform` can trim it or name the row that is wrong.
    types = dataset.TYPES if typed else {name: pa.string() for name in dataset.TYPES}
    try:
        # One thread: the streaming reader's threads cost more in hand-offs than they save (measured).
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK, use_threads=False),
                               convert_options=pcsv.ConvertOptions(column_types=types))
        yield from reader
    except pa.ArrowInvalid as err:
        if typed and "conversion error" in str(err):
            raise ConversionError() from None
        raise


def _parquet_batches(path: Path, typed: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=dataset.ROW_GROUP)


def _jsonl_batches(path: Path, typed: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow.json as pjson

    yield from pjson.read_json(path).to_batches()


READERS = {"csv": _csv_batches, "csv.gz": _csv_batches, "parquet": _parquet_batches, "jsonl": _jsonl_batches}


def check_source(path: Path) -> str:
    """The source's format, after turning every way a path can be unusable into one named error."""
    fmt = source_format(path)
    if not path.exists():
        raise StageError(f"input data_path: {path} does not exist")
    what = not_a_regular_file(path)
    if what:
        raise StageError(f"input data_path: {path} is {what}, not a regular file")
    if path.stat().st_size == 0:
        raise StageError(f"input data_path: {path} is empty")
    return fmt


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def _has_text(path: Path) -> bool:
    """Whether the first CSV block holds anything but blank lines (after decompression)."""
    with pa.input_stream(str(path), compression="detect") as stream:
        return bool(stream.read(CSV_BLOCK).strip())


def _unreadable(path: Path, fmt: str, err: Exception, rows: int) -> StageError:
    """The reader's error in the user's terms. pyarrow's words for a line longer than a CSV block advise a
    larger block size, which a user cannot set; a row (or header) that long means the file is not iris rows."""
    reason = " ".join(str(err).split())
    hint = "is this a CSV file with one row per line?"
    if "straddles two block boundaries" in reason:
        where = f"a line after row {rows}" if rows else "a line"
        return StageError(f"input data_path: {path}: {where} is longer than {_size(CSV_BLOCK)}, the most a row may "
                          f"take (an iris row takes about 40 bytes): {hint}")
    if "Empty CSV file or block" in reason:  # the file is not empty (checked), so no whole line in a block
        if not _has_text(path):
            return StageError(f"input data_path: {path} has only blank lines; expected a header row naming the "
                              f"columns, then data rows")
        return StageError(f"input data_path: {path}: its first line is longer than {_size(CSV_BLOCK)}, too long "
                          f"for a header naming the iris columns: {hint}")
    return StageError(f"input data_path: {path} is not a valid {fmt} file ({reason[:200]})")


def source_tables(path: Path, fmt: str, typed: bool = True) -> Iterator[pa.Table]:
    """The source as raw (unchecked) tables, batch by batch; any unreadable part is one named error."""
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_header(names: list[str], path: Path) -> None:
    """A CSV whose first line is data lends its values to the columns as names; say so, instead of
    reporting every iris column missing."""
    if any(name in dataset.TYPES for name in names) or not any(_is_number(name) for name in names):
        return
    optional = ", ".join(name for name in dataset.TYPES if name not in dataset.REQUIRED)
    raise StageError(f"input data_path: {path}: the header row is missing: the first row "
                     f"({dataset.listed(names)}) looks like data; the first line must name the columns "
                     f"{', '.join(dataset.REQUIRED)} (and optionally {optional}), in any order")


def _snapshot(path: Path, fmt: str, tmp: Path, typed: bool) -> dict:
    """Check and write the source batch by batch into `tmp`; return the lineage in its footer."""
    name = f"input data_path: {path}"
    with dataset.Writer(tmp) as writer:
        ids, first_row = [], 0
        for raw in source_tables(path, fmt, typed):
            if not first_row and fmt in ("csv", "csv.gz"):
                check_header(raw.column_names, path)
            table = dataset.conform(raw, name, first_row)
            first_row += table.num_rows
            writer.write(table)
            ids.extend(table.column(dataset.ID).chunks)
        if not writer.rows:
            raise StageError(f"input data_path: {path} has a header but no data rows")
        dataset.check_ids(pa.table({dataset.ID: pa.chunked_array(ids, type=dataset.TYPES[dataset.ID])}), name)
        writer.meta = {"source": {"path": str(path), "format": fmt, "sha256": sha256_file(path), "rows": writer.rows,
                                  "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    return writer.meta["source"]


def load(tree: StageTree, output: str) -> None:
    """Snapshot the source named by input `data_path` as output `output`, with its hash and row count."""
    started = time.perf_counter()
    path = Path(tree.read("data_path", str))
    fmt = check_source(path)
    with tree.output_file(output) as tmp:
        try:
            source = _snapshot(path, fmt, tmp, typed=True)
        except ConversionError:  # the typed writer has released tmp: the text read starts it afresh
            source = _snapshot(path, fmt, tmp, typed=False)
    log.info("loaded %d rows from %s (%s, sha256 %s) in %.2f s", source["rows"], path, fmt,
             source["sha256"][:12], time.perf_counter() - started)
