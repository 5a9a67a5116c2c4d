"""Stage process: merged_data -> processed_data, ready to train on.

Drops the schema's dropped columns (iris: the seed's noise column), removes rows a model cannot use (and says
how many and why, in the log and in the snapshot's metadata, since a silent drop hides a broken source), and brings each label to one spelling by the schema's
label rules, so that under iris's rules `Iris-setosa ` and `setosa` are one class. It streams: one row group in
memory at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from stageflow.runtime import cluster, contract, dataset, inputs, schema as schemas
from stageflow.runtime.contract import StageError, StageTree

log = logging.getLogger("stageflow")


def normalise_labels(labels: pa.ChunkedArray, schema: schemas.Schema) -> pa.ChunkedArray:
    """Spell each distinct label once by the schema's rules (a dictionary holds a handful), then re-point every
    row at its spelling; spellings that become equal (` Iris-Setosa`, `setosa`) become one entry."""
    chunks = []
    for chunk in pc.cast(labels, dataset.LABEL_TYPE).chunks:
        spelt = pa.array([None if v is None else schema.canonical(v) for v in chunk.dictionary.to_pylist()],
                         pa.string())
        distinct = pc.unique(spelt)
        codes = pc.index_in(spelt, value_set=distinct).take(chunk.indices)
        chunks.append(pa.DictionaryArray.from_arrays(codes, distinct))
    return pa.chunked_array(chunks, type=dataset.LABEL_TYPE)


def unknown_labels(labels: pa.ChunkedArray, schema: schemas.Schema) -> dict[str, int]:
    """Each label other than the declared classes, or not an integer where the schema's labels are, with its
    number of rows (nulls are not labels); none when the schema declares no classes and text labels."""
    if schema.classes is None and schema.label_type != "int":
        return {}
    counts = pc.value_counts(labels)
    values = pc.cast(counts.field("values"), pa.string()).to_pylist()
    found: dict[str, int] = {}
    for value, count in zip(values, counts.field("counts").to_pylist()):
        if value is not None and (not schema.is_label(value) or schema.classes and value not in schema.classes):
            found[value] = found.get(value, 0) + count
    return found


def check_labels(unknown: dict[str, int], schema: schemas.Schema) -> None:
    if unknown:
        shown = ", ".join(repr(v) for v in sorted(unknown)[:5])
        expected = (f"expected one of {', '.join(schema.classes)}" if schema.classes else
                    'expected an integer (label.type is "int")')
        raise StageError(f"input merged_data: column {schema.label} has unknown label {shown} "
                         f"in {sum(unknown.values())} row(s); {expected}")


def check_not_empty(kept: int, total: int, dropped: dict[str, int]) -> None:
    if kept == 0:
        raise StageError(f"input merged_data: all {total} rows were dropped ({dropped_words(dropped)}); nothing "
                         f"is left to train on")


def drop_reasons(table: pa.Table, schema: schemas.Schema) -> list[tuple[str, pa.ChunkedArray]]:
    """Why a row cannot be trained on, each reason with the rows it holds for, in the order a row is counted
    under: its label missing, then each feature missing or NaN. (An infinite or huge feature never gets
    here: reading the data refuses it, as training could not scale it.)"""
    reasons = [(f"{schema.label} missing", pc.is_null(table.column(schema.label)))]
    for name in schema.features:
        values = table.column(name)
        reasons.append((f"{name} missing", pc.is_null(values)))
        if pa.types.is_floating(values.type):
            reasons.append((f"{name} NaN", pc.fill_null(pc.is_nan(values), False)))
    return reasons


def missing_values(table: pa.Table, schema: schemas.Schema) -> dict[str, int]:
    """Rows in which each feature is missing (or NaN), whatever else the row lacks: the training report's
    data summary (the drop counts say why each row went, under its first reason only)."""
    found = {}
    for name in schema.features:
        values = table.column(name)
        missing = pc.is_null(values, nan_is_null=pa.types.is_floating(values.type))
        found[name] = pc.sum(missing).as_py() or 0
    return found


def usable_rows(table: pa.Table, schema: schemas.Schema) -> tuple[pa.ChunkedArray, dict[str, int]]:
    """True where a row can be trained on; and the others counted by reason, each under the first that holds
    for it, so the counts add up to the rows dropped."""
    keep, dropped = None, {}
    for reason, drop in drop_reasons(table, schema):
        hit = drop if keep is None else pc.and_(keep, drop)
        count = pc.sum(hit).as_py() or 0
        if count:
            dropped[reason] = count
        keep = pc.invert(drop) if keep is None else pc.and_not(keep, drop)
    return keep, dropped


def dropped_words(dropped: dict[str, int]) -> str:
    """`SepalLengthCm missing in 2, PetalWidthCm NaN in 1`: the reasons rows were dropped, for a log line."""
    return ", ".join(f"{reason} in {count}" for reason, count in dropped.items())


def add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count


def clean_table(table: pa.Table, schema: schemas.Schema) -> tuple[pa.Table, dict[str, int], dict[str, int]]:
    """Drop the dropped columns, normalise labels and keep the usable rows (the checks need every row group);
    with the rows dropped, by reason, and the missing values of each feature."""
    table = table.drop_columns([name for name in schema.dropped if name in table.column_names])
    labels = normalise_labels(table.column(schema.label), schema)
    table = table.set_column(table.schema.get_field_index(schema.label), schema.label, labels)
    keep, dropped = usable_rows(table, schema)
    return table.filter(keep), dropped, missing_values(table, schema)


def clean_part(item: tuple[tuple[int, int, int], str], path: str) -> dict:
    """On a worker: one slice of a row group cleaned into its part file; its counts."""
    (group, start, rows), part = item
    table = dataset.Snapshot(Path(path), "merged_data").rows(group, start, rows)
    schema = schemas.active()
    cleaned, dropped, absent = clean_table(table, schema)
    cluster.write_part(cleaned, Path(part))
    return {"rows": cleaned.num_rows, "dropped": dropped, "missing": absent,
            "unknown": unknown_labels(cleaned.column(schema.label), schema)}


def process_on(dask: cluster.Cluster, tree: StageTree, snapshot: dataset.Snapshot) -> dict[str, int] | None:
    """The same work on the cluster, a partition per slice of a row group: the rows dropped, by reason; None
    when a partition's rows are refused (the one-machine path then names the problem)."""
    shared = dask.share(snapshot.path, "merged_data")
    units = cluster.slices(snapshot.row_group_rows(), dask.workers)
    parts = [str(dask.part(f"process-{n}")) for n in range(len(units))]
    reports = dask.run(clean_part, list(zip(units, parts)), str(shared))
    if any(report.get("refused") for report in reports):
        log.info("a partition's rows were refused: naming the problem on one machine")
        return None
    unknown, reasons, missing = {}, {}, dict.fromkeys(schemas.active().features, 0)
    for report in reports:
        add_counts(reasons, report["dropped"])
        add_counts(unknown, report["unknown"])
        add_counts(missing, report["missing"])
    write_output(tree, snapshot, cluster.read_parts([Path(p) for p in parts]), reasons, unknown, missing)
    return reasons


