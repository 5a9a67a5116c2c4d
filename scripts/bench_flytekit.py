"""The peer the benchmark compares the whole flow with: the same five stages written as plain flytekit tasks,
pandas DataFrames between them (flytekit stores each as Parquet) and scikit-learn's own `fit`, run locally:

    pyflyte run scripts/bench_flytekit.py model_training --data_path_a A.csv --data_path_b B.csv \
        --epochs 10 --batch_size 32

What a data scientist would write without stageflow: no schema checks, no conflict check, no report. The
columns and label rules are the active schema's, and the network, split and labels match the train stage's,
so the work is the same.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pandas as pd
from flytekit import current_context, task, workflow
from flytekit.types.file import FlyteFile

from stageflow.runtime import schema as schemas



@task
def load_a(data_path: str) -> pd.DataFrame:
    return pd.read_csv(data_path)


@task
def load_b(data_path: str) -> pd.DataFrame:
    return pd.read_csv(data_path)


@task
def merge(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    key = schemas.active().key
    return pd.concat([a, b]).drop_duplicates(subset=key).sort_values(key, ignore_index=True)


@task
def process(merged: pd.DataFrame) -> pd.DataFrame:
    schema = schemas.active()
    df = merged.drop(columns=[name for name in schema.dropped if name in merged.columns]).dropna()
    labels = df[schema.label].astype(str)  # spelt by the schema's rules, each distinct label once
    df[schema.label] = labels.map({label: schema.canonical(label) for label in labels.unique()})
    return df


@task
def train(processed: pd.DataFrame, epochs: int, batch_size: int) -> tuple[FlyteFile, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    schema = schemas.active()
    x_train, x_test, y_train, y_test = train_test_split(
        processed[list(schema.features)].to_numpy(), processed[schema.label].to_numpy(), test_size=0.2,
        random_state=42, stratify=processed[schema.label])
    model = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(16,), learning_rate_init=0.05, batch_size=batch_size, max_iter=epochs, random_state=42))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    path = Path(current_context().working_directory) / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    return FlyteFile(str(path)), float(model.score(x_test, y_test))


@workflow
def model_training(data_path_a: str, data_path_b: str, epochs: int = 10,
                   batch_size: int = 32) -> tuple[FlyteFile, float]:
    merged = merge(a=load_a(data_path=data_path_a), b=load_b(data_path=data_path_b))
    return train(processed=process(merged=merged), epochs=epochs, batch_size=batch_size)
