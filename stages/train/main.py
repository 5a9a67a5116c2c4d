"""Stage train: processed_data and the training settings -> model (skops), metrics (JSON), report (HTML).

Mini-batch training of a small neural network: each epoch a shuffled pass over the training set in gradient
steps of `batch_size` rows, so `epochs` and `batch_size` mean what they say, as the seed's README asked, at
the speed of scikit-learn's own `fit`. Every setting is an input (flow.py: learning rate, hidden layers, seed,
test fraction, early stopping), so changing one changes no image. `Id` is a key and never a feature: in the
seed's data it is sorted by species, so a model given it learns the row order.
The report is a self-contained HTML page; when MLFLOW_TRACKING_URI is set the run is mirrored in MLflow.

Data that fits is held in memory (`InMemory`); past that it is streamed (`Streamed`), a row group at a time,
and memory no longer grows with the rows. Which one: the in-memory path's estimated peak (`in_memory_bytes`,
fitted to measured peaks) against the memory the stage may use (`memory_budget`): STAGEFLOW_TRAIN_MEMORY when
set, else the container's memory limit (what Domino and the docker backend give the job: its hardware tier's
memory), else the machine's. Both feed the one training loop (`learn`) through scikit-learn's own incremental
path, `MLPClassifier.partial_fit`, which the loop used already: it needs nothing but the rows of each call.
dask-ml's `Incremental` would call the same `partial_fit` on each block of a dask array, one block at a time,
so it adds a cluster or scheduler to run and a library that is not in the lock, for no other step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from stageflow.runtime import cluster, tracking

if __name__ == "__main__" and not tracking.enabled():
    # Before scikit-learn, which imports pandas wherever it is installed (0.36 s of a small run): here only
    # MLflow's logging uses it.
    cluster.keep_pandas_out()

import sklearn  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import LabelBinarizer, StandardScaler  # noqa: E402
from sklearn.utils.multiclass import unique_labels  # noqa: E402

from stageflow.runtime import contract, dataset, inputs, modelfile, report, schema as schemas  # noqa: E402
from stageflow.runtime.contract import StageError, StageTree, sha256_file  # noqa: E402
from stageflow.runtime.progress import Progress  # noqa: E402

log = logging.getLogger("stageflow")

CHUNK = 65_536  # rows per forward pass in evaluation: a whole-set pass at 16M rows holds GBs
STEP_ROWS = 1_000_000  # rows per partial_fit call in training: its checks amortised, a slice of the set held
VALIDATION_FRACTION = 0.1  # of the training rows, held out for early stopping (scikit-learn's default)
TOLERANCE = 1e-4  # the least fall of the validation loss that counts as an improvement (scikit-learn's `tol`)
DENSE_CONFUSION = 50  # classes up to which metrics hold the whole confusion matrix; beyond, its nonzero cells
HEADLINE_CLASSES = 10  # classes up to which the headline names each one's F1
EPSILON = 1e-15  # probabilities are clipped to [EPSILON, 1 - EPSILON] in the log loss, as sklearn does
MEMORY_ENV = "STAGEFLOW_TRAIN_MEMORY"  # bytes train may use (k, m, g suffixes): sets which path it takes
BASE_BYTES = 400 << 20  # the in-memory path's peak without rows: Python, NumPy, scikit-learn, a row group read
HEADROOM = 0.75  # the in-memory path is taken while its estimate is at most this share of the budget
WINDOW_ROWS = 2_000_000  # streaming: rows of consecutive row groups (in the epoch's order) mixed and held at once
MIXED = 1.0  # streaming warns when a row group's class shares differ from the whole's by more (in sum; 2 at most)
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


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


def memory_budget(environ=os.environ) -> tuple[int, str]:
    """The bytes train may use, and where that figure came from: MEMORY_ENV when set, else the cgroup's limit
    (a container's: on Domino and with the docker backend, the hardware tier's memory), else the machine's
    memory. The limit, not what is free now: the tier is what the job was given, and free memory on a shared
    host changes from one second to the next."""
    text = environ.get(MEMORY_ENV, "").strip()
    if text:
        found = re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", text.lower())
        if not found or not int(found[1]):
            raise StageError(f"{MEMORY_ENV}: expected a number of bytes above 0 with an optional k, m or g "
                             f"suffix (such as 8g), found {text!r}")
        return int(found[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[found[2]], MEMORY_ENV
    found = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's memory")
    for path in CGROUP_LIMITS:
        try:
            limit = int(Path(path).read_text().strip())
        except (OSError, ValueError):  # absent, or "max": no limit there
            continue
        found = min(found, (limit, f"its memory limit, {path}"))
    return found


def in_memory_bytes(rows: int, n_features: int) -> int:
    """The in-memory path's estimated peak: BASE_BYTES, and per row its features twice (the matrix read, then
    the split's two halves) with its code, mask and order (measured: 521 MiB at 2M rows, 1,678 MiB at 20M,
    four features; this says 553 and 1,926)."""
    return BASE_BYTES + rows * (16 * n_features + 16)


def feature_matrix(table, out: np.ndarray | None = None) -> np.ndarray:
    """A table's features as one float64 matrix (into `out` when given)."""
    names = schemas.active().features
    if out is None:
        out = np.empty((table.num_rows, len(names)), dtype=np.float64)
    for i, name in enumerate(names):
        out[:, i] = table.column(name).to_numpy()
    return out


