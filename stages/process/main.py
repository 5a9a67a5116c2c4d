"""Stage process: merged_data -> processed_data, ready to train on.

Drops the seed's noise column, removes rows a model cannot use (and says how many, since a silent drop
hides a broken source), and brings labels to one spelling so `Iris-setosa ` and `setosa` are one class.
It streams: one row group in memory at a time.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from stageflow.runtime import contract, dataset
from stageflow.runtime.contract import StageError, StageTree

log = logging.getLogger("stageflow")


def _normalise_text(text: pa.Array) -> pa.Array:
    """Trim, lower-case, collapse inner whitespace and drop the `iris-` prefix of the Kaggle spelling."""
    text = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    text = pc.replace_substring_regex(text, pattern=r"\s+", replacement=" ")
    return pc.replace_substring_regex(text, pattern=r"^iris[-_ ]", replacement="")


def normalise_labels(labels: pa.ChunkedArray) -> pa.ChunkedArray:
    """Normalise each distinct label once (a dictionary holds a handful), then re-point every row at its
    normalised spelling; spellings that become equal (` Iris-Setosa`, `setosa`) become one entry."""
    chunks = []
    for chunk in pc.cast(labels, dataset.LABEL_TYPE).chunks:
        spelt = _normalise_text(chunk.dictionary)
        distinct = pc.unique(spelt)
        codes = pc.index_in(spelt, value_set=distinct).take(chunk.indices)
        chunks.append(pa.DictionaryArray.from_arrays(codes, distinct))
    return pa.chunked_array(chunks, type=dataset.LABEL_TYPE)


def unknown_labels(labels: pa.ChunkedArray) -> dict[str, int]:
    """Each label other than the known species, with its number of rows (nulls are not labels)."""
    counts = pc.value_counts(labels)
    values = pc.cast(counts.field("values"), pa.string()).to_pylist()
    found: dict[str, int] = {}
    for value, count in zip(values, counts.field("counts").to_pylist()):
        if value is not None and value not in dataset.SPECIES:
            found[value] = found.get(value, 0) + count
    return found


def check_labels(unknown: dict[str, int]) -> None:
    if unknown:
        shown = ", ".join(repr(v) for v in sorted(unknown)[:5])
        raise StageError(f"input merged_data: column {dataset.LABEL} has unknown label {shown} "
                         f"in {sum(unknown.values())} row(s); expected one of {', '.join(dataset.SPECIES)}")


def check_not_empty(kept: int, total: int) -> None:
    if kept == 0:
        raise StageError(f"input merged_data: all {total} rows have a missing or non-finite "
                         f"feature or label; nothing is left to train on")


def usable_rows(table: pa.Table) -> pa.ChunkedArray:
    """True where every feature is a finite number and the label is present."""
    keep = pc.is_valid(table.column(dataset.LABEL))
    for name in dataset.FEATURES:
        values = table.column(name)
        keep = pc.and_(keep, pc.and_kleene(pc.is_valid(values), pc.is_finite(values)))  # never null
    return keep


def clean_table(table: pa.Table) -> pa.Table:
    """Drop the noise column, normalise labels and keep the usable rows (the checks need every row group)."""
    if dataset.NOISE in table.column_names:
        table = table.drop_columns([dataset.NOISE])
    labels = normalise_labels(table.column(dataset.LABEL))
    table = table.set_column(table.schema.get_field_index(dataset.LABEL), dataset.LABEL, labels)
    return table.filter(usable_rows(table))


def process(tree: StageTree) -> None:
    """Clean a row group at a time: memory stays at one row group whatever the data's size."""
    snapshot = dataset.Snapshot(tree.read("merged_data", contract.File), "merged_data")
    unknown: dict[str, int] = {}
    with tree.output_file("processed_data") as tmp, dataset.Writer(tmp) as writer:
        for table in snapshot.tables():
            cleaned = clean_table(table)
            for label, count in unknown_labels(cleaned.column(dataset.LABEL)).items():
                unknown[label] = unknown.get(label, 0) + count
            writer.write(cleaned)
        kept = writer.rows
        check_not_empty(kept, snapshot.num_rows)
        check_labels(unknown)
        dropped = snapshot.num_rows - kept
        writer.meta = {**snapshot.meta, "rows": kept, "dropped": dropped}
    if dropped:
        log.warning("dropped %d of %d rows with a missing or non-finite feature or label",
                    dropped, snapshot.num_rows)
    log.info("processed %d rows into %d (%d dropped)", snapshot.num_rows, kept, dropped)


def main() -> None:
    contract.main(process, outputs=["processed_data"])


if __name__ == "__main__":
    main()
