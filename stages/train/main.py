"""Stage train: processed_data and the training settings -> model (skops), metrics (JSON), report (HTML).

Mini-batch training of a small neural network: each epoch a shuffled pass over the training set in gradient
steps of `batch_size` rows, so `epochs` and `batch_size` mean what they say, as the seed's README asked, at
the speed of scikit-learn's own `fit`. Every setting is an input (flow.py: learning rate, hidden layers, seed,
test fraction, early stopping), so changing one changes no image. `Id` is a key and never a feature: in the
seed's data it is sorted by species, so a model given it learns the row order.
The report is a self-contained HTML page; when MLFLOW_TRACKING_URI is set the run is mirrored in MLflow.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler
from sklearn.utils.multiclass import unique_labels

from stageflow.runtime import contract, dataset, inputs, modelfile, report, schema as schemas, tracking
from stageflow.runtime.contract import StageError, StageTree, sha256_file
from stageflow.runtime.progress import Progress

log = logging.getLogger("stageflow")

CHUNK = 65_536  # rows per forward pass in evaluation: a whole-set pass at 16M rows holds GBs
STEP_ROWS = 1_000_000  # rows per partial_fit call in training: its checks amortised, a slice of the set held
VALIDATION_FRACTION = 0.1  # of the training rows, held out for early stopping (scikit-learn's default)
TOLERANCE = 1e-4  # the least fall of the validation loss that counts as an improvement (scikit-learn's `tol`)
DENSE_CONFUSION = 50  # classes up to which metrics hold the whole confusion matrix; beyond, its nonzero cells
HEADLINE_CLASSES = 10  # classes up to which the headline names each one's F1
EPSILON = 1e-15  # probabilities are clipped to [EPSILON, 1 - EPSILON] in the log loss, as sklearn does


@dataclass(frozen=True)
class Settings:
    """The train task's inputs, each checked by its rule in stageflow.runtime.inputs (the runner checks the
    same ones before the first stage runs). Their defaults are flow.py's."""
    epochs: int
    batch_size: int
    learning_rate: float
    hidden_layers: tuple[int, ...]
    seed: int
    test_fraction: float
    early_stopping: int  # epochs without improvement of the validation loss before stopping; 0: off

    @classmethod
    def read(cls, tree: StageTree) -> "Settings":
        return cls(**{name: inputs.read(tree, name) for name in inputs.SETTINGS})


