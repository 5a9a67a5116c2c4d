"""Stage process: merged_data -> processed_data, ready to train on.

Drops the seed's noise column, removes rows a model cannot use (and says how many, since a silent drop
hides a broken source), and brings labels to one spelling so `Iris-setosa ` and `setosa` are one class.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from stageflow import contract, dataset
from stageflow.contract import StageError, Workflow

log = logging.getLogger("stageflow")


def normalise_labels(labels: pa.ChunkedArray) -> pa.ChunkedArray:
    """Trim, lower-case, collapse inner whitespace and drop the `iris-` prefix of the Kaggle spelling."""
    text = pc.utf8_lower(pc.utf8_trim_whitespace(labels))
    text = pc.replace_substring_regex(text, pattern=r"\s+", replacement=" ")
    return pc.replace_substring_regex(text, pattern=r"^iris[-_ ]", replacement="")


def check_labels(labels: pa.ChunkedArray) -> None:
    unknown = pc.filter(labels, pc.invert(pc.is_in(labels, value_set=pa.array(dataset.SPECIES))))
    if len(unknown):
        shown = ", ".join(repr(v) for v in sorted(set(unknown.to_pylist()))[:5])
        raise StageError(f"input merged_data: column {dataset.LABEL} has unknown label {shown} "
                         f"in {len(unknown)} row(s); expected one of {', '.join(dataset.SPECIES)}")


def usable_rows(table: pa.Table) -> pa.ChunkedArray:
    """True where every feature is a finite number and the label is present."""
    keep = pc.is_valid(table.column(dataset.LABEL))
    for name in dataset.FEATURES:
        keep = pc.and_(keep, pc.fill_null(pc.is_finite(table.column(name)), False))
    return keep


def process_table(table: pa.Table) -> tuple[pa.Table, int]:
    """Return the cleaned table and how many rows were dropped."""
    if dataset.NOISE in table.column_names:
        table = table.drop_columns([dataset.NOISE])
    labels = normalise_labels(table.column(dataset.LABEL))
    table = table.set_column(table.schema.get_field_index(dataset.LABEL), dataset.LABEL, labels)
    keep = usable_rows(table)
    cleaned = table.filter(keep)
    dropped = table.num_rows - cleaned.num_rows
    if cleaned.num_rows == 0:
        raise StageError(f"input merged_data: all {table.num_rows} rows have a missing or non-finite "
                         f"feature or label; nothing is left to train on")
    check_labels(cleaned.column(dataset.LABEL))
    return cleaned, dropped


def process(wf: Workflow) -> None:
    table, meta = dataset.read(wf.read("merged_data", contract.File), "merged_data")
    cleaned, dropped = process_table(table)
    if dropped:
        log.warning("dropped %d of %d rows with a missing or non-finite feature or label",
                    dropped, table.num_rows)
    meta = {**meta, "rows": cleaned.num_rows, "dropped": dropped}
    with wf.output_file("processed_data") as tmp:
        dataset.write(cleaned, tmp, meta)
    log.info("processed %d rows into %d (%d dropped)", table.num_rows, cleaned.num_rows, dropped)


def main() -> None:
    contract.main(process, outputs=["processed_data"])


if __name__ == "__main__":
    main()
