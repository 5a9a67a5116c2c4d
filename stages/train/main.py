"""Stage train: processed_data, epochs, batch_size -> model (pickled scikit-learn pipeline), metrics, report.

Mini-batch training of a small neural network: each epoch a shuffled pass over the training set in gradient
steps of `batch_size` rows, so `epochs` and `batch_size` mean what they say, as the seed's README asked, at
the speed of scikit-learn's own `fit`. `Id` is a key and never a feature: in the seed's data it is sorted
by species, so a model given it learns the row order.
The report is a self-contained HTML page; when MLFLOW_TRACKING_URI is set the run is mirrored in MLflow.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import warnings

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler
from sklearn.utils.multiclass import unique_labels

from stageflow.runtime import contract, dataset, report, schema as schemas, tracking
from stageflow.runtime.contract import StageError, StageTree, sha256_file
from stageflow.runtime.progress import Progress

log = logging.getLogger("stageflow")

SEED = 42
TEST_FRACTION = 0.2
HIDDEN = (16,)
LEARNING_RATE = 0.05  # with 10 epochs of 32-row batches on iris, 0.05 reaches 0.97 hold-out; 0.01 0.90
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 10_000_000
CHUNK = 65_536  # rows per forward pass in evaluation: a whole-set pass at 16M rows holds GBs
STEP_ROWS = 1_000_000  # rows per partial_fit call in training: its checks amortised, a slice of the set held


def check_params(epochs: int, batch_size: int) -> None:
    for name, value, limit in (("epochs", epochs, MAX_EPOCHS), ("batch_size", batch_size, MAX_BATCH_SIZE)):
        if value < 1:
            raise StageError(f"input {name}: must be at least 1, found {value}")
        if value > limit:
            raise StageError(f"input {name}: {value} is more than the limit of {limit}")


def to_arrays(snapshot: dataset.Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features as one float64 matrix and labels as integer codes into the sorted class names, filled a
    row group at a time: the whole table is never held (at 10M rows per source it alone is 0.85 GB).
    Codes, not text: sorting, counting and comparing text labels row by row cost seconds per million
    rows, codes milliseconds; and an array of strings costs 8 bytes a row."""
    schema = schemas.active()
    features = np.empty((snapshot.num_rows, len(schema.features)), dtype=np.float64)
    codes = np.empty(snapshot.num_rows, dtype=np.int32)
    seen: dict[str, int] = {}  # label -> code, in order of first appearance
    start = 0
    for table in snapshot.tables():
        end = start + table.num_rows
        for i, name in enumerate(schema.features):
            features[start:end, i] = table.column(name).to_numpy()
        labels = table.column(schema.label).unify_dictionaries().combine_chunks()
        if labels.null_count:
            raise StageError(f"input processed_data: column {schema.label} is empty in {labels.null_count} "
                             f"row(s) from row {start + 1}")
        local = np.array([seen.setdefault(v, len(seen)) for v in labels.dictionary.to_pylist()], dtype=np.int32)
        codes[start:end] = local[labels.indices.to_numpy()]
        start = end
    present = np.flatnonzero(np.bincount(codes, minlength=len(seen)))  # a dictionary may list unused labels
    names = np.asarray(list(seen), dtype=object)[present]
    order = np.argsort(names)  # the model's classes_ are sorted; so are the codes
    code_of = np.zeros(len(seen), dtype=np.int32)
    code_of[present[order]] = np.arange(len(order))
    return features, code_of[codes], names[order]


def split(x: np.ndarray, codes: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, ...]:
    """A stratified, seeded hold-out split: TEST_FRACTION of each class's rows, rounded, but at least one
    to test and one to train on. Drawn here, not with sklearn's train_test_split, whose index arrays
    peaked at 0.9 GB more than the data at 10M rows per source; this holds a mask and one class's rows."""
    counts = np.bincount(codes, minlength=len(names))
    if len(names) < 2:
        raise StageError(f"input processed_data: only one class ({names[0]}) is left; "
                         f"a classifier needs at least two")
    if counts.min() < 2:
        raise StageError(f"input processed_data: {len(codes)} rows are too few for a stratified hold-out split "
                         f"({names[counts.argmin()]} has {counts.min()} row(s); every class needs at least 2, "
                         f"one to train on and one to test)")
    n_test = np.clip(np.round(counts * TEST_FRACTION).astype(np.int64), 1, counts - 1)
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(codes), dtype=bool)
    for code, n in enumerate(n_test):
        test[rng.permutation(np.flatnonzero(codes == code))[:n]] = True
    return x[~test], x[test], codes[~test], codes[test]


