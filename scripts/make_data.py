"""Make the bundled sample sources from scikit-learn's copy of the iris data (no download needed).

The 150 real rows are split as in the seed: Ids 1-75 become source A (CSV) and Ids 76-150 source B
(JSON Lines), each with the seed's noise column, so the flow merges two real sources of two formats.
Labels use the Kaggle spelling (`Iris-setosa`) that the seed's data had; process normalises them.
Run again to check the committed files: the output is deterministic.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

COLUMNS = ["Id", "SepalLengthCm", "SepalWidthCm", "RandomColumn", "PetalLengthCm", "PetalWidthCm", "Species"]


def rows() -> list[dict]:
    iris = load_iris()
    noise = np.random.default_rng(7).normal(0.0, 1.0, len(iris.target))
    out = []
    for i, (features, target) in enumerate(zip(iris.data, iris.target)):
        sepal_l, sepal_w, petal_l, petal_w = (round(float(v), 1) for v in features)
        out.append({"Id": i + 1, "SepalLengthCm": sepal_l, "SepalWidthCm": sepal_w,
                    "RandomColumn": round(float(noise[i]), 4), "PetalLengthCm": petal_l,
                    "PetalWidthCm": petal_w, "Species": f"Iris-{iris.target_names[target]}"})
    return out


def main(out_dir: Path) -> None:
    data = rows()
    with open(out_dir / "source_a.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(data[:75])
    with open(out_dir / "source_b.jsonl", "w") as handle:
        for row in data[75:]:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "data")
