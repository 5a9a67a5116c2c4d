"""Train past what its tier holds: the streaming path against the in-memory one, and the in-memory path's model
bytes as they were before there was a streaming path."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stageflow.runtime import dataset

from conftest import IRIS_FEATURES, load_stage, run_main, source_table, write_settings, write_snapshot

pytestmark = pytest.mark.iris  # the recorded model bytes are the iris schema's

train = load_stage("train")


@pytest.mark.parametrize("given, sha256", [
    ({"epochs": 5, "batch_size": 16}, "0029ce92cd89847b0b6cd997452112a02f366bd6b94a12df9cf1002e40e45245"),
    ({"epochs": 30, "batch_size": 8, "early_stopping": 2, "learning_rate": 0.5, "seed": 3},
     "aab85bb9bea1bf295d87e34a2998ed5fa020c0659cdaabc6a5bd2986cb86d06a"),
])
def test_the_in_memory_path_trains_the_model_it_trained_before_the_streaming_path(train_root, given, sha256):
    """The same inputs give the model bytes main gave before train could stream (scikit-learn and skops as
    pinned in stages/train/requirements.txt): data that fits is trained exactly as it always was."""
    table = source_table(range(1, 301)).drop_columns(["RandomColumn"])
    write_snapshot(train_root / "inputs" / "processed_data", table)
    write_settings(train_root, **given)
    assert run_main(train, train_root) == (0, None)
    assert json.loads((train_root / "outputs" / "metrics").read_text())["model_sha256"] == sha256


def overlapping(n: int, seed: int = 0) -> pa.Table:
    """Processed rows of three iris classes, in random order, spread so that a model gets some wrong."""
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    codes = rng.integers(0, 3, n)
    x = rng.normal(centres[codes], 0.8)
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)
    return pa.table({"Id": pa.array(np.arange(1, n + 1)), **{name: pa.array(x[:, i]) for i, name in
                     enumerate(IRIS_FEATURES)}, "Species": pa.array(names[codes], pa.string())})


def run_train(root, monkeypatch, budget: str | None) -> dict:
    """The stage's own entrypoint on `root`, with STAGEFLOW_TRAIN_MEMORY set to `budget` (or unset); its metrics."""
    for name in ("model", "metrics", "report"):
        (root / "outputs" / name).unlink(missing_ok=True)
    if budget is None:
        monkeypatch.delenv(train.MEMORY_ENV, raising=False)
    else:
        monkeypatch.setenv(train.MEMORY_ENV, budget)
    assert run_main(train, root) == (0, None)
    return json.loads((root / "outputs" / "metrics").read_text())


@pytest.fixture
def streamed_root(train_root, monkeypatch):
    """30,000 rows in row groups of 4,096, trained in windows of two row groups."""
    monkeypatch.setattr(dataset, "ROW_GROUP", 4096)
    monkeypatch.setattr(train, "WINDOW_ROWS", 8192)
    write_snapshot(train_root / "inputs" / "processed_data", overlapping(30_000))
    return train_root


def test_streaming_scores_within_a_hundredth_of_the_in_memory_model(streamed_root, monkeypatch, capsys):
    write_settings(streamed_root, epochs=3, batch_size=64)
    held = run_train(streamed_root, monkeypatch, None)
    assert "streaming" not in capsys.readouterr().err
    streamed = run_train(streamed_root, monkeypatch, "1m")
    log = capsys.readouterr().err
    assert "streaming 30000 rows a row group at a time" in log and "ordered by class" not in log
    assert streamed.keys() == held.keys() and streamed["features"].keys() == held["features"].keys()
    assert 0.7 < held["accuracy"] < 0.99  # data on which a model can be better or worse
    assert abs(streamed["accuracy"] - held["accuracy"]) <= 0.01
    assert abs(streamed["macro_f1"] - held["macro_f1"]) <= 0.01
    # as many hold-out rows of each class, drawn from the whole snapshot (each class's hold-out support)
    assert streamed["class_counts"] == held["class_counts"] and streamed["n_test"] == held["n_test"] == 6000
    assert len(streamed["loss_per_epoch"]) == len(streamed["holdout_loss_per_epoch"]) == 3
    assert streamed["holdout_loss_per_epoch"][-1] == pytest.approx(held["holdout_loss_per_epoch"][-1], abs=0.02)
    for name, summary in held["features"].items():  # over every row, whichever way they were read
        assert streamed["features"][name].pop("type") == summary.pop("type")
        assert streamed["features"][name] == pytest.approx(summary, rel=1e-9)
    assert streamed["model_sha256"] != held["model_sha256"]
    assert verify_model(streamed_root)


def verify_model(root) -> bool:
    from stageflow.model import load
    model = load(root / "outputs" / "model", root / "outputs" / "metrics")
    return list(model.classes_) == ["setosa", "versicolor", "virginica"]


def test_a_streamed_epoch_trains_on_every_training_row_once_and_never_on_a_held_out_one(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "ROW_GROUP", 1000)
    monkeypatch.setattr(train, "WINDOW_ROWS", 2000)
    snapshot = dataset.Snapshot(write_snapshot(tmp_path / "p", overlapping(5500)), "processed_data")
    settings = train.Settings(epochs=2, batch_size=16, learning_rate=0.05, hidden_layers=(4,), seed=5,
                              test_fraction=0.2, early_stopping=2)
    rng = np.random.default_rng(5)
    rows = train.Streamed(snapshot, settings, rng)
    assert len(rows.sizes) == 6 and rows.window == 2
    epochs = [[x for x, _ in rows.epoch(rng, 1600)] for _ in range(2)]
    parts = {part: np.vstack([x for x, _ in rows.rows(part)]) for part in ("holdout", "validation")}
    assert len(parts["holdout"]) == rows.n_test == 1100 and len(parts["validation"]) == rows.n_validation > 0
    everything = np.sort(snapshot.read().column(IRIS_FEATURES[0]).to_numpy())
    for batches in epochs:
        fed = np.vstack(batches)
        assert len(fed) == rows.n_train - rows.n_validation
        seen = rows.scaler.inverse_transform(np.vstack([fed, parts["holdout"], parts["validation"]]))[:, 0]
        assert np.allclose(np.sort(seen), everything)  # every row once: trained on, held out or validating
    assert not np.array_equal(np.vstack(epochs[0]), np.vstack(epochs[1]))  # each epoch in a new order