class Labels:
    """Labels as integer codes, the same in every row group: first codes in order of first appearance, which
    `sort` then maps to the sorted class names. Codes, not text: sorting, counting and comparing text labels
    row by row cost seconds per million rows, codes milliseconds; and an array of strings costs 8 bytes a row.
    The names are text, or integers (sorted as numbers) where the schema's labels are integers."""

    def __init__(self) -> None:
        self.seen: dict = {}  # label -> code, in order of first appearance

    def codes(self, table, first_row: int) -> np.ndarray:
        label = schemas.active().label
        labels = table.column(label).unify_dictionaries().combine_chunks()
        if labels.null_count:
            raise StageError(f"input processed_data: column {label} is empty in {labels.null_count} "
                             f"row(s) from row {first_row + 1}")
        local = np.array([self.seen.setdefault(v, len(self.seen)) for v in labels.dictionary.to_pylist()],
                         dtype=np.int32)
        return local[labels.indices.to_numpy()]

    def sort(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From rows per first code: each first code's code into the sorted names of the labels rows use (a
        dictionary may list unused ones), and those names."""
        schema = schemas.active()
        present = np.flatnonzero(counts)
        names = np.asarray(list(self.seen), dtype=object)[present]
        if schema.label_type == "int":
            try:
                names = names.astype(np.int64)
            except (ValueError, OverflowError):
                raise StageError(f"input processed_data: column {schema.label} holds a label that is not a 64-bit "
                                 f"integer, though label.type is \"int\"") from None
        order = np.argsort(names, kind="stable")  # the model's classes_ are sorted; so are the codes
        code_of = np.zeros(len(self.seen), dtype=np.int32)
        code_of[present[order]] = np.arange(len(order))
        return code_of, names[order]


def to_arrays(snapshot: dataset.Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features as one float64 matrix and labels as integer codes into the sorted class names, filled a
    row group at a time: the whole table is never held (at 10M rows per source it alone is 0.85 GB)."""
    features = np.empty((snapshot.num_rows, len(schemas.active().features)), dtype=np.float64)
    codes = np.empty(snapshot.num_rows, dtype=np.int32)
    labels = Labels()
    start = 0
    for table in snapshot.tables():
        end = start + table.num_rows
        feature_matrix(table, features[start:end])
        codes[start:end] = labels.codes(table, start)
        start = end
    code_of, names = labels.sort(np.bincount(codes, minlength=len(labels.seen)))
    return features, code_of[codes], names


