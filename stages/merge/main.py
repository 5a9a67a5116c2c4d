"""Stage merge: the union of snapshots A and B keyed on Id (merged_data).

The seed concatenated A with itself; here both sources count. A row that both sources hold with the
same values is kept once; the same Id with different values is a conflict no merge rule can settle
silently, so it stops the flow and names the Ids.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from stageflow import contract, dataset
from stageflow.contract import StageError, Workflow

log = logging.getLogger("stageflow")


def check_same_columns(a: pa.Table, b: pa.Table) -> pa.Table:
    """Return b with a's column order; columns must agree by name and type, in any order."""
    if set(a.column_names) != set(b.column_names):
        only_a = sorted(set(a.column_names) - set(b.column_names))
        only_b = sorted(set(b.column_names) - set(a.column_names))
        raise StageError(f"merge: datasetA and datasetB have different columns "
                         f"(only in A: {', '.join(only_a) or '-'}; only in B: {', '.join(only_b) or '-'})")
    for name in a.column_names:
        if a.schema.field(name).type != b.schema.field(name).type:
            raise StageError(f"merge: column {name} is {a.schema.field(name).type} in datasetA "
                             f"but {b.schema.field(name).type} in datasetB")
    return b.select(a.column_names)


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


def union(a: pa.Table, b: pa.Table) -> tuple[pa.Table, int]:
    """A plus the rows of B whose Id A lacks, sorted by Id; also returns how many Ids overlapped."""
    b = check_same_columns(a, b)
    overlap = pc.is_in(b.column(dataset.ID), value_set=a.column(dataset.ID).combine_chunks())
    n_overlap = pc.sum(overlap).as_py() or 0
    if n_overlap:
        conflicts = find_conflicts(a, b.filter(overlap))
        if conflicts:
            shown = ", ".join(str(i) for i in conflicts[:10])
            raise StageError(f"merge: Id {shown} ({len(conflicts)} in all) have different values "
                             f"in datasetA and datasetB")
    merged = pa.concat_tables([a, b.filter(pc.invert(overlap))])
    return merged.sort_by(dataset.ID), n_overlap


def sorted_apart(ids_a: pa.ChunkedArray, ids_b: pa.ChunkedArray) -> str | None:
    """"ab" or "ba" when both Id columns are strictly increasing and one source's Ids all come before the
    other's (consecutive extracts, say): then A then B (or B then A) is already the sorted union."""
    if not (len(ids_a) and len(ids_b)) or ids_a.null_count or ids_b.null_count:
        return None
    if not (dataset.strictly_increasing(ids_a) and dataset.strictly_increasing(ids_b)):
        return None
    if ids_a[-1].as_py() < ids_b[0].as_py():
        return "ab"
    if ids_b[-1].as_py() < ids_a[0].as_py():
        return "ba"
    return None


def merge(wf: Workflow) -> None:
    a = dataset.Snapshot(wf.read("datasetA", contract.File), "datasetA")
    b = dataset.Snapshot(wf.read("datasetB", contract.File), "datasetB")
    names = check_same_columns(a.empty(), b.empty()).column_names
    order = sorted_apart(a.column(dataset.ID), b.column(dataset.ID))
    # Lineage without load times: the merged data depends only on the sources' content, so the same
    # sources give a byte-identical file wherever and whenever the stage runs.
    sources = [{k: m["source"][k] for k in ("sha256", "rows", "format")} for m in (a.meta, b.meta) if "source" in m]
    with wf.output_file("merged_data") as tmp:
        writer = dataset.Writer(tmp, a.empty().schema)
        try:
            if order:  # stream: one row group in memory at a time
                n_overlap = 0
                for snapshot in (a, b) if order == "ab" else (b, a):
                    for table in snapshot.tables():
                        writer.write(table.select(names))
            else:  # Ids interleave or repeat: both snapshots in memory
                merged, n_overlap = union(a.read(), b.read())
                writer.write(merged)
        except BaseException:
            writer.abort()
            raise
        writer.close({"sources": sources, "rows": writer.rows, "overlap": n_overlap})
    log.info("merged %d + %d rows (%d Ids in both, identical) into %d rows%s", a.num_rows, b.num_rows,
             n_overlap, writer.rows, " (streamed: Id ranges apart)" if order else "")


def main() -> None:
    contract.main(merge, outputs=["merged_data"])


if __name__ == "__main__":
    main()
