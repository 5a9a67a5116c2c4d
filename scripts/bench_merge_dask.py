"""The bench's Dask contender for merge: the stage's work written with dask.dataframe on one machine.

    python scripts/bench_merge_dask.py DATASET_A DATASET_B OUT

What a user would write with Dask's own shuffle instead of the stage's engine: each snapshot's row groups
read through the stage's checks (dataset.conform), Ids both hold counted and compared, A plus B's rows whose
Id A lacks sorted by Id (`sort_values`, Dask's disk-backed shuffle on the threaded scheduler, the one
Dask offers for data larger than memory without a cluster), written as a snapshot. Temporary files go
beside OUT. It prints one JSON line: rows, Ids in both, Ids that differ. (scripts/bench.py runs it beside
the merge stage; a later issue puts Dask on a cluster, where `shuffle_method="p2p"` is the one to use.)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stageflow.runtime import dataset  # noqa: E402

SHUFFLE = "disk"  # Dask's shuffle for data larger than memory on one machine (partd files in a temporary directory)


def row_group(path: str, name: str, group: int, names: list[str]) -> pd.DataFrame:
    """One row group, checked and cast as the stage does, labels as text (categories differ per group)."""
    table = dataset.Snapshot(Path(path), name).file.read_row_group(group).replace_schema_metadata(None)
    table = dataset.conform(table, f"input {name}").select(names)
    label = table.schema.get_field_index(dataset.label())
    table = table.set_column(label, dataset.label(), pc.cast(table.column(label), pa.string()))
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def frame(path: str, name: str, names: list[str]) -> dd.DataFrame:
    groups = dataset.Snapshot(Path(path), name).file.num_row_groups
    meta = row_group(path, name, 0, names).iloc[:0]
    return dd.from_map(row_group, [path] * groups, [name] * groups, range(groups), [names] * groups, meta=meta)


def main(path_a: str, path_b: str, out: Path) -> None:
    snapshots = dataset.Snapshot(Path(path_a), "datasetA"), dataset.Snapshot(Path(path_b), "datasetB")
    names = [n for n in snapshots[0].empty().column_names if n in snapshots[1].empty().column_names]
    key = dataset.key()
    scratch = Path(tempfile.mkdtemp(prefix=".merge-dask-", dir=out.parent))
    try:
        with dask.config.set({"temporary_directory": str(scratch), "scheduler": "threads"}):
            a, b = frame(path_a, "datasetA", names), frame(path_b, "datasetB", names)
            both = a.merge(b, on=key, suffixes=("", "__b"), shuffle_method=SHUFFLE)
            differs = None
            for name in names[1:]:
                left, right = both[name], both[f"{name}__b"]
                column = ~((left == right).fillna(False) | (left.isna() & right.isna()))
                differs = column if differs is None else differs | column
            overlap, conflicts = dask.compute(both.shape[0], differs.sum())
            if conflicts:
                raise SystemExit(f"bench_merge_dask: {conflicts} Ids have different values in A and B")
            in_a = b.merge(a[[key]].assign(in_a=True), on=key, how="left", shuffle_method=SHUFFLE)
            union = dd.concat([a, in_a[in_a.in_a.isna()].drop(columns="in_a")]).sort_values(key, shuffle_method=SHUFFLE)
            union.to_parquet(scratch / "sorted", write_index=False)
        schema = snapshots[0].empty().select(names).schema
        parts = sorted((scratch / "sorted").glob("*.parquet"), key=lambda p: int(p.stem.split(".")[-1]))
        with dataset.Writer(out, schema) as writer:
            for part in parts:
                table = pq.read_table(part).replace_schema_metadata(None).select(names)
                label = table.schema.get_field_index(dataset.label())
                table = table.set_column(label, dataset.label(), pc.cast(table.column(label), dataset.LABEL_TYPE))
                writer.write(table.cast(schema))
            writer.meta = {"rows": writer.rows, "overlap": int(overlap)}
        print(json.dumps({"rows": writer.rows, "overlap": int(overlap), "conflicts": int(conflicts)}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