def quota(counts: np.ndarray, fraction: float, least: int) -> np.ndarray:
    """Rows to hold out of each class: `fraction` of its rows, rounded, at least `least` but never its last."""
    return np.clip(np.round(counts * fraction).astype(np.int64), np.minimum(least, counts - 1), counts - 1)


def pick(codes: np.ndarray, n_out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded mask of `n_out[c]` rows of each class c. Drawn here, not with sklearn's train_test_split, whose
    index arrays peaked at 0.9 GB more than the data at 10M rows per source; this holds a mask and one sort of
    the codes, which groups each class's rows (in row order) for any number of classes."""
    counts = np.bincount(codes, minlength=len(n_out))
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(counts)
    mask = np.zeros(len(codes), dtype=bool)
    for code, n in enumerate(n_out):
        if n:
            mask[rng.permutation(order[ends[code] - counts[code]:ends[code]])[:n]] = True
    return mask


def held_out(codes: np.ndarray, n_classes: int, fraction: float, rng: np.random.Generator, least: int) -> np.ndarray:
    """A stratified, seeded mask of rows to hold out (`quota` of each class)."""
    return pick(codes, quota(np.bincount(codes, minlength=n_classes), fraction, least), rng)


def spread(per_group: np.ndarray, n_out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How many of each class's rows each row group holds out, from rows per group and class: for each class a
    uniform draw of `n_out` of its rows, counted per group (a multivariate hypergeometric draw), so the
    streamed split holds out as many rows of each class as the in-memory one, drawn as evenly."""
    out = np.zeros_like(per_group)
    for code, n in enumerate(n_out):
        if n > 0:
            out[:, code] = rng.multivariate_hypergeometric(per_group[:, code], int(n), method="marginals")
    return out


def check_classes(counts: np.ndarray, names: np.ndarray) -> None:
    """What a stratified hold-out split needs: two classes, and two rows of each (one to train, one to test)."""
    if len(names) < 2:
        raise StageError(f"input processed_data: only one class ({names[0]}) is left; "
                         f"a classifier needs at least two")
    if counts.min() < 2:
        raise StageError(f"input processed_data: {counts.sum()} rows are too few for a stratified hold-out split "
                         f"({names[counts.argmin()]} has {counts.min()} row(s); every class needs at least 2, "
                         f"one to train on and one to test)")


def split(x: np.ndarray, codes: np.ndarray, names: np.ndarray, test_fraction: float, seed: int
          ) -> tuple[np.ndarray, ...]:
    """The hold-out split: `test_fraction` of each class's rows to test on, at least one, and one to train."""
    check_classes(np.bincount(codes, minlength=len(names)), names)
    test = held_out(codes, len(names), test_fraction, np.random.default_rng(seed), least=1)
    return x[~test], x[test], codes[~test], codes[test]


def estimator(settings: Settings) -> MLPClassifier:
    """The network, set so that a `partial_fit` call steps through its rows in the order given, `batch_size`
    rows per gradient step (`fit` draws the order); the same with `max_iter` is sklearn's own `fit`."""
    return MLPClassifier(hidden_layer_sizes=settings.hidden_layers, learning_rate_init=settings.learning_rate,
                         random_state=settings.seed, batch_size=settings.batch_size, shuffle=False)


def as_labels(codes: np.ndarray, names: np.ndarray) -> np.ndarray:
    """The labels `partial_fit` is given for `codes`: the labels themselves when they are integers, else the
    codes, small (see `learn`)."""
    if names.dtype.kind == "i":
        return names[codes]
    return codes.astype(np.min_scalar_type(len(names) - 1), copy=False)


def chunks(x: np.ndarray, codes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(codes), CHUNK):
        yield x[start:start + CHUNK], codes[start:start + CHUNK]


def log_loss(model: MLPClassifier, rows: Iterator[tuple[np.ndarray, np.ndarray]]) -> float:
    """The mean cross-entropy of the model's probabilities on rows it did not train on (scaled already, in
    chunks); the training loss sklearn reports is the same plus its small L2 penalty."""
    total, n = 0.0, 0
    for x, codes in rows:
        proba = model.predict_proba(x)
        total -= float(np.log(np.clip(proba[np.arange(len(proba)), codes], EPSILON, 1 - EPSILON)).sum())
        n += len(codes)
    return total / n


class Summary:
    """Per feature, over the rows trained and tested on, added a chunk at a time: range, mean and spread
    (chunks combined by Chan, Golub and LeVeque's update; over one chunk exactly NumPy's own figures)."""

    def __init__(self) -> None:
        self.n, self.low, self.high, self.mean, self.var = 0, None, None, None, None

    def add(self, x: np.ndarray) -> "Summary":
        n = len(x)
        if not n:
            return self
        low, high = x.min(axis=0), x.max(axis=0)
        mean = np.array([x[:, i].mean() for i in range(x.shape[1])])
        var = np.array([x[:, i].var() for i in range(x.shape[1])])
        if self.n:
            total = self.n + n
            delta = mean - self.mean
            var = (self.var * self.n + var * n) / total + delta ** 2 * (self.n * n) / total ** 2
            mean = self.mean + delta * (n / total)
            low, high = np.minimum(self.low, low), np.maximum(self.high, high)
        self.n, self.low, self.high, self.mean, self.var = self.n + n, low, high, mean, var
        return self

    def features(self, missing: dict[str, int]) -> dict[str, dict]:
        """And how many rows of the merged data lacked each (process drops those rows)."""
        return {name: {"type": kind, "min": float(self.low[i]), "max": float(self.high[i]),
                       "mean": float(self.mean[i]), "std": float(np.sqrt(self.var[i])),
                       "missing": int(missing.get(name, 0))}
                for i, (name, kind) in enumerate(schemas.active().features.items())}


def class_counts(names: np.ndarray, **counts: np.ndarray) -> dict[str, dict[str, int]]:
    """Rows per class in each split, for the report's class balance."""
    return {split: {str(name): int(n) for name, n in zip(names, per_class)} for split, per_class in counts.items()}


def example_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Rows by feature name, each column of its declared type: the example MLflow infers the model's signature
    from, so a served model takes an `int` feature as an integer (MLflow will not turn int64 into float64)."""
    return {name: x[:, i].astype(np.int64 if kind == "int" else np.float64)
            for i, (name, kind) in enumerate(schemas.active().features.items())}


class InMemory:
    """The training rows held in memory, standardised in place (a scaled copy would be 0.5 GB more at 10M rows
    per source): the path for data that fits. With early stopping, VALIDATION_FRACTION of each class's training
    rows are held out too, drawn with `rng` (which then draws each epoch's order)."""

    def __init__(self, x: np.ndarray, codes: np.ndarray, names: np.ndarray, settings: Settings,
                 rng: np.random.Generator, holdout: tuple[np.ndarray, np.ndarray] | None = None):
        self.names, self.n_train = names, len(codes)
        self.scaler = StandardScaler().fit(x)
        scaled = self.scaler.transform(x, copy=False)
        self.holdout = None if holdout is None else (self.scaler.transform(holdout[0], copy=False), holdout[1])
        self.has_holdout = holdout is not None
        self.validation = None
        if settings.early_stopping:
            mask = held_out(codes, len(names), VALIDATION_FRACTION, rng, least=0)
            if not mask.any() or mask.all():
                raise_too_few(len(codes))
            self.validation = (scaled[mask], codes[mask])
            scaled, codes = scaled[~mask], codes[~mask]
        self.x, self.labels = scaled, as_labels(codes, names)
        self.n_validation = 0 if self.validation is None else len(self.validation[1])

    @classmethod
    def read(cls, snapshot: dataset.Snapshot, settings: Settings, rng: np.random.Generator) -> "InMemory":
        """The snapshot read whole, split, and what the metrics say of it."""
        x, codes, names = to_arrays(snapshot)
        summary = Summary().add(x)
        x_train, x_test, c_train, c_test = split(x, codes, names, settings.test_fraction, settings.seed)
        del x, codes
        example = example_rows(x_test[:5])
        counts = class_counts(names, train=np.bincount(c_train, minlength=len(names)),
                              test=np.bincount(c_test, minlength=len(names)))
        rows = cls(x_train, c_train, names, settings, rng, (x_test, c_test))
        rows.summary, rows.example, rows.counts, rows.n_test = summary, example, counts, len(c_test)
        return rows

    def epoch(self, rng: np.random.Generator, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The training rows in a new order, gathered `step` at a time."""
        order = rng.permutation(len(self.labels))
        for start in range(0, len(order), step):
            rows = order[start:start + step]
            yield self.x[rows], self.labels[rows]

    def rows(self, part: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The hold-out or validation rows, scaled, with their codes."""
        return chunks(*{"holdout": self.holdout, "validation": self.validation}[part])


def raise_too_few(n_train: int):
    raise StageError(f"input early_stopping: {n_train} training rows are too few to hold out "
                     f"{VALIDATION_FRACTION:g} of them for validation; train without early stopping")


class Streamed:
    """The snapshot read a row group at a time on every pass, never held: the path for data that does not fit.
    Memory is bounded by WINDOW_ROWS rows, whatever the row count.

    A first pass checks every row group (as the in-memory path does) and counts each class's rows per group.
    The split then holds out as many rows of each class as the in-memory path (`quota`), drawn uniformly over
    the whole snapshot (`spread` gives each group its count; a generator seeded by the seed and the group picks
    which of its rows), so every later pass finds the same rows held out without storing a mask. Early
    stopping's validation rows are drawn from the training rows the same way. A second pass fits the scaler
    on the training rows (`partial_fit`: `fit`'s mean and variance, to rounding) and the feature summary on
    every row.

    An epoch's randomness: the row groups in a new order (drawn from `rng`, the generator the in-memory path
    draws its orders from), taken WINDOW_ROWS rows of them at a time, each window's rows in a new order; so
    rows far apart in the snapshot meet in a batch only when their groups share a window. Rows ordered by
    class (merge sorts by the key, and a key can follow the class, as the seed's Id did) would then train a
    window's classes in turn: the stage warns when a row group's mix of classes is far from the whole's.
    Each window's last call may end in a batch shorter than batch_size, one more short step per window than
    in memory. Each epoch reads the snapshot twice (its training rows, then its hold-out rows), three times
    with early stopping (the validation rows): reading and checking a row group costs less than training on
    it at any but large batches (measured in docs/performance.md).
    """

    has_holdout = True

    def __init__(self, snapshot: dataset.Snapshot, settings: Settings, rng: np.random.Generator):
        self.snapshot, self.settings = snapshot, settings
        self.sizes = snapshot.row_group_rows()
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.window = max(1, WINDOW_ROWS // max(self.sizes, default=1))
        self.labels = Labels()
        first = [np.bincount(self.labels.codes(table, int(start)))
                 for table, start in zip(snapshot.tables(), self.starts)]
        per_group = np.zeros((len(first), len(self.labels.seen)), dtype=np.int64)
        for group, counts in enumerate(first):
            per_group[group, :len(counts)] = counts
        self.code_of, self.names = self.labels.sort(per_group.sum(axis=0))
        present = np.flatnonzero(per_group.sum(axis=0))
        counts = np.zeros((len(first), len(self.names)), dtype=np.int64)
        counts[:, self.code_of[present]] = per_group[:, present]
        totals = counts.sum(axis=0)
        check_classes(totals, self.names)
        mix = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        if len(counts) > self.window and np.abs(mix - totals / totals.sum()).sum(axis=1).max() > MIXED:
            log.warning("the rows are ordered by class (a row group's mix of classes is far from the whole's): "
                        "streamed epochs mix %d rows at a time, so shuffle the rows upstream for a model as good "
                        "as one trained in memory", WINDOW_ROWS)
        self.test_quota = spread(counts, quota(totals, settings.test_fraction, 1), np.random.default_rng(settings.seed))
        trained = counts - self.test_quota
        self.validation_quota = np.zeros_like(trained)
        if settings.early_stopping:
            self.validation_quota = spread(trained, quota(trained.sum(axis=0), VALIDATION_FRACTION, 0), rng)
            if not self.validation_quota.any() or (self.validation_quota == trained).all():
                raise_too_few(int(trained.sum()))
        self.n_train, self.n_test = int(trained.sum()), int(self.test_quota.sum())
        self.n_validation = int(self.validation_quota.sum())
        self.counts = class_counts(self.names, train=trained.sum(axis=0), test=self.test_quota.sum(axis=0))
        self.scaler, self.summary, examples = StandardScaler(), Summary(), []
        for group in range(len(self.sizes)):
            x, _, test, _ = self.group(group)
            self.summary.add(x)
            if not test.all():
                self.scaler.partial_fit(x[~test])
            if sum(map(len, examples)) < 5:
                examples.append(x[test][:5])
        self.example = example_rows(np.concatenate(examples)[:5])

    def group(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A row group's features (as stored), codes, and masks of its hold-out and validation rows."""
        table = self.snapshot.rows(group, 0, self.sizes[group])
        x = feature_matrix(table)
        codes = self.code_of[self.labels.codes(table, int(self.starts[group]))]
        test = pick(codes, self.test_quota[group], np.random.default_rng((self.settings.seed, group, 0)))
        validation = np.zeros_like(test)
        if self.settings.early_stopping:
            kept = np.flatnonzero(~test)
            rng = np.random.default_rng((self.settings.seed, group, 1))
            validation[kept[pick(codes[kept], self.validation_quota[group], rng)]] = True
        return x, codes, test, validation

    def epoch(self, rng: np.random.Generator, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = rng.permutation(len(self.sizes))
        for start in range(0, len(order), self.window):
            xs, labels = [], []
            for group in order[start:start + self.window]:
                x, codes, test, validation = self.group(group)
                kept = ~(test | validation)
                xs.append(self.scaled(x[kept]))
                labels.append(as_labels(codes[kept], self.names))
            x, labels = np.concatenate(xs), np.concatenate(labels)
            del xs
            rows = rng.permutation(len(labels))
            for first in range(0, len(rows), step):
                yield x[rows[first:first + step]], labels[rows[first:first + step]]

    def rows(self, part: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for group in range(len(self.sizes)):
            x, codes, test, validation = self.group(group)
            mask = test if part == "holdout" else validation
            yield from chunks(self.scaled(x[mask]), codes[mask])

    def scaled(self, x: np.ndarray) -> np.ndarray:
        return self.scaler.transform(x) if len(x) else x  # (a group may hold none of a part's rows)


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
    """Train on rows held in memory, standardising `x` and the hold-out rows in place (`InMemory`, `learn`)."""
    rng = np.random.default_rng(settings.seed)
    return learn(InMemory(x, codes, names, settings, rng, holdout), settings, rng, progress)


def learn(rows: InMemory | Streamed, settings: Settings, rng: np.random.Generator,
          progress: Progress | None = None) -> tuple[Pipeline, History]:
    """Train up to `epochs` epochs, each a pass over the training rows in a new order drawn from `rng`, in
    gradient steps of `batch_size` rows, as sklearn's own `fit` does; after each, the loss on the hold-out rows,
    when there are any. With early stopping, training stops once the validation rows' loss has not improved by
    TOLERANCE for `early_stopping` epochs, the model keeping the best epoch's weights (as sklearn's own early
    stopping does). The hold-out rows never steer training: stopping on them would make the hold-out scores
    look better than they are.

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
    names = rows.names
    classes = as_labels(np.arange(len(names)), names)
    model = estimator(settings)
    step = settings.batch_size * max(1, STEP_ROWS // settings.batch_size)
    history = History(settings.epochs, n_validation=rows.n_validation)
    best, since_best = (np.inf, None), 0
    with warnings.catch_warnings():
        # An epoch's last batch may be shorter than batch_size; sklearn warns that it clips.
        warnings.filterwarnings("ignore", message="Got `batch_size` less than 1 or larger than sample size")
        for epoch in range(1, settings.epochs + 1):
            total, n = 0.0, 0
            for x, labels in rows.epoch(rng, step):
                model.partial_fit(x, labels, classes=classes)
                total += model.loss_ * len(labels)
                n += len(labels)
            history.loss.append(total / n)
            shown = {"loss": history.loss[-1]}
            if rows.has_holdout:
                history.holdout.append(log_loss(model, rows.rows("holdout")))
                shown["hold-out loss"] = history.holdout[-1]
            if rows.n_validation:
                history.validation.append(log_loss(model, rows.rows("validation")))
                shown["validation loss"] = history.validation[-1]
                # As sklearn counts: an epoch that does not beat the best by TOLERANCE counts towards
                # stopping; any that beats it is the new best, whose weights the model keeps.
                since_best = since_best + 1 if history.validation[-1] > best[0] - TOLERANCE else 0
                if history.validation[-1] < best[0]:
                    best = (history.validation[-1], epoch, [c.copy() for c in model.coefs_],
                            [i.copy() for i in model.intercepts_])
            if progress:
                progress.step(epoch, **shown)
            if rows.n_validation and since_best >= settings.early_stopping:
                break
    if rows.n_validation:
        _, history.best_epoch, model.coefs_, model.intercepts_ = best
        if history.stopped_early:
            log.info("early stopping: the validation loss has not improved for %d epochs; stopped after epoch %d "
                     "of %d, keeping epoch %d's weights", settings.early_stopping, len(history.loss),
                     settings.epochs, history.best_epoch)
    if names.dtype.kind != "i":
        name_classes(model, names)
    return Pipeline([("scale", rows.scaler), ("classify", model)]), history


def name_classes(model: MLPClassifier, names: np.ndarray) -> None:
    """Make a model trained on codes 0..k-1 predict `names` (sorted, so code i is names[i]): the classifier
    maps its outputs to labels through `classes_` and its label binarizer, both set here as `partial_fit`
    sets them when given `classes=names`. The binarizer is private to sklearn, and only text labels need it:
    training on the text itself (no private attribute) cost 0.55 s more per million rows and epoch, which at
    1024-row batches is more than training (fit's `docs/performance.md` figures)."""
    model.classes_ = unique_labels(names)
    model._label_binarizer = LabelBinarizer().fit(names)


def evaluate(model, x: np.ndarray, codes: np.ndarray, names: np.ndarray) -> dict:
    """Scores of `model` (the pipeline, or its classifier given scaled rows) on the hold-out rows `x`."""
    return score(model, chunks(x, codes), names)


def score(model, rows: Iterator[tuple[np.ndarray, np.ndarray]], names: np.ndarray) -> dict:
    """Scores of `model` on the hold-out rows, given in chunks: only the confusion matrix's cells are kept,
    and sklearn scores them, weighted by their counts. The confusion matrix is whole up to DENSE_CONFUSION
    classes; beyond, its k x k cells would outgrow the data (1,500 classes: 2.25M cells, 20 MB of JSON), so
    only its nonzero cells are kept, [true, predicted, count] by class index: at most one per hold-out row."""
    k = len(names)
    cells, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for x, codes in rows:
        predicted = np.searchsorted(names, model.predict(x))
        cells, inverse = np.unique(np.concatenate([cells, codes.astype(np.int64) * k + predicted]),
                                   return_inverse=True)
        counts = np.bincount(inverse, np.concatenate([counts, np.ones(len(codes), dtype=np.int64)])
                             ).astype(np.int64)
    true, predicted = cells // k, cells % k
    labels = np.arange(k)
    precision, recall, f1, support = precision_recall_fscore_support(true, predicted, labels=labels,
                                                                     sample_weight=counts, zero_division=0)
    classes = [str(name) for name in names]
    found = {
        "accuracy": float(counts[true == predicted].sum() / counts.sum()),
        "macro_f1": float(f1.mean()),
        "classes": classes,
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }
    if k <= DENSE_CONFUSION:
        found["confusion_matrix"] = confusion_matrix(true, predicted, labels=labels, sample_weight=counts).tolist()
    else:
        found["confusion_nonzero"] = [[int(t), int(p), int(n)] for t, p, n in zip(true, predicted, counts)]
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
    if not snapshot.num_rows:
        raise StageError("input processed_data: holds no rows, so there is nothing to train on")
    (budget, origin), need = memory_budget(), in_memory_bytes(snapshot.num_rows, len(schema.features))
    rng = np.random.default_rng(settings.seed)  # each epoch's order (and the validation rows)
    if need <= budget * HEADROOM:
        rows = InMemory.read(snapshot, settings, rng)
    else:
        log.info("streaming %d rows a row group at a time: held in memory they would take about %d MiB, more "
                 "than %d%% of the %d MiB train may use (%s)", snapshot.num_rows, need >> 20, HEADROOM * 100,
                 budget >> 20, origin if origin == MEMORY_ENV else f"{origin}; {MEMORY_ENV} sets another")
        rows = Streamed(snapshot, settings, rng)
    if settings.batch_size > rows.n_train:
        log.warning("batch_size %d is more than the %d training rows: each epoch is one full batch",
                    settings.batch_size, rows.n_train)
    started = time.perf_counter()
    model, history = learn(rows, settings, rng, Progress(settings.epochs))
    seconds = time.perf_counter() - started
    metrics = score(model.named_steps["classify"], rows.rows("holdout"), rows.names)  # rows come scaled
    # Feature names make the pipeline refuse a DataFrame whose columns are not exactly these, in this order.
    model.named_steps["scale"].feature_names_in_ = np.asarray(list(schema.features), dtype=object)
    with tree.output_file("model") as tmp:
        modelfile.save(model, tmp)
        model_sha256 = sha256_file(tmp)
    params = {**asdict(settings), "hidden_layers": list(settings.hidden_layers),
              "effective_batch_size": min(settings.batch_size, rows.n_train)}
    if settings.early_stopping:
        params.update(validation_fraction=VALIDATION_FRACTION, tolerance=TOLERANCE)
    metrics.update(params)
    metrics.update({
        "n_train": rows.n_train, "n_test": rows.n_test, "seconds": round(seconds, 3),
        "loss_per_epoch": history.loss, "holdout_loss_per_epoch": history.holdout,
        **({"validation_loss_per_epoch": history.validation, "best_epoch": history.best_epoch,
            "n_validation": history.n_validation} if settings.early_stopping else {}),
        "stopped_early": history.stopped_early,
        "class_counts": rows.counts, "feature_names": list(schema.features),
        "features": rows.summary.features(snapshot.meta.get("missing_by_feature", {})),
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
             rows.n_test)
    metrics["tracking"] = track(tree, metrics, model, rows.example) if tracking.enabled() else tracking.off()
    with tree.output_file("metrics") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")


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
    # skops, imported only to write the model, imports all of scikit-learn's estimators (0.45 s): when the
    # runner starts train early, that happens while the upstream stages run (contract.wait_for_inputs).
    contract.main(train, outputs=["model", "metrics", "report"], preload=["skops.io"])


if __name__ == "__main__":
    main()
