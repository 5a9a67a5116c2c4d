"""Stage train: processed_data, epochs, batch_size -> model (pickled scikit-learn pipeline), metrics, report.

Mini-batch training (a small neural network, updated batch by batch with `partial_fit`), so `epochs` and
`batch_size` mean what they say, as the seed's README asked, and each step touches one batch. `Id` is a key and
never a feature: in the seed's data it is sorted by species, so a model given it learns the row order.
The report is a self-contained HTML page; when MLFLOW_TRACKING_URI is set the run is mirrored in MLflow.
"""

from __future__ import annotations

import json
import logging
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from stageflow import contract, dataset, report, tracking
from stageflow.contract import StageError, Workflow, sha256_file
from stageflow.progress import Progress

log = logging.getLogger("stageflow")

SEED = 42
TEST_FRACTION = 0.2
HIDDEN = (16,)
LEARNING_RATE = 0.05  # with 10 epochs of 32-row batches on iris, 0.05 reaches 0.97 hold-out; 0.01 0.90
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 10_000_000
LOSS_CHUNK = 65_536  # rows per forward pass when computing the loss: a whole-set pass at 16M rows holds GBs


def check_params(epochs: int, batch_size: int) -> None:
    for name, value, limit in (("epochs", epochs, MAX_EPOCHS), ("batch_size", batch_size, MAX_BATCH_SIZE)):
        if value < 1:
            raise StageError(f"input {name}: must be at least 1, found {value}")
        if value > limit:
            raise StageError(f"input {name}: {value} is more than the limit of {limit}")


def to_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Features as one float64 matrix (filled a column at a time), labels as an object array that points
    at one string per class: 8 bytes a row, where a list of per-row strings costs GBs at 10M rows."""
    features = np.empty((table.num_rows, len(dataset.FEATURES)), dtype=np.float64)
    for i, name in enumerate(dataset.FEATURES):
        features[:, i] = table.column(name).to_numpy()
    labels = pc.cast(table.column(dataset.LABEL), dataset.LABEL_TYPE).unify_dictionaries().combine_chunks()
    names = np.asarray(labels.dictionary.to_pylist() + [None], dtype=object)  # the last one stands for null
    codes = labels.indices.to_numpy() if not labels.null_count else \
        pc.fill_null(labels.indices, len(labels.dictionary)).to_numpy()
    return features, names[codes]


def split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A stratified, seeded hold-out split, refused when the data cannot support one."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise StageError(f"input processed_data: only one class ({classes[0]}) is left; "
                         f"a classifier needs at least two")
    n_test = int(np.ceil(len(y) * TEST_FRACTION))
    if counts.min() < 2 or n_test < len(classes) or len(y) - n_test < len(classes):
        rare = classes[counts.argmin()]
        raise StageError(f"input processed_data: {len(y)} rows are too few for a stratified hold-out split "
                         f"({rare} has {counts.min()} row(s); every class needs at least 2 and the "
                         f"{TEST_FRACTION:.0%} test split at least one row per class)")
    return train_test_split(x, y, test_size=n_test, stratify=y, random_state=SEED)


def mean_log_loss(model: MLPClassifier, x: np.ndarray, codes: np.ndarray) -> float:
    """sklearn's log_loss (probabilities clipped to [eps, 1 - eps]), a chunk of rows at a time."""
    total = 0.0
    for start in range(0, len(codes), LOSS_CHUNK):
        proba = model.predict_proba(x[start:start + LOSS_CHUNK])
        picked = proba[np.arange(len(proba)), codes[start:start + LOSS_CHUNK]]
        eps = np.finfo(proba.dtype).eps
        total -= float(np.log(np.clip(picked, eps, 1 - eps)).sum())
    return total / len(codes)


