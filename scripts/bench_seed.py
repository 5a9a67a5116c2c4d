"""The seed-style stages, for the benchmark's baseline only: what the seed's scripts did, one process each.

    python scripts/bench_seed.py load SRC OUT.csv
    python scripts/bench_seed.py merge A.csv B.csv OUT.csv
    python scripts/bench_seed.py process IN.csv OUT.csv
    python scripts/bench_seed.py train IN.csv EPOCHS BATCH_SIZE OUT.pkl
    python scripts/bench_seed.py bare PROCESSED_PARQUET EPOCHS BATCH_SIZE   (prints the fit's seconds as JSON)

pandas `read_csv` / `to_csv` with CSV between stages, merge as a concat of A and B (the seed concatenated A
with itself, which is a bug, not a cost), process as a drop of the noise column. No checks, no metadata:
this is the cost the project's stages are measured against, not a second implementation of them.
Training fits the same estimator the train stage fits (`bare_fit`), so only the data path differs.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["SepalLengthCm", "SepalWidthCm", "PetalLengthCm", "PetalWidthCm"]


def train_stage():
    """The train stage's module, for its estimator settings (imported, not copied)."""
    if "stage_train" not in sys.modules:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        spec = importlib.util.spec_from_file_location("stage_train", ROOT / "stages" / "train" / "main.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["stage_train"]


def bare_fit(x, y, epochs: int, batch_size: int):
    """The estimator alone: standardise, then `epochs` shuffled passes of `batch_size`-row partial_fit calls.

    The same estimator, settings and batch order as the train stage's `fit`, minus what the stage adds
    around it (the loss per epoch, progress lines): the yardstick for the stage's overhead.
    """
    import numpy as np
    from sklearn.preprocessing import StandardScaler

    train = train_stage()
    classes = np.unique(y)
    scaled = StandardScaler().fit(x).transform(x)
    model = train.estimator(batch_size)
    rng = np.random.default_rng(train.SEED)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            batch = order[start:start + batch_size]
            model.partial_fit(scaled[batch], y[batch], classes=classes)
    return model


def bare(processed: str, epochs: str, batch_size: str) -> None:
    """Time the bare fit on the arrays the train stage builds from `processed` (same split), in a fresh
    process like the stage's own, so nothing the benchmark's process holds after running the flows (its
    heap, its threads) weighs on the loop; once, timed there, it came out 13% slower than the stage."""
    import json
    import time

    train = train_stage()  # puts the checkout on sys.path too
    from stageflow.runtime import dataset

    x, codes, names = train.to_arrays(dataset.Snapshot(Path(processed), "processed_data"))
    x_train, _, c_train, _ = train.split(x, codes, names)
    y_train = names[c_train]  # the text labels a user would hand the estimator
    del x, codes
    started, cpu = time.perf_counter(), time.process_time()
    bare_fit(x_train, y_train, int(epochs), int(batch_size))
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu}))


def main(argv: list[str]) -> None:
    import pandas as pd

    stage, *paths = argv
    if stage == "load":
        pd.read_csv(paths[0]).to_csv(paths[1], index=False)
    elif stage == "merge":
        pd.concat([pd.read_csv(paths[0]), pd.read_csv(paths[1])]).to_csv(paths[2], index=False)
    elif stage == "process":
        pd.read_csv(paths[0]).drop(columns=["RandomColumn"]).to_csv(paths[1], index=False)
    elif stage == "train":
        from sklearn.model_selection import train_test_split

        source, epochs, batch_size, out = paths
        df = pd.read_csv(source)
        x, y = df[FEATURES].to_numpy(), df["Species"].to_numpy()
        x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=42)
        model = bare_fit(x_train, y_train, int(epochs), int(batch_size))
        with open(out, "wb") as handle:
            pickle.dump(model, handle)
    elif stage == "bare":
        bare(*paths)
    else:
        raise SystemExit(f"unknown stage {stage!r}; expected load, merge, process, train or bare")


if __name__ == "__main__":
    main(sys.argv[1:])