def to_arrays(snapshot: dataset.Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features as one float64 matrix and labels as integer codes into the sorted class names, filled a
    row group at a time: the whole table is never held (at 10M rows per source it alone is 0.85 GB).
    Codes, not text: sorting, counting and comparing text labels row by row cost seconds per million
    rows, codes milliseconds; and an array of strings costs 8 bytes a row. The names are text, or integers
    (sorted as numbers) where the schema's labels are integers."""
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
    if schema.label_type == "int":
        try:
            names = names.astype(np.int64)
        except (ValueError, OverflowError):
            raise StageError(f"input processed_data: column {schema.label} holds a label that is not a 64-bit "
                             f"integer, though label.type is \"int\"") from None
    order = np.argsort(names, kind="stable")  # the model's classes_ are sorted; so are the codes
    code_of = np.zeros(len(seen), dtype=np.int32)
    code_of[present[order]] = np.arange(len(order))
    return features, code_of[codes], names[order]


def held_out(codes: np.ndarray, n_classes: int, fraction: float, rng: np.random.Generator, least: int) -> np.ndarray:
    """A stratified, seeded mask of rows to hold out: `fraction` of each class's rows, rounded, at least
    `least` but never a class's last row. Drawn here, not with sklearn's train_test_split, whose index arrays
    peaked at 0.9 GB more than the data at 10M rows per source; this holds a mask and one sort of the codes,
    which groups each class's rows (in row order) for any number of classes."""
    counts = np.bincount(codes, minlength=n_classes)
    n_out = np.clip(np.round(counts * fraction).astype(np.int64), np.minimum(least, counts - 1), counts - 1)
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(counts)
    mask = np.zeros(len(codes), dtype=bool)
    for code, n in enumerate(n_out):
        if n:
            mask[rng.permutation(order[ends[code] - counts[code]:ends[code]])[:n]] = True
    return mask


def split(x: np.ndarray, codes: np.ndarray, names: np.ndarray, test_fraction: float, seed: int
          ) -> tuple[np.ndarray, ...]:
    """The hold-out split: `test_fraction` of each class's rows to test on, at least one, and one to train."""
    counts = np.bincount(codes, minlength=len(names))
    if len(names) < 2:
        raise StageError(f"input processed_data: only one class ({names[0]}) is left; "
                         f"a classifier needs at least two")
    if counts.min() < 2:
        raise StageError(f"input processed_data: {len(codes)} rows are too few for a stratified hold-out split "
                         f"({names[counts.argmin()]} has {counts.min()} row(s); every class needs at least 2, "
                         f"one to train on and one to test)")
    test = held_out(codes, len(names), test_fraction, np.random.default_rng(seed), least=1)
    return x[~test], x[test], codes[~test], codes[test]


def estimator(settings: Settings) -> MLPClassifier:
    """The network, set so that a `partial_fit` call steps through its rows in the order given, `batch_size`
    rows per gradient step (`fit` draws the order); the same with `max_iter` is sklearn's own `fit`."""
    return MLPClassifier(hidden_layer_sizes=settings.hidden_layers, learning_rate_init=settings.learning_rate,
                         random_state=settings.seed, batch_size=settings.batch_size, shuffle=False)


def log_loss(model: MLPClassifier, x: np.ndarray, codes: np.ndarray) -> float:
    """The mean cross-entropy of the model's probabilities on rows it did not train on (scaled already), in
    chunks; the training loss sklearn reports is the same plus its small L2 penalty."""
    total = 0.0
    for start in range(0, len(codes), CHUNK):
        proba = model.predict_proba(x[start:start + CHUNK])
        true = proba[np.arange(len(proba)), codes[start:start + CHUNK]]
        total -= float(np.log(np.clip(true, EPSILON, 1 - EPSILON)).sum())
    return total / len(codes)


@dataclass
class History:
    """What training did, epoch by epoch."""
    asked: int  # the epochs asked for
    loss: list[float] = field(default_factory=list)  # per epoch: sklearn's loss (log loss plus its L2 term)
    holdout: list[float] = field(default_factory=list)  # log loss on the hold-out rows after each epoch
    validation: list[float] = field(default_factory=list)  # log loss on the validation rows (early stopping)
    n_validation: int = 0
    best_epoch: int | None = None  # early stopping: the epoch whose weights the model keeps

    @property
    def stopped_early(self) -> bool:
        return len(self.loss) < self.asked


def fit(x: np.ndarray, codes: np.ndarray, names: np.ndarray, settings: Settings,
        holdout: tuple[np.ndarray, np.ndarray] | None = None, progress: Progress | None = None
        ) -> tuple[Pipeline, History]:
    """Standardise `x` and the hold-out rows (in place), then train up to `epochs` epochs, each a pass over
    the rows in a new seeded order in gradient steps of `batch_size` rows, as sklearn's own `fit` does; after
    each, the loss on the hold-out rows, when given. With early stopping, VALIDATION_FRACTION of the training rows are
    held out too, and training stops once their loss has not improved by TOLERANCE for `early_stopping`
    epochs, the model keeping the best epoch's weights (as sklearn's own early stopping does). The hold-out
    rows never steer training: stopping on them would make the hold-out scores look better than they are.

    The rows go to `partial_fit` in calls of about STEP_ROWS, gathered in the epoch's order, so that its
    steps are slices of them: sklearn's own shuffling indexes each batch out of the whole set, about 100 us
    a step (this loop takes 0.6x the CPU of `fit` at 32-row batches), holds three index arrays of the whole
    set (train's peak 0.23 GB higher at 10M rows per source) and, from an int seed, shuffles every call the
    same way. A call per batch paid sklearn's input checks on every step, 8x the step itself. An epoch's
    loss is its calls' losses weighted by rows: the row-weighted mean of its batches' losses, which is what
    `fit` reports.

    Labels go in as sklearn will predict them when they are integers. Text labels go in as small integer
    codes: sklearn checks and encodes the labels of every call, which for text costs 2.5 s per million rows
    as Python strings and 0.7 s as NumPy's fixed-width text, for uint8 codes or int64 0.15 s (measured
    here); the model is then given the names (`name_classes`), so it predicts them."""
    scaler = StandardScaler().fit(x)
    scaled = scaler.transform(x, copy=False)  # in place: a scaled copy would be 0.5 GB more at 10M rows
    if holdout is not None:
        holdout = (scaler.transform(holdout[0], copy=False), holdout[1])
    rng = np.random.default_rng(settings.seed)
    validation = None
    if settings.early_stopping:
        mask = held_out(codes, len(names), VALIDATION_FRACTION, rng, least=0)
        if not mask.any() or mask.all():
            raise StageError(f"input early_stopping: {len(codes)} training rows are too few to hold out "
                             f"{VALIDATION_FRACTION:g} of them for validation; train without early stopping")
        validation = (scaled[mask], codes[mask])
        scaled, codes = scaled[~mask], codes[~mask]
    if names.dtype.kind == "i":
        labels, classes = names[codes], names
    else:
        labels = codes.astype(np.min_scalar_type(len(names) - 1), copy=False)
        classes = np.arange(len(names), dtype=labels.dtype)
    model = estimator(settings)
    step = settings.batch_size * max(1, STEP_ROWS // settings.batch_size)
    history = History(settings.epochs, n_validation=0 if validation is None else len(validation[1]))
    best, since_best = (np.inf, None), 0
    with warnings.catch_warnings():
        # An epoch's last batch may be shorter than batch_size; sklearn warns that it clips.
        warnings.filterwarnings("ignore", message="Got `batch_size` less than 1 or larger than sample size")
        for epoch in range(1, settings.epochs + 1):
            order = rng.permutation(len(labels))
            total = 0.0
            for start in range(0, len(order), step):
                rows = order[start:start + step]
                model.partial_fit(scaled[rows], labels[rows], classes=classes)
                total += model.loss_ * len(rows)
            history.loss.append(total / len(labels))
            shown = {"loss": history.loss[-1]}
            if holdout is not None:
                history.holdout.append(log_loss(model, *holdout))
                shown["hold-out loss"] = history.holdout[-1]
            if validation is not None:
                history.validation.append(log_loss(model, *validation))
                shown["validation loss"] = history.validation[-1]
                # As sklearn counts: an epoch that does not beat the best by TOLERANCE counts towards
                # stopping; any that beats it is the new best, whose weights the model keeps.
                since_best = since_best + 1 if history.validation[-1] > best[0] - TOLERANCE else 0
                if history.validation[-1] < best[0]:
                    best = (history.validation[-1], epoch, [c.copy() for c in model.coefs_],
                            [i.copy() for i in model.intercepts_])
            if progress:
                progress.step(epoch, **shown)
            if validation is not None and since_best >= settings.early_stopping:
                break
    if validation is not None:
        _, history.best_epoch, model.coefs_, model.intercepts_ = best
        if history.stopped_early:
            log.info("early stopping: the validation loss has not improved for %d epochs; stopped after epoch %d "
                     "of %d, keeping epoch %d's weights", settings.early_stopping, len(history.loss),
                     settings.epochs, history.best_epoch)
    if names.dtype.kind != "i":
        name_classes(model, names)
    return Pipeline([("scale", scaler), ("classify", model)]), history


def name_classes(model: MLPClassifier, names: np.ndarray) -> None:
    """Make a model trained on codes 0..k-1 predict `names` (sorted, so code i is names[i]): the classifier
    maps its outputs to labels through `classes_` and its label binarizer, both set here as `partial_fit`
    sets them when given `classes=names`. The binarizer is private to sklearn, and only text labels need it:
    training on the text itself (no private attribute) cost 0.55 s more per million rows and epoch, which at
    1024-row batches is more than training (fit's `docs/performance.md` figures)."""
    model.classes_ = unique_labels(names)
    model._label_binarizer = LabelBinarizer().fit(names)


def class_counts(names: np.ndarray, **splits: np.ndarray) -> dict[str, dict[str, int]]:
    """Rows per class in each split, for the report's class balance."""
    return {split: {str(name): int(n) for name, n in zip(names, np.bincount(codes, minlength=len(names)))}
            for split, codes in splits.items()}


def evaluate(model, x: np.ndarray, codes: np.ndarray, names: np.ndarray) -> dict:
    """Scores of `model` (the pipeline, or its classifier given scaled rows) on the hold-out rows. The confusion matrix is whole up to DENSE_CONFUSION
    classes; beyond, its k x k cells would outgrow the data (1,500 classes: 2.25M cells, 20 MB of JSON), so
    only its nonzero cells are kept, [true, predicted, count] by class index: at most one per hold-out row."""
    labels = np.arange(len(names))
    predicted = np.concatenate([np.searchsorted(names, model.predict(x[start:start + CHUNK]))
                                for start in range(0, len(codes), CHUNK)])
    precision, recall, f1, support = precision_recall_fscore_support(codes, predicted, labels=labels,
                                                                     zero_division=0)
    classes = [str(name) for name in names]
    found = {
        "accuracy": float(np.mean(predicted == codes)),
        "macro_f1": float(f1.mean()),
        "classes": classes,
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }
    if len(names) <= DENSE_CONFUSION:
        found["confusion_matrix"] = confusion_matrix(codes, predicted, labels=labels).tolist()
    else:
        pairs, counts = np.unique(np.stack([codes, predicted]), axis=1, return_counts=True)
        found["confusion_nonzero"] = [[int(t), int(p), int(n)] for (t, p), n in zip(pairs.T, counts)]
    return found


def headline(metrics: dict) -> dict:
    """What the runner prints and the run report shows for this output, in this order, rounded for reading:
    each class's F1 up to HEADLINE_CLASSES classes, else the lowest (metrics.json has them all)."""
    found = {"hold-out accuracy": round(metrics["accuracy"], 3), "macro F1": round(metrics["macro_f1"], 3),
             "train rows": metrics["n_train"], "test rows": metrics["n_test"],
             "epochs": len(metrics["loss_per_epoch"]) if not metrics.get("stopped_early") else
             f"{len(metrics['loss_per_epoch'])} of {metrics['epochs']} (stopped early)",
             "final loss": round(metrics["loss_per_epoch"][-1], 4),
             "hold-out loss": round(metrics["holdout_loss_per_epoch"][-1], 4)}
    per_class = metrics["per_class"]
    if len(per_class) <= HEADLINE_CLASSES:
        found.update({f"F1 {name}": round(scores["f1"], 3) for name, scores in per_class.items()})
    else:
        lowest = min(per_class, key=lambda name: (per_class[name]["f1"], name))
        found[f"lowest F1 of {len(per_class):,} classes ({lowest})"] = round(per_class[lowest]["f1"], 3)
    return found


def feature_summary(x: np.ndarray, missing: dict[str, int]) -> dict[str, dict]:
    """Per feature, over the rows trained and tested on: range, mean and spread; and how many rows of the
    merged data lacked it (process drops those rows)."""
    schema = schemas.active()
    return {name: {"type": kind, "min": float(x[:, i].min()), "max": float(x[:, i].max()),
                   "mean": float(x[:, i].mean()), "std": float(x[:, i].std()), "missing": int(missing.get(name, 0))}
            for i, (name, kind) in enumerate(schema.features.items())}


def lineage(meta: dict) -> dict:
    """What the data stages recorded about the data (processed_data's metadata): each source's rows and
    sha256, the rows both held, those merged, those dropped and why."""
    return {"sources": meta.get("sources", []), "overlap": meta.get("overlap"),
            "merged_rows": meta["rows"] + meta.get("dropped", 0) if "rows" in meta else None,
            "rows": meta.get("rows"), "dropped": meta.get("dropped", 0), "dropped_by": meta.get("dropped_by", {})}


def train(tree: StageTree) -> None:
    schema = inputs.use_schema(tree)
    snapshot = dataset.Snapshot(tree.read("processed_data", contract.File), "processed_data")
    settings = Settings.read(tree)
    x, codes, names = to_arrays(snapshot)
    features = feature_summary(x, snapshot.meta.get("missing_by_feature", {}))
    x_train, x_test, c_train, c_test = split(x, codes, names, settings.test_fraction, settings.seed)
    del x, codes
    if settings.batch_size > len(c_train):
        log.warning("batch_size %d is more than the %d training rows: each epoch is one full batch",
                    settings.batch_size, len(c_train))
    counts = class_counts(names, train=c_train, test=c_test)
    example = example_rows(x_test[:5])
    started = time.perf_counter()
    model, history = fit(x_train, c_train, names, settings, (x_test, c_test), Progress(settings.epochs))
    seconds = time.perf_counter() - started
    del x_train
    metrics = evaluate(model.named_steps["classify"], x_test, c_test, names)  # x_test was scaled by fit
    # Feature names make the pipeline refuse a DataFrame whose columns are not exactly these, in this order.
    model.named_steps["scale"].feature_names_in_ = np.asarray(list(schema.features), dtype=object)
    with tree.output_file("model") as tmp:
        modelfile.save(model, tmp)
        model_sha256 = sha256_file(tmp)
    params = {**asdict(settings), "hidden_layers": list(settings.hidden_layers),
              "effective_batch_size": min(settings.batch_size, len(c_train))}
    if settings.early_stopping:
        params.update(validation_fraction=VALIDATION_FRACTION, tolerance=TOLERANCE)
    metrics.update(params)
    metrics.update({
        "n_train": len(c_train), "n_test": len(c_test), "seconds": round(seconds, 3),
        "loss_per_epoch": history.loss, "holdout_loss_per_epoch": history.holdout,
        **({"validation_loss_per_epoch": history.validation, "best_epoch": history.best_epoch,
            "n_validation": history.n_validation} if settings.early_stopping else {}),
        "stopped_early": history.stopped_early,
        "class_counts": counts, "feature_names": list(schema.features), "features": features,
        "label": {"column": schema.label, "type": schema.label_type},
        "data": lineage(snapshot.meta),
        "model": {"estimator": f"MLPClassifier(hidden_layer_sizes={inputs.layers_text(settings.hidden_layers)})",
                  "preprocessing": "StandardScaler", "format": modelfile.FORMAT,
                  "trusted_types": list(modelfile.TRUSTED_TYPES), "scikit_learn": sklearn.__version__},
        "scikit_learn_version": sklearn.__version__, "model_sha256": model_sha256,
    })
    metrics["headline"] = headline(metrics)
    with tree.output_file("report") as tmp:
        tmp.write_text(report.training_report(metrics), encoding="utf-8")
    log.info("hold-out accuracy %.3f, macro F1 %.3f on %d rows", metrics["accuracy"], metrics["macro_f1"],
             len(c_test))
    metrics["tracking"] = track(tree, metrics, model, example) if tracking.enabled() else tracking.off()
    with tree.output_file("metrics") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")


def example_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Rows by feature name, each column of its declared type: the example MLflow infers the model's signature
    from, so a served model takes an `int` feature as an integer (MLflow will not turn int64 into float64)."""
    return {name: x[:, i].astype(np.int64 if kind == "int" else np.float64)
            for i, (name, kind) in enumerate(schemas.active().features.items())}


def track(tree: StageTree, metrics: dict, model: Pipeline, rows: dict) -> dict:
    """Mirror the run in MLflow: parameters, headline and per-class scores, the losses per epoch, the files,
    the sources as datasets, and the model in MLflow's format with a few hold-out rows as its input example.
    What MLflow holds as metrics.json is these metrics before this step added where they were logged."""
    scores = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "training_seconds": metrics["seconds"]}
    if len(metrics["per_class"]) <= tracking.MAX_CLASS_METRICS:
        scores.update({f"{score}_{cls}": values[score] for cls, values in metrics["per_class"].items()
                       for score in ("precision", "recall", "f1")})
    params = {name: metrics[name] for name in ("epochs", "batch_size", "learning_rate", "seed", "test_fraction",
                                               "early_stopping", "n_train", "n_test")}
    params.update(hidden_layers=inputs.layers_text(tuple(metrics["hidden_layers"])),
                  scikit_learn=metrics["scikit_learn_version"], model_format=modelfile.FORMAT)
    series = {"loss": metrics["loss_per_epoch"], "holdout_loss": metrics["holdout_loss_per_epoch"]}
    if "validation_loss_per_epoch" in metrics:
        series["validation_loss"] = metrics["validation_loss_per_epoch"]
    with tempfile.TemporaryDirectory(prefix="train-metrics-") as tmp:
        copy = Path(tmp) / "metrics.json"
        copy.write_text(json.dumps(metrics, indent=2) + "\n")
        return tracking.log_run(
            "train", params, scores, series,
            {"model.skops": tree.outputs / "model", "metrics.json": copy, "report.html": tree.outputs / "report"},
            {"stageflow.stage": "train", "model_sha256": metrics["model_sha256"],
             **({"per_class_metrics": f"in metrics.json ({len(metrics['per_class']):,} classes)"}
                if len(metrics["per_class"]) > tracking.MAX_CLASS_METRICS else {})},
            model, rows, metrics["data"]["sources"])


def main() -> None:
    contract.main(train, outputs=["model", "metrics", "report"])


if __name__ == "__main__":
    main()