def write_output(tree: StageTree, snapshot: dataset.Snapshot, cleaned, reasons: dict[str, int],
                 unknown: dict[str, int], missing: dict[str, int]) -> None:
    """The cleaned rows as processed_data, once the whole is known to be trainable."""
    with tree.output_file("processed_data") as tmp, dataset.Writer(tmp) as writer:
        for table in cleaned:
            writer.write(table)
        kept = writer.rows
        check_not_empty(kept, snapshot.num_rows, reasons)
        check_labels(unknown, schemas.active())
        writer.meta = {**snapshot.meta, "rows": kept, "dropped": snapshot.num_rows - kept, "dropped_by": reasons,
                       "missing_by_feature": missing}


def process(tree: StageTree) -> None:
    """Clean a row group at a time: memory stays at one row group whatever the data's size. With a cluster,
    the workers clean the row groups and the job writes what they made, in order."""
    schema = inputs.use_schema(tree)
    snapshot = dataset.Snapshot(tree.read("merged_data", contract.File), "merged_data")
    with cluster.attached() as dask:
        reasons = process_on(dask, tree, snapshot) if dask else None
    if reasons is not None:
        report(snapshot, reasons)
        return
    unknown: dict[str, int] = {}
    reasons = {}
    missing = dict.fromkeys(schema.features, 0)

    def cleaned():
        for table in snapshot.tables():
            kept, dropped, absent = clean_table(table, schema)
            add_counts(reasons, dropped)
            add_counts(missing, absent)
            add_counts(unknown, unknown_labels(kept.column(schema.label), schema))
            yield kept

    write_output(tree, snapshot, cleaned(), reasons, unknown, missing)
    report(snapshot, reasons)


def report(snapshot: dataset.Snapshot, reasons: dict[str, int]) -> None:
    dropped = sum(reasons.values())
    if dropped:
        log.warning("dropped %d of %d rows that cannot be trained on: %s", dropped, snapshot.num_rows,
                    dropped_words(reasons))
    log.info("processed %d rows into %d (%d dropped)", snapshot.num_rows, snapshot.num_rows - dropped, dropped)


def main() -> None:
    contract.main(process, outputs=["processed_data"])


if __name__ == "__main__":
    dataset.own_process()
    main()
