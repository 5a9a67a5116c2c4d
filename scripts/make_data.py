"""Make the bundled sample sources from scikit-learn's own copies of two real data sets (no download needed).

    scripts/make_data.py                       both samples: data/ (iris) and examples/wine/
    scripts/make_data.py --schema PATH [--out DIR]

Each sample belongs to a schema: its rows take that schema's column names and types, and its two sources go
where the schema's [samples] table says (or into DIR), in the format their extension names. The rows are split
as in the seed: the first half is source A, the second source B, so the flow merges two real sources of two
formats.
  - iris (schema.toml): the seed's layout, with its noise column between the features and the Kaggle spelling
    of the labels (`Iris-setosa`) that process normalises; A is CSV, B JSON Lines.
  - wine (examples/wine/schema.toml): 13 measurements of 178 wines from three cultivars, labelled 1, 2, 3 as in
    the UCI file scikit-learn copied; A is CSV, B Parquet, so the labels arrive as text in one and as integers
    in the other.
Run again to check the committed files: the output is deterministic.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_iris, load_wine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stageflow.runtime import schema as schemas  # noqa: E402


def iris_rows(schema: schemas.Schema) -> list[dict]:
    iris = load_iris()
    noise = np.random.default_rng(7).normal(0.0, 1.0, len(iris.target))
    sepal_l, sepal_w, petal_l, petal_w = schema.features
    (noise_column,) = schema.dropped
    rows = []
    for i, (features, target) in enumerate(zip(iris.data, iris.target)):
        values = [round(float(v), 1) for v in features]
        rows.append({schema.key: i + 1, sepal_l: values[0], sepal_w: values[1],
                     noise_column: round(float(noise[i]), 4), petal_l: values[2], petal_w: values[3],
                     schema.label: f"Iris-{iris.target_names[target]}"})
    return rows


def wine_rows(schema: schemas.Schema) -> list[dict]:
    wine = load_wine()
    rows = []
    for i, (features, target) in enumerate(zip(wine.data, wine.target)):
        row = {schema.key: i + 1}
        row.update({name: int(v) if kind == "int" else float(v)
                    for (name, kind), v in zip(schema.features.items(), features)})
        row[schema.label] = int(target) + 1  # the UCI file's class numbers
        rows.append(row)
    return rows


SAMPLES = {ROOT / "schema.toml": (load_iris, iris_rows),
           ROOT / "examples" / "wine" / "schema.toml": (load_wine, wine_rows)}


def write(path: Path, rows: list[dict]) -> None:
    """`rows` in the format `path`'s extension names."""
    if path.suffix == ".csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise SystemExit(f"error: {path}: the generator writes .csv, .jsonl or .parquet")


def make(schema_path: Path, out: Path | None = None) -> list[Path]:
    """Write the two sample sources of the schema at `schema_path` (into `out` when given)."""
    schema_path = schema_path.absolute()
    if schema_path not in SAMPLES:
        raise SystemExit(f"error: no bundled sample for {schema_path}; samples exist for "
                         f"{', '.join(str(p.relative_to(ROOT)) for p in SAMPLES)}")
    schema = schemas.load(schema_path)
    loader, build = SAMPLES[schema_path]
    if len(schema.features) != loader().data.shape[1]:
        raise SystemExit(f"error: {schema_path} declares {len(schema.features)} features; scikit-learn's "
                         f"{loader.__name__[5:]} data has {loader().data.shape[1]}")
    rows = build(schema)
    half = len(rows) // 2
    written = []
    for (name, path), part in zip(sorted(schema.samples.items()), (rows[:half], rows[half:])):
        target = out / path.name if out else path
        write(target, part)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", type=Path, help="one sample's schema (default: every bundled sample)")
    parser.add_argument("--out", type=Path, help="write the sources here instead of where the schema says")
    args = parser.parse_args(argv)
    for schema_path in [args.schema] if args.schema else SAMPLES:
        for path in make(schema_path, args.out):
            print(path)


if __name__ == "__main__":
    main()
