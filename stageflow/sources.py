"""Reading a data source (CSV, gzipped CSV, Parquet, JSON Lines) into a checked snapshot.

load_a and load_b do the same thing to different sources, so the whole stage body lives here once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from stageflow import dataset
from stageflow.contract import StageError, Workflow, sha256_file

log = logging.getLogger("stageflow")

FORMATS = {".csv": "csv", ".csv.gz": "csv.gz", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}


def source_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise StageError(f"input data_path: {path} has an unsupported extension; expected one of {', '.join(FORMATS)}")


def _read_csv(path: Path) -> pa.Table:
    # Typed read first: it is the fast path. A value that does not convert (padding, a stray word) makes
    # us re-read everything as text so that `dataset.conform` can trim it or name the row that is wrong.
    try:
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=dataset.TYPES))
    except pa.ArrowInvalid as err:
        if "conversion error" not in str(err):
            raise
    return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={name: pa.string() for name in dataset.TYPES}))


READERS = {"csv": _read_csv, "csv.gz": _read_csv, "parquet": pq.read_table, "jsonl": pjson.read_json}


def read_source(path: Path) -> tuple[pa.Table, str]:
    """Read a source file, turning every way a file can be unreadable into one named error."""
    fmt = source_format(path)
    if not path.exists():
        raise StageError(f"input data_path: {path} does not exist")
    if not path.is_file():
        raise StageError(f"input data_path: {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise StageError(f"input data_path: {path} is empty")
    try:
        table = READERS[fmt](path)
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        reason = " ".join(str(err).split())[:200]
        raise StageError(f"input data_path: {path} is not a valid {fmt} file ({reason})") from None
    if table.num_rows == 0:
        raise StageError(f"input data_path: {path} has a header but no data rows")
    return table, fmt


def load(wf: Workflow, output: str) -> None:
    """Snapshot the source named by input `data_path` as output `output`, with its hash and row count."""
    started = time.perf_counter()
    path = Path(wf.read("data_path", str))
    table, fmt = read_source(path)
    table = dataset.conform(table, f"input data_path: {path}")
    dataset.check_ids(table, f"input data_path: {path}")
    meta = {"source": {"path": str(path), "format": fmt, "sha256": sha256_file(path), "rows": table.num_rows,
                       "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    with wf.output_file(output) as tmp:
        dataset.write(table, tmp, meta)
    log.info("loaded %d rows from %s (%s, sha256 %s) in %.2f s", table.num_rows, path, fmt,
             meta["source"]["sha256"][:12], time.perf_counter() - started)
