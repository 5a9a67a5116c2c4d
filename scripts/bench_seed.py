"""The baselines the benchmark measures the flow against, each run as a process of its own:

    python scripts/bench_seed.py STAGE OUT NAME=VALUE...  (a seed-style stage, given its inputs by name)
    python scripts/bench_seed.py fit PROCESSED_PARQUET EPOCHS BATCH_SIZE   (prints the fit's seconds as JSON)

The seed-style stages are the seed's scripts: pandas `read_csv` / `to_csv` with CSV between stages, merge
as a concat of A and B (the seed concatenated A with itself, which is a bug, not a cost), process as a drop
of the schema's dropped columns (iris: the noise column), train as the seed's random forest on the schema's
features and label (it ignores epochs and batch size, as the seed did).
No checks, no metadata: the cost the project's stages are measured against, not a second implementation.

`fit` is what a user would write instead of the train stage: scikit-learn's own
`MLPClassifier(...).fit(X, y)` with the stage's network, epochs and batch size, on the very rows the stage
trains on (read and split by the stage's own functions) with their text labels, standardised first.
"""

from __future__ import annotations

import json
import pickle
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stageflow import registry  # noqa: E402
from stageflow.runtime import schema as schemas  # noqa: E402


def settings(train, epochs: int, batch_size: int):
    """The train stage's settings: flow.py's defaults, with these epochs and batch size."""
    from stageflow import dag
    from stageflow.runtime import inputs

    given = {**dag.load().defaults, "epochs": epochs, "batch_size": batch_size}
    return train.Settings(**{name: inputs.check(name, given[name]) for name in inputs.SETTINGS})


def user_network(train, settings):
    """The train stage's network as sklearn's own `fit` runs it: `epochs` shuffled passes."""
    return train.estimator(settings).set_params(max_iter=settings.epochs, shuffle=True)


def fit(processed: str, epochs: str, batch_size: str) -> None:
    """sklearn's own fit on the train stage's training rows, then the model saved as the stage saves it (skops:
    the format that loads without running code); prints the fit's wall and CPU seconds as JSON."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = registry.stage("train").module()
    from stageflow.runtime import dataset

    chosen = settings(train, int(epochs), int(batch_size))
    x, codes, names = train.to_arrays(dataset.Snapshot(Path(processed), "processed_data"))
    x_train, _, c_train, _ = train.split(x, codes, names, chosen.test_fraction, chosen.seed)
    y_train = names[c_train]  # the labels a user's DataFrame would hand the estimator
    del x, codes
    model = make_pipeline(StandardScaler(), user_network(train, chosen))
    started, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the epochs asked for, not a cap
        model.fit(x_train, y_train)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    import skops.io

    with tempfile.TemporaryDirectory() as folder:
        skops.io.dump(model, Path(folder) / "model.skops")
    print(json.dumps({"seconds": seconds, "cpu": cpu}))


def load(out: str, data_path: str) -> None:
    import pandas as pd

    pd.read_csv(data_path).to_csv(out, index=False)


def merge(out: str, datasetA: str, datasetB: str) -> None:  # noqa: N803 - the flow's input names
    import pandas as pd

    pd.concat([pd.read_csv(datasetA), pd.read_csv(datasetB)]).to_csv(out, index=False)


def process(out: str, merged_data: str) -> None:
    import pandas as pd

    df = pd.read_csv(merged_data)
    df.drop(columns=[name for name in schemas.active().dropped if name in df.columns]).to_csv(out, index=False)


def train(out: str, processed_data: str, epochs: str, batch_size: str, learning_rate: str, hidden_layers: str,
          seed: str, test_fraction: str, early_stopping: str) -> None:
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    schema = schemas.active()
    df = pd.read_csv(processed_data)
    x_train, _, y_train, _ = train_test_split(df[list(schema.features)], df[schema.label],
                                              test_size=float(test_fraction), random_state=int(seed))
    model = RandomForestClassifier(random_state=int(seed)).fit(x_train, y_train)
    with open(out, "wb") as handle:
        pickle.dump(model, handle)


SEED_STAGES = {"load_a": load, "load_b": load, "merge": merge, "process": process, "train": train}


def main(argv: list[str]) -> None:
    stage, *args = argv
    if stage == "fit":
        return fit(*args)
    if stage not in SEED_STAGES:
        raise SystemExit(f"unknown stage {stage!r}; expected fit or one of {', '.join(SEED_STAGES)}")
    out, *inputs = args
    SEED_STAGES[stage](out, **dict(pair.split("=", 1) for pair in inputs))


if __name__ == "__main__":
    main(sys.argv[1:])
