"""Stage merge: the union of snapshots A and B keyed on Id (merged_data). "Id" here is the schema's key column.

The seed concatenated A with itself; here both sources count. A row that both sources hold with the
same values is kept once; the same Id with different values is a conflict no merge rule can settle
silently, so it stops the flow and names the Ids. An optional column (RandomColumn) that only one source
has is left out of the merged data, with a warning: filled with nulls for the other source's rows it would
carry no information for them, and an Id in both sources would compare a value against a null.

When both snapshots are sorted by Id (as extracts usually are, interleaved or not), the stage streams them:
a row group of each at a time. Otherwise it sorts them externally: each row group sorted and spilled to a
file beside the output (a sorted run), then the runs merged a slice of each at a time. Either way memory
stays bounded whatever the size; the unsorted way writes exactly the bytes a sort in memory would.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from stageflow.runtime import contract, dataset
from stageflow.runtime.contract import StageError, StageTree

log = logging.getLogger("stageflow")

# Rows the merge of sorted runs holds at once, shared among the runs (a slice of each): about 100 MB.
HELD_ROWS = 2_000_000


def shared_columns(a: dataset.Snapshot, b: dataset.Snapshot) -> list[str]:
    """The columns both snapshots have, in canonical order. Both hold every required column (checked when
    read), so the others differ only in optional columns: those are left out, and the log says so."""
    names_a, names_b = a.empty().column_names, b.empty().column_names
    for name in sorted(set(names_a) ^ set(names_b)):
        has, lacks = ("datasetA", "datasetB") if name in names_a else ("datasetB", "datasetA")
        log.warning("merge: %s is in %s but not in %s; merged_data leaves it out (an optional column is kept "
                    "only when both sources have it)", name, has, lacks)
    return [name for name in names_a if name in names_b]


def find_conflicts(a: pa.Table, b: pa.Table) -> list[int]:
    """Ids present in both with any differing value (two missing values count as equal)."""
    both = a.join(b, keys=dataset.key(), right_suffix="__b", join_type="inner")
    differs = pa.array([False] * both.num_rows, pa.bool_())
    for name in a.column_names:
        if name == dataset.key():
            continue
        left, right = both.column(name), both.column(name + "__b")
        equal = pc.or_kleene(pc.equal(left, right), pc.and_(pc.is_null(left), pc.is_null(right)))
        if pa.types.is_floating(left.type):
            equal = pc.or_kleene(equal, pc.and_(pc.is_nan(left), pc.is_nan(right)))
        differs = pc.or_(differs, pc.invert(pc.fill_null(equal, False)))
    return sorted(pc.filter(both.column(dataset.key()), differs).to_pylist())


def combine(a: pa.Table, b: pa.Table) -> tuple[pa.Table, int, list[int]]:
    """A plus the rows of B whose Id A lacks, unsorted (no copy when nothing overlaps); how many Ids both
    hold; and those of them whose values differ. Both have the same columns, in the same order."""
    overlap = pc.is_in(b.column(dataset.key()), value_set=a.column(dataset.key()).combine_chunks())
    n_overlap = pc.sum(overlap).as_py() or 0
    conflicts: list[int] = []
    if n_overlap:
        conflicts = find_conflicts(a, b.filter(overlap))
        b = b.filter(pc.invert(overlap))
    return pa.concat_tables([a, b]), n_overlap, conflicts


@dataclass
class Overlap:
    """Ids both sources hold, counted across pieces; those whose values differ are collected, not raised at
    once, so the error can count them all."""
    count: int = 0
    conflicts: list[int] = field(default_factory=list)


def refuse(conflicts: list[int]) -> None:
    if conflicts:
        shown = ", ".join(str(i) for i in sorted(conflicts)[:10])
        raise StageError(f"merge: {dataset.key()} {shown} ({len(conflicts)} in all) have different values "
                         f"in datasetA and datasetB")


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


def sorted_union(a: Iterable[pa.Table], b: Iterable[pa.Table], overlap: Overlap) -> Iterator[pa.Table]:
    """The sorted union of two streams sorted by Id, a piece at a time."""
    for ready_a, ready_b in aligned([a, b]):
        if not (ready_a and ready_b):  # one side only (Id ranges apart, or the other side is done): as is
            yield ready_a or ready_b
            continue
        combined, n_overlap, conflicts = combine(ready_a, ready_b)
        overlap.count += n_overlap
        overlap.conflicts += conflicts
        yield combined.sort_by(dataset.key())


def spill_runs(snapshot: dataset.Snapshot, names: list[str], spill: Path, slice_rows: int, dictionaries: list
               ) -> list[Path]:
    """Each row group of `snapshot`, sorted by Id, into an Arrow IPC file of its own in `spill` (a sorted
    run) in batches of `slice_rows`; each row group's label dictionaries go to `dictionaries`."""
    runs = []
    for i, table in enumerate(snapshot.tables()):
        dictionaries += [chunk.dictionary for chunk in table.column(dataset.label()).chunks]
        table = table.select(names).sort_by(dataset.key())
        runs.append(spill / f"{snapshot.name}-{i}.arrow")
        with pa.OSFile(str(runs[-1]), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=slice_rows)
    return runs


