"""Stage merge: the union of snapshots A and B keyed on Id (merged_data). "Id" here is the schema's key column.

The seed concatenated A with itself; here both sources count. A row that both sources hold with the
same values is kept once; the same Id with different values is a conflict no merge rule can settle
silently, so it stops the flow and names the Ids, the columns that differ and both values. Labels compare
as the schema compares them (under iris's rules `Iris-setosa` and `setosa` are one label), so only a real
difference is a conflict; the row kept is A's, and process spells its label. An optional column
(RandomColumn) that only one source has is left out of the merged data, with a warning: filled with nulls
for the other source's rows it would carry no information for them, and an Id in both sources would compare
a value against a null.

When both snapshots are sorted by Id (as extracts usually are, interleaved or not), the stage streams them:
a row group of each at a time, cut where both have arrived. Otherwise DuckDB joins and sorts them, with a
memory limit and a spill directory beside the output. Either way memory stays bounded whatever the size,
and the Ids that both sources hold are compared by the same query. (DuckDB was measured against the
external sort this stage had and against Dask's shuffle on one machine, and on sorted sources against the
streaming: docs/performance.md, "Merge whatever the Id order".)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stageflow.runtime import cluster, contract, dataset, inputs, schema as schemas
from stageflow.runtime.contract import StageError, StageTree

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger("stageflow")

# DuckDB's own memory; the stage's peak is about 0.45 GiB more (Python, the libraries, the row groups being
# read and written). Merge runs on the Medium tier (4 GiB, stageflow/registry.py); tests/test_stages.py
# checks that this fits it with room to spare. At 2 x 10M rows 1 GiB was barely faster, 256 MiB a quarter
# slower (docs/performance.md).
MEMORY_LIMIT = "512MiB"
SPILL_ROW_GROUP = 122_880  # rows per row group of the copies the engine reads: DuckDB's own row group size
SHOWN_CONFLICTS = 10  # Ids a conflict error names
DETAILED_CONFLICTS = 3  # of those, Ids whose differing values it shows
DETAILED_COLUMNS = 3  # columns shown per Id
VALUE_CHARS = 40  # a value shown is cut past this many characters


def shared_columns(a: dataset.Snapshot, b: dataset.Snapshot) -> list[str]:
    """The columns both snapshots have, in canonical order. Both hold every required column (checked when
    read), so the others differ only in optional columns: those are left out, and the log says so."""
    names_a, names_b = a.empty().column_names, b.empty().column_names
    for name in sorted(set(names_a) ^ set(names_b)):
        has, lacks = ("datasetA", "datasetB") if name in names_a else ("datasetB", "datasetA")
        log.warning("merge: %s is in %s but not in %s; merged_data leaves it out (an optional column is kept "
                    "only when both sources have it)", name, has, lacks)
    return [name for name in names_a if name in names_b]


def sorted_by_key(snapshot: dataset.Snapshot) -> bool:
    """Whether the snapshot's keys are present, stored as the schema's type and strictly increasing: then it
    can be streamed (and holds no key twice)."""
    ids = snapshot.column(dataset.key())
    return (ids.null_count == 0 and ids.type == dataset.arrow_types(schemas.active())[dataset.key()]
            and dataset.strictly_increasing(ids))


# ------------------------------------------------------------------ the rows as the engine sees them

class Labels:
    """Every label spelling the sources use, coded in order of first appearance (A's row groups, then B's):
    the dictionary a sort in memory of A then B writes. Each spelling also has `same`, the code of the first
    spelling the schema treats as the same label: what a conflict is judged on."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.same: list[int] = []
        self._first: dict[str, int] = {}  # a label as the schema spells it -> the code it was first seen with
        self._dictionary: pa.Array | None = None

    def encode(self, labels: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        """A label column as its codes, and as the codes of the labels the schema treats as the same."""
        schema = schemas.active()
        codes, same = [], []
        for chunk in labels.chunks:  # each chunk codes its labels on a dictionary of its own
            mapping = []
            for value in chunk.dictionary.to_pylist():
                if value not in self.codes:
                    self.codes[value] = len(self.codes)
                    self.same.append(self._first.setdefault(schema.canonical(value), self.codes[value]))
                mapping.append(self.codes[value])
            codes.append(pc.take(pa.array(mapping, pa.int32()), chunk.indices))
            same.append(pc.take(pa.array([self.same[c] for c in mapping], pa.int32()), chunk.indices))
        return pa.chunked_array(codes, pa.int32()), pa.chunked_array(same, pa.int32())

    @property
    def dictionary(self) -> pa.Array:
        """Every spelling, by code (one array while no new one comes: each batch decoded shares it)."""
        if self._dictionary is None or len(self._dictionary) != len(self.codes):
            self._dictionary = pa.array(list(self.codes), pa.string())
        return self._dictionary

    def decode(self, codes: pa.Array) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(codes, self.dictionary)


def engine_names(names: list[str]) -> list[str]:
    """The columns as the engine holds them: c0, c1, ... (DuckDB's names ignore case; ours do not), and s,
    the label's `same` code."""
    return [f"c{i}" for i in range(len(names))] + ["s"]


def coded(table: pa.Table, names: list[str], labels: Labels) -> pa.Table:
    """Checked rows as the engine holds them: the shared columns, renamed, labels as codes."""
    codes, same = labels.encode(table.column(dataset.label()))
    label = names.index(dataset.label())
    table = table.select(names).set_column(label, dataset.label(), codes).append_column("s", same)
    return table.rename_columns(engine_names(names))


def decoded(batch: pa.RecordBatch, names: list[str], labels: Labels, schema: pa.Schema) -> pa.Table:
    """The engine's rows back as snapshot rows, labels on the dictionary of every label seen."""
    table = pa.Table.from_batches([batch]).rename_columns(names)
    label = names.index(dataset.label())
    codes = table.column(label).combine_chunks()
    return table.set_column(label, dataset.label(), labels.decode(codes)).cast(schema)


def spill_copy(snapshot: dataset.Snapshot, names: list[str], labels: Labels, path: Path) -> None:
    """`snapshot` as checked by the schema, into a Parquet file the engine reads (it can read a file twice,
    a stream only once). Plain, neither compressed nor dictionary-encoded: 5x faster to write than zstd, for
    about 53 bytes a row of disk while the stage runs."""
    types = snapshot.empty().schema
    schema = pa.schema([pa.field(col, pa.int32() if name == dataset.label() else types.field(name).type)
                        for col, name in zip(engine_names(names), names)] + [pa.field("s", pa.int32())])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as out:
        for table in snapshot.tables():
            if table.column(dataset.key()).null_count:
                refuse_keys(snapshot)
            out.write_table(coded(table, names, labels), row_group_size=SPILL_ROW_GROUP)


def refuse_keys(*snapshots: dataset.Snapshot) -> None:
    """Refuse the first snapshot whose key is missing in a row or held twice, in the words load refuses such
    a source with (a snapshot may come from elsewhere than load). Called once a problem is seen, as it reads
    every row group again and sorts the keys."""
    key = dataset.key()
    for snapshot in snapshots:
        keys = pa.chunked_array([chunk for table in snapshot.tables() for chunk in table.column(key).chunks],
                                snapshot.empty().schema.field(key).type)
        dataset.check_ids(pa.table({key: keys}), f"input {snapshot.name}")
    raise AssertionError("refuse_keys: no snapshot has a missing or repeated key")


class Ascending:
    """Whether the keys of a stream of sorted tables rise strictly, across the tables too: in the sorted
    union a key that A holds twice, or B twice and A not, shows up as two equal neighbours, for nothing
    more than a compare (one that both hold pairs twice in the engine's comparison)."""

    def __init__(self) -> None:
        self.last = None

    def check(self, table: pa.Table) -> bool:
        keys = table.column(dataset.key())
        rising = dataset.strictly_increasing(keys) and (self.last is None or keys[0].as_py() > self.last)
        self.last = keys[-1].as_py()
        return rising


# ------------------------------------------------------------------ the engine

def connect(spill: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `spill` (beside the output: a container's /tmp may be a small
    tmpfs) rather than grow past MEMORY_LIMIT, and that loads no extension (a job may have no network). DuckDB is
    imported here, when first needed: a streamed merge whose sources share no Id never needs it (0.1 s, 48 MiB)."""
    import duckdb

    return duckdb.connect(config={
        "memory_limit": MEMORY_LIMIT, "temp_directory": str(spill), "preserve_insertion_order": False,
        "autoinstall_known_extensions": False, "autoload_known_extensions": False})


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """DuckDB's failures in the stage's words. Its spill files filling their disk (which DuckDB reports as
    memory it could not offload past `max_temp_directory_size`, by default the disk's free space) is the
    OSError that the output's handler names; memory running out otherwise names the limit."""
    try:
        yield
    except Exception as err:
        duckdb = sys.modules.get("duckdb")  # (imported only if the engine ran: else none of its errors can come)
        if duckdb is None or not isinstance(err, duckdb.OutOfMemoryException):
            raise
        if "max_temp_directory_size" in str(err):
            raise OSError(errno.ENOSPC, str(err)) from None
        raise StageError(f"merge: DuckDB needed more than its memory limit ({MEMORY_LIMIT}, MEMORY_LIMIT in "
                         f"stages/merge/main.py) ({str(err).splitlines()[0]})") from None


@dataclass
class Found:
    """Ids both sources hold and those whose values differ, counted across rounds, with the first
    SHOWN_CONFLICTS of the latter (their values in A and in B) for the error."""
    overlap: int = 0
    conflicts: int = 0
    first: list[pa.Table] = field(default_factory=list)


class Engine:
    """The merge's queries, on whatever the relations a (rows of A) and b (rows of B) hold: the spilled
    copies of both snapshots, or the rows of one streamed round whose Ids both hold. Connected on first use."""

    def __init__(self, connection: Callable[[], duckdb.DuckDBPyConnection], names: list[str]):
        self.connection, self.names, self._con = connection, names, None
        cols = engine_names(names)
        self.key, label = cols[names.index(dataset.key())], cols[names.index(dataset.label())]
        # Per column: does B's value differ from A's? Two missing values are equal, and so are two NaNs (in
        # DuckDB NaN equals NaN); labels compare by their `same` code, as the schema compares them.
        self.differs = {name: f"a.{'s' if col == label else col} IS DISTINCT FROM b.{'s' if col == label else col}"
                        for name, col in zip(names, cols) if col != self.key}
        self.any_differs = " OR ".join(self.differs.values()) or "false"

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        # (not functools.cached_property: its lock could not travel to a cluster's workers with merge_range)
        if self._con is None:
            self._con = self.connection()
        return self._con

    def compare(self, found: Found) -> bool:
        """Count the Ids a and b both hold and those that differ; keep the first that differ. False when an
        Id pairs more than once: a source holds it twice."""
        pairs, both, differ = self.con.sql(f"SELECT count(*), count(DISTINCT {self.key}), count(*) FILTER "
                                           f"(WHERE {self.any_differs}) FROM a JOIN b USING ({self.key})").fetchall()[0]
        found.overlap += both
        found.conflicts += differ
        kept = sum(t.num_rows for t in found.first)
        if differ and kept < SHOWN_CONFLICTS:
            found.first.append(self.conflicts(SHOWN_CONFLICTS - kept))
        return pairs == both

    def conflicts(self, limit: int) -> pa.Table:
        """The first `limit` Ids that differ: A's and B's value of each column, and whether they differ."""
        cols = [f"{self.key} AS k"] + [f"a.c{self.names.index(n)} AS a{i}, b.c{self.names.index(n)} AS b{i}, "
                                       f"{test} AS d{i}" for i, (n, test) in enumerate(self.differs.items())]
        return self.con.sql(f"SELECT {', '.join(cols)} FROM a JOIN b USING ({self.key}) WHERE {self.any_differs} "
                            f"ORDER BY {self.key} LIMIT {int(limit)}").to_arrow_table()

    def union(self) -> pa.RecordBatchReader:
        """A's rows and those of B whose Id A lacks, sorted by Id (without s: only comparisons need it)."""
        cols = ", ".join(engine_names(self.names)[:-1])
        return self.con.sql(f"SELECT {cols} FROM a UNION ALL SELECT {cols} FROM b ANTI JOIN a USING ({self.key}) "
                            f"ORDER BY {self.key}").to_arrow_reader(dataset.ROW_GROUP)


def shown(value, quote: bool = True) -> str:
    """A value for a message, cut past VALUE_CHARS: text quoted (not a key: messages name keys bare), a
    missing value as `missing`."""
    if value is None:
        return "missing"
    text = repr(value) if quote and isinstance(value, str) else str(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + "…"


def refuse(found: Found, engine: Engine, labels: Labels) -> None:
    """Stop on conflicts, in one line: the first Ids that differ and how many do, then for the first few
    the columns that differ with A's value and B's (each cut short: the line stays short whatever the data)."""
    if not found.conflicts:
        return
    first = pa.concat_tables(found.first)
    names = list(engine.differs)
    details = []
    for row in first.slice(0, DETAILED_CONFLICTS).to_pylist():
        differing = [i for i in range(len(names)) if row[f"d{i}"]]
        values = []
        for i in differing[:DETAILED_COLUMNS]:
            pair = [row[f"a{i}"], row[f"b{i}"]]
            if names[i] == dataset.label():
                pair = [None if code is None else labels.dictionary[code].as_py() for code in pair]
            values.append(f"{names[i]} is {shown(pair[0])} in datasetA but {shown(pair[1])} in datasetB")
        more = len(differing) - DETAILED_COLUMNS
        details.append(f"{dataset.key()} {shown(row['k'], quote=False)}: {', '.join(values)}"
                       + (f" and {more} more column(s) differ" if more > 0 else ""))
    ids = ", ".join(shown(key, quote=False) for key in first.column("k").to_pylist())
    raise StageError(f"merge: {dataset.key()} {ids} ({found.conflicts} in all) have different values in "
                     f"datasetA and datasetB; {'; '.join(details)}")


# ------------------------------------------------------------------ the two ways through

def aligned(streams: list[Iterable[pa.Table]]) -> Iterator[list[pa.Table | None]]:
    """Id-sorted streams cut at a common frontier: each round gives every stream's rows with Ids up to the
    smallest of the held pieces' last Ids (None for a stream that is done).

    Every row with such an Id has then arrived from every stream, so a round's rows can be merged and
    written while the rest waits for the next piece. Each round empties at least one held piece. Once one
    stream is left, its pieces follow as they are.
    """
    streams = [iter(s) for s in streams]
    held: list[pa.Table | None] = [None] * len(streams)
    live = list(range(len(streams)))
    while True:
        for i in list(live):
            if held[i] is None or not held[i].num_rows:
                held[i] = next((t for t in streams[i] if t.num_rows), None)
                if held[i] is None:
                    live.remove(i)
        if len(live) <= 1:
            for i in live:
                for table in chain([held[i]], streams[i]):  # lazily: the rest may be most of the data
                    if table.num_rows:
                        yield [table if j == i else None for j in range(len(streams))]
            return
        frontier = min(held[i].column(dataset.key())[-1].as_py() for i in live)
        ready: list[pa.Table | None] = [None] * len(streams)
        for i in live:
            n = pc.sum(pc.less_equal(held[i].column(dataset.key()), frontier)).as_py() or 0
            ready[i], held[i] = held[i].slice(0, n), held[i].slice(n)
        yield ready


def streamed_union(a: dataset.Snapshot, b: dataset.Snapshot, engine: Engine, labels: Labels, found: Found
                   ) -> Iterator[pa.Table]:
    """The sorted union of two snapshots sorted by Id, a round at a time: the rows of a round whose Ids
    both hold go to the engine to be compared, B's copies of them are dropped, and the rest is sorted."""
    names = engine.names
    for ready_a, ready_b in aligned([(t.select(names) for t in a.tables()), (t.select(names) for t in b.tables())]):
        if not (ready_a and ready_b):  # one side only (Id ranges apart, or the other side is done): as is
            yield ready_a or ready_b
            continue
        in_a = pc.is_in(ready_b.column(dataset.key()), value_set=ready_a.column(dataset.key()).combine_chunks())
        if pc.any(in_a).as_py():
            in_b = pc.is_in(ready_a.column(dataset.key()), value_set=ready_b.column(dataset.key()).combine_chunks())
            engine.con.register("a", coded(ready_a.filter(in_b), names, labels))
            engine.con.register("b", coded(ready_b.filter(in_a), names, labels))
            engine.compare(found)
            ready_b = ready_b.filter(pc.invert(in_a))
        yield pa.concat_tables([ready_a, ready_b]).sort_by(dataset.key())


def engine_union(a: dataset.Snapshot, b: dataset.Snapshot, engine: Engine, labels: Labels, found: Found,
                 spill: Path, schema: pa.Schema) -> Iterator[pa.Table]:
    """The sorted union of two snapshots in any Id order, by the engine from copies in `spill`; conflicts
    stop it before it sorts."""
    for snapshot, relation in ((a, "a"), (b, "b")):
        spill_copy(snapshot, engine.names, labels, spill / f"{relation}.parquet")
        engine.con.read_parquet(str(spill / f"{relation}.parquet")).create_view(relation)
    if not engine.compare(found):
        refuse_keys(a, b)
    refuse(found, engine, labels)
    ascending = Ascending()
    for batch in engine.union():
        table = decoded(batch, engine.names, labels, schema)
        if not ascending.check(table):
            refuse_keys(a, b)
        yield table


# ------------------------------------------------------------------ on a cluster
# The same union, by ranges of Ids: the workers check both snapshots' rows and send each row to the range its
# Id falls in (the ranges cut where a sample of the Ids says, so they come out about equal), then each range
# is merged by the engine above, on a worker, with the same queries; the job writes the ranges in order. A
# problem any range finds (a conflict, an Id twice) is named by the one-machine path, in its words.

RANGES_PER_WORKER = 2
SAMPLE_SIZE = 100_000  # Ids sampled, about, to cut the ranges


def sample_keys(unit: tuple, every: int) -> dict:
    """On a worker: every `every`-th Id of one slice of a snapshot, sorted."""
    name, path, group, start, rows = unit
    snapshot = dataset.Snapshot(Path(path), name)
    ids = pc.cast(snapshot.file.read_row_group(group, columns=[dataset.key()]).column(0).slice(start, rows),
                  dataset.arrow_types(schemas.active())[dataset.key()])
    if ids.null_count:
        raise StageError(f"input {name}: a missing {dataset.key()}")
    return {"sample": sorted(ids.take(pa.array(range(0, len(ids), every))).to_pylist())}


def split_rows(item: tuple, names: list[str], bounds: list) -> dict:
    """On a worker: one slice of a snapshot, checked, as the engine's columns (the label as text and as the
    schema spells it), one file per range of Ids."""
    import numpy as np  # (with dask, on a cluster's image)

    unit, files = item
    name, path, group, start, rows = unit
    table = dataset.Snapshot(Path(path), name).rows(group, start, rows)
    if table.column(dataset.key()).null_count:
        raise StageError(f"input {name}: a missing {dataset.key()}")
    schema = schemas.active()
    labels = pc.cast(table.column(dataset.label()), pa.string())
    spelt = {value: schema.canonical(value) for value in pc.unique(labels).to_pylist() if value is not None}
    same = pa.array([None if v is None else spelt[v] for v in labels.to_pylist()], pa.string())
    table = table.select(names).set_column(names.index(dataset.label()), dataset.label(), labels).append_column("s", same)
    table = table.rename_columns(engine_names(names))
    ids = table.column(engine_names(names)[names.index(dataset.key())]).to_numpy(zero_copy_only=False)
    ranges = np.searchsorted(np.asarray(bounds, dtype=ids.dtype), ids, side="right") if bounds else np.zeros(len(ids), int)
    for r, file in enumerate(files):
        cluster.write_part(table.filter(pa.array(ranges == r)), Path(file))
    return {"rows": table.num_rows}


def merge_range(item: tuple, names: list[str]) -> dict:
    """On a worker: one range of Ids merged by the engine (compared, then A's rows and B's that A lacks,
    sorted), into its part file."""
    a_files, b_files, part = item
    spill = Path(part).with_suffix(".spill")
    spill.mkdir(exist_ok=True)
    try:
        with connect(spill) as con, engine_errors():
            con.read_parquet(a_files).create_view("a")
            con.read_parquet(b_files).create_view("b")
            engine, found = Engine(lambda: con, names), Found()
            if not engine.compare(found) or found.conflicts:
                raise StageError("merge: a conflict or an Id held twice")
            ascending, writer, rows = Ascending(), None, 0
            tmp = Path(part).with_suffix(".tmp")
            try:
                for batch in engine.union():
                    table = pa.Table.from_batches([batch]).rename_columns(names)
                    if not ascending.check(table):
                        raise StageError("merge: an Id held twice")
                    writer = writer or pq.ParquetWriter(tmp, batch.schema, compression="none")
                    writer.write_batch(batch)
                    rows += batch.num_rows
            finally:
                if writer:
                    writer.close()
            if writer:
                tmp.replace(part)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return {"rows": rows, "overlap": found.overlap}


def from_engine(table: pa.Table, names: list[str], schema: pa.Schema) -> pa.Table:
    """A range's rows back as snapshot rows."""
    table = table.rename_columns(names)
    label = names.index(dataset.label())
    return table.set_column(label, dataset.label(), pc.cast(table.column(label), dataset.LABEL_TYPE)).cast(schema)


def merge_on(dask: cluster.Cluster, tree: StageTree, a: dataset.Snapshot, b: dataset.Snapshot, names: list[str],
             schema: pa.Schema, sources: list[dict]) -> bool:
    """The merge on the cluster; False when a range found a problem (the one-machine path then names it)."""
    units = [(snapshot.name, str(dask.share(snapshot.path, snapshot.name)), *part) for snapshot in (a, b)
             for part in cluster.slices(snapshot.row_group_rows(), dask.workers)]
    if not units:
        return False
    samples = dask.run(sample_keys, units, max(1, (a.num_rows + b.num_rows) // SAMPLE_SIZE))
    if any(report.get("refused") for report in samples):
        return False
    sample = sorted(key for report in samples for key in report["sample"])
    count = RANGES_PER_WORKER * dask.workers
    bounds = sorted({sample[len(sample) * i // count] for i in range(1, count)}) if sample else []
    splits = [[str(dask.part(f"split-{n}-{r}")) for r in range(len(bounds) + 1)] for n in range(len(units))]
    if any(report.get("refused") for report in dask.run(split_rows, list(zip(units, splits)), names, bounds)):
        return False
    ranges = [([splits[n][r] for n, unit in enumerate(units) if unit[0] == a.name],
               [splits[n][r] for n, unit in enumerate(units) if unit[0] == b.name], str(dask.part(f"union-{r}")))
              for r in range(len(bounds) + 1)]
    merged = dask.run(merge_range, ranges, names)
    if any(report.get("refused") for report in merged):
        return False
    parts = [Path(part) for (_, _, part), report in zip(ranges, merged) if report["rows"]]
    with tree.output_file("merged_data") as tmp, dataset.Writer(tmp, schema) as writer:
        for table in cluster.read_parts(parts):
            writer.write(from_engine(table, names, schema))
        writer.meta = {"sources": sources, "rows": writer.rows, "overlap": sum(r["overlap"] for r in merged)}
    log.info("merged %d + %d rows (%d Ids in both, identical) into %d rows (on the cluster: %d ranges of %s)",
             a.num_rows, b.num_rows, writer.meta["overlap"], writer.rows, len(ranges), dataset.key())
    return True


def merge(tree: StageTree) -> None:
    inputs.use_schema(tree)
    a = dataset.Snapshot(tree.read("datasetA", contract.File), "datasetA")
    b = dataset.Snapshot(tree.read("datasetB", contract.File), "datasetB")
    names = shared_columns(a, b)
    schema = a.empty().select(names).schema
    # Lineage without load times: the merged data depends only on the sources' content, so the same
    # sources give a byte-identical file wherever and whenever the stage runs.
    sources = [{"input": name, **{k: m["source"][k] for k in ("sha256", "rows", "format")}}
               for name, m in (("datasetA", a.meta), ("datasetB", b.meta)) if "source" in m]
    with cluster.attached() as dask:
        if dask and merge_on(dask, tree, a, b, names, schema, sources):
            return
        if dask:
            log.info("a range of Ids found a problem: naming it on one machine")
    streaming = sorted_by_key(a) and sorted_by_key(b)
    labels, found = Labels(), Found()
    with tree.output_file("merged_data") as tmp, \
            tempfile.TemporaryDirectory(prefix=".merge-spill-", dir=tmp.parent) as spill, \
            contextlib.ExitStack() as connected, engine_errors(), dataset.Writer(tmp, schema) as writer:
        engine = Engine(lambda: connected.enter_context(connect(Path(spill))), names)
        union = (streamed_union(a, b, engine, labels, found) if streaming else
                 engine_union(a, b, engine, labels, found, Path(spill), schema))
        for table in union:
            writer.write(table)
        refuse(found, engine, labels)
        writer.meta = {"sources": sources, "rows": writer.rows, "overlap": found.overlap}
    log.info("merged %d + %d rows (%d Ids in both, identical) into %d rows (%s)", a.num_rows, b.num_rows,
             found.overlap, writer.rows,
             f"streamed: both sorted by {dataset.key()}" if streaming else
             f"sorted by DuckDB: a source is not sorted by {dataset.key()}")


def main() -> None:
    contract.main(merge, outputs=["merged_data"])


if __name__ == "__main__":
    dataset.own_process()
    main()