def fit(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
        progress: Progress | None = None) -> tuple[Pipeline, list[float]]:
    """Standardise, then run `epochs` shuffled passes of `batch_size` rows; returns the loss per epoch."""
    classes = np.unique(y)
    scaler = StandardScaler().fit(x)
    scaled = scaler.transform(x)
    codes = np.searchsorted(classes, y)  # label -> column of predict_proba, once, for the loss
    model = MLPClassifier(hidden_layer_sizes=HIDDEN, learning_rate_init=LEARNING_RATE, random_state=SEED)
    rng = np.random.default_rng(SEED)
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            batch = order[start:start + batch_size]
            model.partial_fit(scaled[batch], y[batch], classes=classes)
        losses.append(mean_log_loss(model, scaled, codes))
        if progress:
            progress.step(epoch, loss=losses[-1])
    return Pipeline([("scale", scaler), ("classify", model)]), losses


def class_counts(**splits: np.ndarray) -> dict[str, dict[str, int]]:
    """Rows per class in each split, for the report's class balance."""
    return {name: {str(c): int(n) for c, n in zip(*np.unique(y, return_counts=True))} for name, y in splits.items()}


def evaluate(model: Pipeline, x: np.ndarray, y: np.ndarray) -> dict:
    classes = [str(c) for c in model.classes_]
    predicted = model.predict(x)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, labels=classes, average="macro", zero_division=0)),
        "classes": classes,
        "confusion_matrix": confusion_matrix(y, predicted, labels=classes).tolist(),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }


def train(wf: Workflow) -> None:
    table, _ = dataset.read(wf.read("processed_data", contract.File), "processed_data")
    epochs = wf.read("epochs", int)
    batch_size = wf.read("batch_size", int)
    check_params(epochs, batch_size)
    x, y = to_arrays(table)
    x_train, x_test, y_train, y_test = split(x, y)
    if batch_size > len(y_train):
        log.warning("batch_size %d is more than the %d training rows: each epoch is one full batch",
                    batch_size, len(y_train))
    started = time.perf_counter()
    model, losses = fit(x_train, y_train, epochs, batch_size, Progress(epochs))
    seconds = time.perf_counter() - started
    metrics = evaluate(model, x_test, y_test)
    # Feature names make the pickled pipeline refuse a DataFrame whose columns do not match.
    model.named_steps["scale"].feature_names_in_ = np.asarray(dataset.FEATURES, dtype=object)
    with wf.output_file("model") as tmp:
        with open(tmp, "wb") as handle:
            pickle.dump(model, handle, protocol=5)
        model_sha256 = sha256_file(tmp)
    params = {"epochs": epochs, "batch_size": batch_size, "effective_batch_size": min(batch_size, len(y_train)),
              "learning_rate": LEARNING_RATE, "hidden_layers": list(HIDDEN), "seed": SEED,
              "test_fraction": TEST_FRACTION}
    metrics.update(params)
    metrics.update({
        "n_train": len(y_train), "n_test": len(y_test), "seconds": round(seconds, 3), "loss_per_epoch": losses,
        "class_counts": class_counts(train=y_train, test=y_test), "feature_names": list(dataset.FEATURES),
        "model_sha256": model_sha256,
    })
    with wf.output_file("metrics") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    with wf.output_file("report") as tmp:
        tmp.write_text(report.training_report(metrics, params), encoding="utf-8")
    log.info("hold-out accuracy %.3f, macro F1 %.3f on %d rows", metrics["accuracy"], metrics["macro_f1"],
             len(y_test))
    if tracking.enabled():
        track(wf, metrics, params)


def track(wf: Workflow, metrics: dict, params: dict) -> str | None:
    """Mirror the run in MLflow: parameters, headline and per-class scores, the loss per epoch, the files."""
    scores = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "training_seconds": metrics["seconds"]}
    scores.update({f"{score}_{cls}": values[score] for cls, values in metrics["per_class"].items()
                   for score in ("precision", "recall", "f1")})
    return tracking.log_run(
        "train", {**params, "n_train": metrics["n_train"], "n_test": metrics["n_test"]}, scores,
        {"loss": metrics["loss_per_epoch"]},
        {"model.pkl": wf.outputs / "model", "metrics.json": wf.outputs / "metrics",
         "report.html": wf.outputs / "report"},
        {"stageflow.stage": "train", "model_sha256": metrics["model_sha256"]})


def main() -> None:
    contract.main(train, outputs=["model", "metrics", "report"])


if __name__ == "__main__":
    main()