@pytest.mark.parametrize("change, message", [
    ({"labels": ["setosa"] * 30_000}, "input processed_data: only one class (setosa) is left; a classifier needs "
                                      "at least two"),
    ({"labels": ["setosa"] * 29_999 + ["virginica"]}, "input processed_data: 30000 rows are too few for a "
     "stratified hold-out split (virginica has 1 row(s); every class needs at least 2, one to train on and one "
     "to test)"),
    ({"labels": ["setosa"] * 20_000 + [None] + ["virginica"] * 9_999}, "input processed_data: column Species is "
     "empty in 1 row(s) from row 16385"),
])
def test_the_streaming_path_refuses_what_the_in_memory_path_refuses_in_the_same_words(streamed_root, monkeypatch,
                                                                                       change, message):
    table = overlapping(30_000)
    table = table.set_column(table.schema.get_field_index("Species"), "Species", pa.array(change["labels"], pa.string()))
    pq.write_table(table, streamed_root / "inputs" / "processed_data", row_group_size=4096)
    for budget in (None, "1m"):
        if budget:
            monkeypatch.setenv(train.MEMORY_ENV, budget)
        assert run_main(train, streamed_root) == (1, message + "\n")
        assert [p.name for p in (streamed_root / "outputs").iterdir()] == ["_ERROR"]


@pytest.mark.parametrize("value", ["lots", "0", "-1g", "1.5g"])
def test_a_bad_memory_budget_is_one_line_naming_the_variable(train_root, monkeypatch, value):
    monkeypatch.setenv(train.MEMORY_ENV, value)
    assert run_main(train, train_root) == (1, f"{train.MEMORY_ENV}: expected a number of bytes above 0 with an "
                                              f"optional k, m or g suffix (such as 8g), found {value!r}\n")
    assert [p.name for p in (train_root / "outputs").iterdir()] == ["_ERROR"]


@pytest.mark.parametrize("value, expected", [("8g", 8 << 30), ("512M", 512 << 20), ("1000", 1000), ("64KiB", 64 << 10)])
def test_the_memory_budget_is_the_variable_when_set_else_the_smaller_of_the_cgroup_limit_and_the_machine(
        value, expected):
    assert train.memory_budget({train.MEMORY_ENV: value}) == (expected, train.MEMORY_ENV)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget, origin = train.memory_budget({})
    assert 0 < budget <= physical and (origin == "the machine's memory") == (budget == physical)


def test_early_stopping_streams_too(streamed_root, monkeypatch):
    write_settings(streamed_root, epochs=6, batch_size=64, early_stopping=2)
    held = run_train(streamed_root, monkeypatch, None)
    streamed = run_train(streamed_root, monkeypatch, "1m")
    assert streamed["n_validation"] == held["n_validation"] == 2400  # a tenth of each class's training rows
    assert len(streamed["validation_loss_per_epoch"]) == len(streamed["loss_per_epoch"])
    assert streamed["best_epoch"] == 1 + int(np.argmin(streamed["validation_loss_per_epoch"]))
    assert abs(streamed["accuracy"] - held["accuracy"]) <= 0.01


@pytest.mark.parametrize("budget", [None, "1m"])
def test_no_rows_to_train_on_is_one_line_on_either_path(train_root, monkeypatch, budget):
    if budget:
        monkeypatch.setenv(train.MEMORY_ENV, budget)
    write_snapshot(train_root / "inputs" / "processed_data", overlapping(3).slice(0, 0))
    assert run_main(train, train_root) == (1, "input processed_data: holds no rows, so there is nothing to train "
                                              "on\n")
    assert [p.name for p in (train_root / "outputs").iterdir()] == ["_ERROR"]


def test_row_groups_holding_none_of_a_parts_rows_stream(train_root, monkeypatch):
    """Row groups of 3 rows: most hold no hold-out row, some no validation row, a few nothing to train on."""
    monkeypatch.setattr(dataset, "ROW_GROUP", 3)
    write_snapshot(train_root / "inputs" / "processed_data", overlapping(60))
    write_settings(train_root, epochs=2, batch_size=4, early_stopping=1)
    metrics = run_train(train_root, monkeypatch, "1m")
    assert metrics["n_test"] == sum(metrics["class_counts"]["test"].values()) == 12
    assert len(metrics["validation_loss_per_epoch"]) >= 1


def test_streaming_rows_ordered_by_class_is_warned_of(train_root, monkeypatch, capsys):
    """Windows of two row groups mix only neighbouring rows: rows sorted by class would train one class at a time."""
    monkeypatch.setattr(dataset, "ROW_GROUP", 1000)
    monkeypatch.setattr(train, "WINDOW_ROWS", 2000)
    table = overlapping(9000)
    write_snapshot(train_root / "inputs" / "processed_data", table.sort_by("Species"))
    write_settings(train_root, epochs=1, batch_size=256)
    run_train(train_root, monkeypatch, "1m")
    assert "WARNING the rows are ordered by class" in capsys.readouterr().err
