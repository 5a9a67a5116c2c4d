"""Stage merge: the union of snapshots A and B keyed on Id (merged_data).

The seed concatenated A with itself; here both sources count. A row that both sources hold with the
same values is kept once; the same Id with different values is a conflict no merge rule can settle
silently, so it stops the flow and names the Ids. An optional column (RandomColumn) that only one source
has is left out of the merged data, with a warning: filled with nulls for the other source's rows it would
carry no information for them, and an Id in both sources would compare a value against a null.

When both snapshots are sorted by Id (as extracts usually are, interleaved or not), the stage streams them:
a row group of each at a time. Otherwise it holds both and writes the sorted union in slices.
"""

from __future__ import annotations

import logging
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from stageflow.runtime import contract, dataset
from stageflow.runtime.contract import StageError, StageTree

log = logging.getLogger("stageflow")


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
    both = a.join(b, keys=dataset.ID, right_suffix="__b", join_type="inner")
    differs = pa.array([False] * both.num_rows, pa.bool_())
    for name in a.column_names:
        if name == dataset.ID:
            continue
        left, right = both.column(name), both.column(name + "__b")
        equal = pc.or_kleene(pc.equal(left, right), pc.and_(pc.is_null(left), pc.is_null(right)))
        if pa.types.is_floating(left.type):
            equal = pc.or_kleene(equal, pc.and_(pc.is_nan(left), pc.is_nan(right)))
        differs = pc.or_(differs, pc.invert(pc.fill_null(equal, False)))
    return sorted(pc.filter(both.column(dataset.ID), differs).to_pylist())


def combine(a: pa.Table, b: pa.Table) -> tuple[pa.Table, int, list[int]]:
    """A plus the rows of B whose Id A lacks, unsorted (no copy when nothing overlaps); how many Ids both
    hold; and those of them whose values differ. Both have the same columns, in the same order."""
    overlap = pc.is_in(b.column(dataset.ID), value_set=a.column(dataset.ID).combine_chunks())
    n_overlap = pc.sum(overlap).as_py() or 0
    conflicts: list[int] = []
    if n_overlap:
        conflicts = find_conflicts(a, b.filter(overlap))
        b = b.filter(pc.invert(overlap))
    return pa.concat_tables([a, b]), n_overlap, conflicts


def refuse(conflicts: list[int]) -> None:
    if conflicts:
        shown = ", ".join(str(i) for i in sorted(conflicts)[:10])
        raise StageError(f"merge: Id {shown} ({len(conflicts)} in all) have different values "
                         f"in datasetA and datasetB")


def sorted_slices(table: pa.Table) -> Iterator[pa.Table]:
    """`table` sorted by Id, one row group at a time: a sorted copy of the whole table is never made."""
    order = pc.sort_indices(table, sort_keys=[(dataset.ID, "ascending")])
    for start in range(0, len(order), dataset.ROW_GROUP):
        yield table.take(order.slice(start, dataset.ROW_GROUP))


def sorted_union(a: Iterator[pa.Table], b: Iterator[pa.Table], conflicts: list[int]
                 ) -> Iterator[tuple[pa.Table, int]]:
    """The sorted union of two streams sorted by Id, a piece at a time, with each piece's overlap.

    Every Id up to the smaller of the two held pieces' last Ids has arrived from both sides, so those rows
    can be merged and written; the rest waits for the next piece. Each round empties at least one side.
    Conflicts are collected, not raised, so the error can count them all.
    """
    streams = [iter(a), iter(b)]
    held: list[pa.Table | None] = [None, None]
    while True:
        for i in (0, 1):
            if held[i] is None or not held[i].num_rows:
                held[i] = next((t for t in streams[i] if t.num_rows), None)
        if held[0] is None or held[1] is None:  # one side is done: the other's rows follow as they are
            rest = 1 if held[0] is None else 0
            if held[rest] is not None:
                yield held[rest], 0
                yield from ((t, 0) for t in streams[rest])
            return
        frontier = min(t.column(dataset.ID)[-1].as_py() for t in held)
        ready = []
        for i in (0, 1):
            n = pc.sum(pc.less_equal(held[i].column(dataset.ID), frontier)).as_py() or 0
            ready.append(held[i].slice(0, n))
            held[i] = held[i].slice(n)
        if not (ready[0].num_rows and ready[1].num_rows):  # Id ranges apart (consecutive extracts): as is
            yield ready[0] if ready[0].num_rows else ready[1], 0
            continue
        combined, n_overlap, found = combine(*ready)
        conflicts.extend(found)
        yield combined.sort_by(dataset.ID), n_overlap


def merge(tree: StageTree) -> None:
    a = dataset.Snapshot(tree.read("datasetA", contract.File), "datasetA")
    b = dataset.Snapshot(tree.read("datasetB", contract.File), "datasetB")
    names = shared_columns(a, b)
    streaming = all(dataset.strictly_increasing(s.column(dataset.ID)) for s in (a, b))
    # Lineage without load times: the merged data depends only on the sources' content, so the same
    # sources give a byte-identical file wherever and whenever the stage runs.
    sources = [{k: m["source"][k] for k in ("sha256", "rows", "format")} for m in (a.meta, b.meta) if "source" in m]
    n_overlap = 0
    with tree.output_file("merged_data") as tmp, dataset.Writer(tmp, a.empty().select(names).schema) as writer:
        if streaming:  # a row group of each side in memory at a time
            conflicts: list[int] = []
            for table, overlap in sorted_union((t.select(names) for t in a.tables()),
                                               (t.select(names) for t in b.tables()), conflicts):
                writer.write(table)
                n_overlap += overlap
            refuse(conflicts)
        else:  # an unsorted source: both snapshots in memory, written out in sorted slices
            combined, n_overlap, conflicts = combine(a.read().select(names), b.read().select(names))
            refuse(conflicts)
            for table in sorted_slices(combined):
                writer.write(table)
        writer.meta = {"sources": sources, "rows": writer.rows, "overlap": n_overlap}
    log.info("merged %d + %d rows (%d Ids in both, identical) into %d rows%s", a.num_rows, b.num_rows,
             n_overlap, writer.rows, " (streamed: both sorted by Id)" if streaming else "")


def main() -> None:
    contract.main(merge, outputs=["merged_data"])


if __name__ == "__main__":
    main()