def estimator(batch_size: int) -> MLPClassifier:
    """The network, set so that a `partial_fit` call steps through its rows in the order given, `batch_size`
    rows per gradient step (`fit` draws the order); the same with `max_iter` is sklearn's own `fit`."""
    return MLPClassifier(hidden_layer_sizes=HIDDEN, learning_rate_init=LEARNING_RATE, random_state=SEED,
                         batch_size=batch_size, shuffle=False)


def fit(x: np.ndarray, codes: np.ndarray, names: np.ndarray, epochs: int, batch_size: int,
        progress: Progress | None = None) -> tuple[Pipeline, list[float]]:
    """Standardise `x` (in place), then train `epochs` epochs, each a pass over the rows in a new seeded
    order in gradient steps of `batch_size` rows, as sklearn's own `fit` does.

    The rows go to `partial_fit` in calls of about STEP_ROWS, gathered in the epoch's order, so that its
    steps are slices of them: sklearn's own shuffling indexes each batch out of the whole set, about 100 us
    a step (this loop takes 0.6x the CPU of `fit` at 32-row batches), holds three index arrays of the whole
    set (train's peak 0.23 GB higher at 10M rows per source) and, from an int seed, shuffles every call the
    same way. A call per batch paid sklearn's input checks on every step, 8x the step itself. An epoch's
    loss is its calls' losses weighted by rows: the row-weighted mean of its batches' losses, which is what
    `fit` reports.

    The labels go in as small integer codes: sklearn checks and encodes the labels of every call, which
    for text costs 1.7 s per million rows, for uint8 codes 0.05 s. The model is then given the class
    names (`name_classes`), so it predicts names."""
    scaler = StandardScaler().fit(x)
    scaled = scaler.transform(x, copy=False)  # in place: a scaled copy would be 0.5 GB more at 10M rows
    labels = codes.astype(np.min_scalar_type(len(names) - 1), copy=False)
    classes = np.arange(len(names), dtype=labels.dtype)
    model = estimator(batch_size)
    rng = np.random.default_rng(SEED)
    step = batch_size * max(1, STEP_ROWS // batch_size)
    losses: list[float] = []
    with warnings.catch_warnings():
        # An epoch's last batch may be shorter than batch_size; sklearn warns that it clips.
        warnings.filterwarnings("ignore", message="Got `batch_size` less than 1 or larger than sample size")
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(labels))
            total = 0.0
            for start in range(0, len(order), step):
                rows = order[start:start + step]
                model.partial_fit(scaled[rows], labels[rows], classes=classes)
                total += model.loss_ * len(rows)
            losses.append(total / len(labels))
            if progress:
                progress.step(epoch, loss=losses[-1])
    name_classes(model, names)
    return Pipeline([("scale", scaler), ("classify", model)]), losses


def name_classes(model: MLPClassifier, names: np.ndarray) -> None:
    """Make a model trained on codes 0..k-1 predict `names` (sorted, so code i is names[i]): the classifier
    maps its outputs to labels through `classes_` and its label binarizer, both set here as `partial_fit`
    sets them when given `classes=names`."""
    model.classes_ = unique_labels(names)
    model._label_binarizer = LabelBinarizer().fit(names)


def class_counts(names: np.ndarray, **splits: np.ndarray) -> dict[str, dict[str, int]]:
    """Rows per class in each split, for the report's class balance."""
    return {split: {str(name): int(n) for name, n in zip(names, np.bincount(codes, minlength=len(names)))}
            for split, codes in splits.items()}


def evaluate(model: Pipeline, x: np.ndarray, codes: np.ndarray, names: np.ndarray) -> dict:
    labels = np.arange(len(names))
    predicted = np.concatenate([np.searchsorted(names, model.predict(x[start:start + CHUNK]))
                                for start in range(0, len(codes), CHUNK)])
    precision, recall, f1, support = precision_recall_fscore_support(codes, predicted, labels=labels,
                                                                     zero_division=0)
    classes = [str(name) for name in names]
    return {
        "accuracy": float(np.mean(predicted == codes)),
        "macro_f1": float(f1.mean()),
        "classes": classes,
        "confusion_matrix": confusion_matrix(codes, predicted, labels=labels).tolist(),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }


def headline(metrics: dict) -> dict:
    """What the runner prints and the run report shows for this output, in this order, rounded for reading."""
    return {"hold-out accuracy": round(metrics["accuracy"], 3), "macro F1": round(metrics["macro_f1"], 3),
            "train rows": metrics["n_train"], "test rows": metrics["n_test"], "epochs": metrics["epochs"],
            "final loss": round(metrics["loss_per_epoch"][-1], 4),
            **{f"F1 {name}": round(scores["f1"], 3) for name, scores in metrics["per_class"].items()}}


def train(tree: StageTree) -> None:
    snapshot = dataset.Snapshot(tree.read("processed_data", contract.File), "processed_data")
    epochs = tree.read("epochs", int)
    batch_size = tree.read("batch_size", int)
    check_params(epochs, batch_size)
    x, codes, names = to_arrays(snapshot)
    x_train, x_test, c_train, c_test = split(x, codes, names)
    del x, codes
    if batch_size > len(c_train):
        log.warning("batch_size %d is more than the %d training rows: each epoch is one full batch",
                    batch_size, len(c_train))
    started = time.perf_counter()
    model, losses = fit(x_train, c_train, names, epochs, batch_size, Progress(epochs))
    seconds = time.perf_counter() - started
    del x_train
    metrics = evaluate(model, x_test, c_test, names)
    # Feature names make the pickled pipeline refuse a DataFrame whose columns do not match.
    features = list(schemas.active().features)
    model.named_steps["scale"].feature_names_in_ = np.asarray(features, dtype=object)
    with tree.output_file("model") as tmp:
        with open(tmp, "wb") as handle:
            pickle.dump(model, handle, protocol=5)
        model_sha256 = sha256_file(tmp)
    params = {"epochs": epochs, "batch_size": batch_size, "effective_batch_size": min(batch_size, len(c_train)),
              "learning_rate": LEARNING_RATE, "hidden_layers": list(HIDDEN), "seed": SEED,
              "test_fraction": TEST_FRACTION}
    metrics.update(params)
    metrics.update({
        "n_train": len(c_train), "n_test": len(c_test), "seconds": round(seconds, 3), "loss_per_epoch": losses,
        "class_counts": class_counts(names, train=c_train, test=c_test), "feature_names": features,
        "model_sha256": model_sha256,
    })
    metrics["headline"] = headline(metrics)
    with tree.output_file("metrics") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    with tree.output_file("report") as tmp:
        tmp.write_text(report.training_report(metrics, params), encoding="utf-8")
    log.info("hold-out accuracy %.3f, macro F1 %.3f on %d rows", metrics["accuracy"], metrics["macro_f1"],
             len(c_test))
    if tracking.enabled():
        track(tree, metrics, params, model, example_rows(x_test[:5]))


def example_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Rows by feature name, each column of its declared type: the example MLflow infers the model's signature
    from, so a served model takes an `int` feature as an integer (MLflow will not turn int64 into float64)."""
    return {name: x[:, i].astype(np.int64 if kind == "int" else np.float64)
            for i, (name, kind) in enumerate(schemas.active().features.items())}


def track(tree: StageTree, metrics: dict, params: dict, model: Pipeline, rows: dict) -> str | None:
    """Mirror the run in MLflow: parameters, headline and per-class scores, the loss per epoch, the files, and
    the model in MLflow's format with a few hold-out rows as its input example."""
    scores = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "training_seconds": metrics["seconds"]}
    scores.update({f"{score}_{cls}": values[score] for cls, values in metrics["per_class"].items()
                   for score in ("precision", "recall", "f1")})
    return tracking.log_run(
        "train", {**params, "n_train": metrics["n_train"], "n_test": metrics["n_test"]}, scores,
        {"loss": metrics["loss_per_epoch"]},
        {"model.pkl": tree.outputs / "model", "metrics.json": tree.outputs / "metrics",
         "report.html": tree.outputs / "report"},
        {"stageflow.stage": "train", "model_sha256": metrics["model_sha256"]}, model, rows)


def main() -> None:
    contract.main(train, outputs=["model", "metrics", "report"])


if __name__ == "__main__":
    main()