def read_run(path: Path) -> Iterator[pa.Table]:
    """A sorted run, a batch at a time (read, not memory-mapped: mapped pages would count as the stage's)."""
    with pa.OSFile(str(path)) as source:
        reader = ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])


def merged_runs(runs: list[Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """Sorted runs without an Id in common, merged into one Id-sorted stream a round at a time."""
    for ready in aligned(runs):
        pieces = [t for t in ready if t]
        yield pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces).sort_by(dataset.key())


def row_groups(tables: Iterable[pa.Table], dictionary: pa.Array) -> Iterator[pa.Table]:
    """`tables` joined and cut into one-chunk pieces of exactly ROW_GROUP rows (the last one shorter), their
    labels coded on `dictionary`: what a sort in memory hands the writer, so the file's bytes are the same."""
    pending: list[pa.Table] = []
    buffered = 0
    for table in tables:
        pending.append(table)
        buffered += table.num_rows
        while buffered >= dataset.ROW_GROUP:
            joined = pa.concat_tables(pending)
            yield on_dictionary(joined.slice(0, dataset.ROW_GROUP), dictionary)
            pending, buffered = [joined.slice(dataset.ROW_GROUP)], buffered - dataset.ROW_GROUP
    if buffered:
        yield on_dictionary(pa.concat_tables(pending), dictionary)


def on_dictionary(table: pa.Table, dictionary: pa.Array) -> pa.Table:
    """`table` in one chunk, its labels re-coded on `dictionary` (which holds every label they use)."""
    codes = [pc.take(pc.index_in(chunk.dictionary, value_set=dictionary), chunk.indices)
             for chunk in table.column(dataset.label()).chunks]
    labels = pa.DictionaryArray.from_arrays(pa.chunked_array(codes, pa.int32()).combine_chunks(), dictionary)
    return table.set_column(table.schema.get_field_index(dataset.label()), dataset.label(), labels).combine_chunks()


def external_union(a: dataset.Snapshot, b: dataset.Snapshot, names: list[str], spill: Path, overlap: Overlap
                   ) -> Iterator[pa.Table]:
    """The sorted union of two snapshots in any Id order, through sorted runs spilled to `spill`, in row
    groups. Held at once: one row group while spilling; then a slice of every run, HELD_ROWS in all."""
    slice_rows = max(1, HELD_ROWS // max(1, a.file.num_row_groups + b.file.num_row_groups))
    dictionaries: list[pa.Array] = []
    runs_a = spill_runs(a, names, spill, slice_rows, dictionaries)
    runs_b = spill_runs(b, names, spill, slice_rows, dictionaries)
    # A sort in memory concatenates A's row groups then B's; that unifies their label dictionaries in order.
    unified = pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), d) for d in dictionaries],
                               dataset.LABEL_TYPE).unify_dictionaries()
    dictionary = unified.chunk(0).dictionary if unified.num_chunks else pa.array([], pa.string())
    union = sorted_union(merged_runs([read_run(p) for p in runs_a]), merged_runs([read_run(p) for p in runs_b]),
                         overlap)
    yield from row_groups(union, dictionary)


def merge(tree: StageTree) -> None:
    a = dataset.Snapshot(tree.read("datasetA", contract.File), "datasetA")
    b = dataset.Snapshot(tree.read("datasetB", contract.File), "datasetB")
    names = shared_columns(a, b)
    streaming = all(dataset.strictly_increasing(s.column(dataset.key())) for s in (a, b))
    # Lineage without load times: the merged data depends only on the sources' content, so the same
    # sources give a byte-identical file wherever and whenever the stage runs.
    sources = [{k: m["source"][k] for k in ("sha256", "rows", "format")} for m in (a.meta, b.meta) if "source" in m]
    overlap = Overlap()
    with tree.output_file("merged_data") as tmp, dataset.Writer(tmp, a.empty().select(names).schema) as writer:
        if streaming:  # a row group of each side in memory at a time
            for table in sorted_union((t.select(names) for t in a.tables()),
                                      (t.select(names) for t in b.tables()), overlap):
                writer.write(table)
        else:  # sorted runs spilled beside the output: disk-backed, where /tmp may be a small tmpfs
            with tempfile.TemporaryDirectory(prefix=".merge-runs-", dir=tmp.parent) as spill:
                for table in external_union(a, b, names, Path(spill), overlap):
                    writer.write(table)
        refuse(overlap.conflicts)
        writer.meta = {"sources": sources, "rows": writer.rows, "overlap": overlap.count}
    log.info("merged %d + %d rows (%d Ids in both, identical) into %d rows (%s)", a.num_rows, b.num_rows,
             overlap.count, writer.rows,
             f"streamed: both sorted by {dataset.key()}" if streaming else
             f"sorted through spill files: a source is not sorted by {dataset.key()}")


def main() -> None:
    contract.main(merge, outputs=["merged_data"])


if __name__ == "__main__":
    main()
