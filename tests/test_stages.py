"""Stage logic on tiny in-code tables: the seed's bugs fixed, and the negative cases."""

import errno
import gzip
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.neural_network import MLPClassifier

from stageflow import jobs, registry
from stageflow.runtime import contract, dataset, inputs, schema as schemas, sources
from stageflow.runtime.contract import StageError

from conftest import (IRIS_FEATURES, ROOT, TRAIN_DEFAULTS, iris_like, load_source, load_stage, run_main,
                      samples, write_snapshot)

pytestmark = pytest.mark.iris  # iris columns, labels and messages

merge = load_stage("merge")
process = load_stage("process")
train = load_stage("train")

HEADER = "Id,SepalLengthCm,SepalWidthCm,RandomColumn,PetalLengthCm,PetalWidthCm,Species"


def table(rows, **overrides):
    """An iris-shaped table from (Id, species) pairs with plausible feature values."""
    cols = {"Id": [r[0] for r in rows]}
    for i, name in enumerate(IRIS_FEATURES):
        cols[name] = [float(r[0] or 0) + i / 10 for r in rows]
    cols["RandomColumn"] = [0.5] * len(rows)
    cols["Species"] = [r[1] for r in rows]
    cols.update(overrides)
    return dataset.conform(pa.table(cols), "t")


# ------------------------------------------------------------------ schema


def test_conform_casts_and_orders_columns():
    raw = pa.table({"Species": ["a"], "PetalWidthCm": [1], "PetalLengthCm": [1], "SepalWidthCm": [1],
                    "SepalLengthCm": ["5.5 "], "Id": ["7"]})
    out = dataset.conform(raw, "src")
    assert out.column_names == ["Id", *IRIS_FEATURES, "Species"]
    assert out.schema.field("Id").type == pa.int64()
    assert out.column("SepalLengthCm").to_pylist() == [5.5]


def test_missing_column_is_named():
    raw = pa.table({"Id": [1], "SepalLengthCm": [1.0], "SepalWidthCm": [1.0], "PetalLengthCm": [1.0],
                    "Species": ["setosa"]})
    with pytest.raises(StageError, match="src: missing required column PetalWidthCm"):
        dataset.conform(raw, "src")


def test_unknown_column_is_rejected():
    raw = table([(1, "setosa")]).append_column("Colour", pa.array(["red"]))
    with pytest.raises(StageError, match="src: unknown column Colour; expected only Id, "):
        dataset.conform(raw, "src")


def test_non_numeric_feature_names_column_value_and_row():
    raw = pa.table({"Id": ["1", "2"], **{f: ["1.0", "2.0"] for f in IRIS_FEATURES}, "Species": ["a", "b"]})
    raw = raw.set_column(2, "SepalWidthCm", pa.array(["3.0", "wide"]))
    with pytest.raises(StageError, match=r"src: column SepalWidthCm must be a number in every row, "
                                         r"found 'wide' in row 2"):
        dataset.conform(raw, "src")


def test_non_integer_id_is_refused():
    raw = pa.table({"Id": [1.0, 2.5], **{f: [1.0, 2.0] for f in IRIS_FEATURES}, "Species": ["a", "b"]})
    with pytest.raises(StageError, match="src: column Id must be an integer in every row, found 2.5 in row 2"):
        dataset.conform(raw, "src")


def test_missing_and_duplicate_ids_are_refused():
    with pytest.raises(StageError, match=r"src: column Id is empty in 1 row\(s\)"):
        dataset.check_ids(table([(1, "a"), (None, "b")]), "src")
    with pytest.raises(StageError, match=r"src: duplicate Id 2, 5 \(2 Id\(s\) appear more than once\)"):
        dataset.check_ids(table([(5, "a"), (2, "b"), (5, "c"), (2, "d"), (3, "e")]), "src")


@pytest.mark.parametrize("chunks, distinct, shown", [([[3], [1, 2, 3, 3, 9], [1]], [[3], [1, 2, 9], [4]], "1, 3"),
                                                     ([["b", "a"], ["c", "b", "a"]], [["b", "a"], ["c", "z"]], "a, b")])
def test_duplicate_keys_out_of_order_are_found_across_chunks_whatever_their_type(chunks, distinct, shown):
    """Unsorted keys are sorted and neighbours compared, not counted in a hash table (1.3 GB at 10M rows)."""
    with pytest.raises(StageError, match=rf"src: duplicate Id {shown} \(2 Id\(s\) appear more than once\)"):
        dataset.check_ids(pa.table({"Id": pa.chunked_array(chunks)}), "src")
    dataset.check_ids(pa.table({"Id": pa.chunked_array(distinct)}), "src")


# ------------------------------------------------------------------ sources (more in test_bad_inputs.py)


def write_csv(path, body, opener=open):
    with opener(path, "wt") as handle:
        handle.write(body)
    return path


def write_jsonl(path, csv_rows):
    names = HEADER.split(",")
    with open(path, "w") as handle:
        for row in csv_rows.splitlines():
            values = row.split(",")
            record = {**dict(zip(names, values)), "Id": int(values[0])}
            record.update({name: float(record[name]) for name in names[1:6]})
            handle.write(json.dumps(record) + "\n")


GOOD_ROWS = "1,5.1,3.5,0.1,1.4,0.2,Iris-setosa\n2,7.0,3.2,0.2,4.7,1.4,Iris-versicolor\n"


@pytest.mark.parametrize("name, writer", [
    ("s.csv", lambda p: write_csv(p, HEADER + "\n" + GOOD_ROWS)),
    ("s.csv.gz", lambda p: write_csv(p, HEADER + "\n" + GOOD_ROWS, gzip.open)),
    ("s.jsonl", lambda p: write_jsonl(p, GOOD_ROWS)),
    ("s.parquet", lambda p: pq.write_table(table([(1, "Iris-setosa"), (2, "Iris-versicolor")]), p)),
])
def test_every_source_format_loads(wf_root, name, writer):
    path = wf_root / name
    writer(path)
    status, error, out = load_source(wf_root, path)
    assert (status, error) == (0, None)
    assert out.read().column("Id").to_pylist() == [1, 2]
    assert out.read().column("Species").to_pylist() == ["Iris-setosa", "Iris-versicolor"]  # process normalises
    assert out.meta["source"]["rows"] == 2 and out.meta["source"]["format"] == name.split(".", 1)[1]


def test_padded_numbers_take_the_slow_path_and_load(wf_root):
    path = write_csv(wf_root / "s.csv", HEADER + "\n1, 5.1 ,3.5,0.1,1.4,0.2,setosa\n")
    status, _, out = load_source(wf_root, path)
    assert status == 0
    assert out.read().column("SepalLengthCm").to_pylist() == [5.1]


def test_the_text_read_rewrites_the_file_the_typed_read_began(wf_root, monkeypatch):
    """A bad value in a late batch sends load back to a text read after the typed one wrote row groups into
    the same temporary file: the snapshot must hold each row once."""
    monkeypatch.setattr(dataset, "ROW_GROUP", 2)
    monkeypatch.setattr(sources, "CSV_BLOCK", 100)
    rows = [f"{i},5.1,3.5,0.1,1.4,0.2,setosa" for i in range(1, 10)] + ["10, 5.1 ,3.5,0.1,1.4,0.2,setosa"]
    status, _, out = load_source(wf_root, write_csv(wf_root / "s.csv", HEADER + "\n" + "\n".join(rows) + "\n"))
    assert status == 0
    assert out.read().column("Id").to_pylist() == list(range(1, 11))
    assert out.file.metadata.num_row_groups > 1 and out.meta["source"]["rows"] == 10


# ------------------------------------------------------------------ merge (more in test_streaming.py)


def merged(root, a, b):
    """Run merge on snapshots of tables `a` and `b`: its exit status, its _ERROR and its output (or None)."""
    write_snapshot(root / "inputs" / "datasetA", a)
    write_snapshot(root / "inputs" / "datasetB", b)
    status, error = run_main(merge, root)
    out = root / "outputs" / "merged_data"
    return status, error, dataset.Snapshot(out, "merged_data") if out.exists() else None


def test_merge_is_the_union_of_a_and_b_not_a_twice(wf_root):
    status, _, out = merged(wf_root, table([(1, "setosa"), (2, "setosa")]), table([(3, "virginica"), (4, "virginica")]))
    assert status == 0
    assert out.read().column("Id").to_pylist() == [1, 2, 3, 4] and out.meta["overlap"] == 0


def test_merge_keeps_identical_rows_once_and_sorts_by_id(wf_root):
    status, _, out = merged(wf_root, table([(3, "setosa"), (1, "setosa")]), table([(2, "virginica"), (3, "setosa")]))
    assert status == 0
    assert out.read().column("Id").to_pylist() == [1, 2, 3] and out.meta["overlap"] == 1
    assert out.read().column("Species").to_pylist() == ["setosa", "virginica", "setosa"]


def test_merge_accepts_a_snapshot_with_columns_in_another_order(wf_root):
    a = table([(1, "setosa")])
    b = table([(2, "virginica")])
    write_snapshot(wf_root / "inputs" / "datasetA", a)
    pq.write_table(b.select(list(reversed(b.column_names))), wf_root / "inputs" / "datasetB")
    assert run_main(merge, wf_root) == (0, None)
    out = dataset.Snapshot(wf_root / "outputs" / "merged_data", "merged_data").read()
    assert out.column_names == a.column_names and out.column("Id").to_pylist() == [1, 2]


@pytest.mark.parametrize("missing", [None, math.nan])
def test_merge_treats_two_missing_values_as_equal(wf_root, missing):
    a = table([(1, "setosa")], SepalLengthCm=[missing])
    status, _, out = merged(wf_root, a, a)
    assert status == 0 and out.num_rows == 1 and out.meta["overlap"] == 1


@pytest.mark.parametrize("ids_b", [[2, 3], [3, 2]], ids=["streamed", "unsorted"])
@pytest.mark.parametrize("lacking", ["datasetA", "datasetB"])
def test_merge_leaves_out_an_optional_column_only_one_source_has(wf_root, capsys, lacking, ids_b):
    a, b = table([(1, "setosa"), (2, "setosa")]), table([(i, "setosa") for i in ids_b])
    if lacking == "datasetA":
        a = a.drop_columns(["RandomColumn"])
    else:
        b = b.drop_columns(["RandomColumn"])
    status, error, out = merged(wf_root, a, b)
    assert (status, error) == (0, None)
    assert out.column_names == ["Id", *IRIS_FEATURES, "Species"]
    assert out.read().column("Id").to_pylist() == [1, 2, 3] and out.meta["overlap"] == 1  # Id 2: the same row
    has = "datasetB" if lacking == "datasetA" else "datasetA"
    assert f"merge: RandomColumn is in {has} but not in {lacking}; merged_data leaves it out" in capsys.readouterr().err


@pytest.mark.parametrize("order", [[1, 2, 3], [3, 1, 2]], ids=["sorted", "unsorted"])
def test_a_merge_conflict_names_the_key_the_columns_and_both_values(wf_root, order):
    a = table([(1, "setosa"), (2, "setosa"), (3, "setosa")])
    b = table([(1, "setosa"), (2, "virginica"), (3, "setosa")], SepalLengthCm=[1.0, 9.5, None])
    status, error, out = merged(wf_root, a.take(pa.array(order) - 1), b)
    assert (status, out) == (1, None)
    assert error == ("merge: Id 2, 3 (2 in all) have different values in datasetA and datasetB; "
                     "Id 2: SepalLengthCm is 2.0 in datasetA but 9.5 in datasetB, Species is 'setosa' in datasetA "
                     "but 'virginica' in datasetB; Id 3: SepalLengthCm is 3.0 in datasetA but missing in datasetB\n")


def test_a_merge_conflict_message_stays_short_however_many_and_large_the_values(wf_root):
    """40 Ids that differ in every column, labels of 5,000 characters: ten Ids named, three shown, their
    first three columns, each value cut."""
    ids = list(range(1, 41))
    a = table([(i, "a" * 5000) for i in ids])
    b = table([(i, "b" * 5000) for i in ids], **{name: [-1.0] * 40 for name in (*IRIS_FEATURES, "RandomColumn")})
    status, error, _ = merged(wf_root, a, b)
    assert status == 1 and len(error) < 800, error
    assert error.startswith("merge: Id 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 (40 in all) have different values in datasetA "
                            "and datasetB; Id 1: SepalLengthCm is 1.0 in datasetA but -1.0 in datasetB, ")
    assert error.count(" and 3 more column(s) differ") == 3 and "Id 4:" not in error
    assert "aaa" not in error  # the label is the sixth column that differs: not shown


def test_a_long_differing_value_is_cut_in_the_message(wf_root):
    status, error, _ = merged(wf_root, table([(1, "a" * 5000)]), table([(1, "b" * 5000)]))
    assert status == 1 and len(error) < 300, error
    assert error.endswith(f"Id 1: Species is {('a' * 5000)!r:.40}… in datasetA but {('b' * 5000)!r:.40}… in datasetB\n")


@pytest.mark.parametrize("spelt_a, spelt_b", [("Iris-setosa", "setosa"), (" SETOSA ", "iris_setosa"),
                                              ("Iris versicolor", "VERSICOLOR")])
def test_labels_the_schema_treats_as_one_are_no_conflict(wf_root, spelt_a, spelt_b):
    """schema.toml: match = "ignore-case", strip_prefixes iris-, iris_, "iris ". The row kept is A's, as
    spelt there; process spells it."""
    status, error, out = merged(wf_root, table([(1, spelt_a), (2, "virginica")]), table([(1, spelt_b), (3, "virginica")]))
    assert (status, error) == (0, None)
    assert out.read().column("Species").to_pylist() == [spelt_a, "virginica", "virginica"]
    assert out.meta["overlap"] == 1


def test_labels_compare_by_the_active_schemas_own_rules(wf_root, tmp_path, monkeypatch):
    """Under match = "exact" case counts, and a declared prefix is still stripped."""
    text = (ROOT / "schema.toml").read_text().replace('match = "ignore-case"', 'match = "exact"')
    text = text.replace('strip_prefixes = ["iris-", "iris_", "iris "]', 'strip_prefixes = ["Iris-"]')
    (tmp_path / "exact.toml").write_text(text)
    monkeypatch.setenv(schemas.ENV, str(tmp_path / "exact.toml"))
    status, error, _ = merged(wf_root, table([(1, "Iris-setosa"), (2, "setosa")]), table([(1, "setosa"), (2, "Setosa")]))
    assert (status, error) == (1, "merge: Id 2 (1 in all) have different values in datasetA and datasetB; "
                                  "Id 2: Species is 'setosa' in datasetA but 'Setosa' in datasetB\n")


@pytest.mark.parametrize("ids_a, ids_b, name, repeated", [
    ([2], [3, 1, 3], "datasetB", 3),     # B's repeated key not in A
    ([2], [1, 3, 3], "datasetB", 3),     # in order but for the repeat
    ([2, 4], [2, 1, 2], "datasetB", 2),  # B's repeated key in A too: B's rows are dropped, the pairs count
    ([3, 1, 3], [2], "datasetA", 3),
])
def test_merge_refuses_a_snapshot_with_a_repeated_key(wf_root, ids_a, ids_b, name, repeated):
    """Load refuses such a source; a snapshot that comes from elsewhere is refused by merge in the same words."""
    status, error, out = merged(wf_root, table([(i, "setosa") for i in ids_a]), table([(i, "setosa") for i in ids_b]))
    assert (status, error, out) == (1, f"input {name}: duplicate Id {repeated} (1 Id(s) appear more than once)\n",
                                    None)


def test_merge_refuses_a_snapshot_with_a_missing_key(wf_root):
    status, error, out = merged(wf_root, table([(3, "setosa"), (None, "setosa"), (1, "setosa")]), table([(2, "setosa")]))
    assert (status, error, out) == (1, "input datasetA: column Id is empty in 1 row(s); every row needs an integer "
                                       "Id\n", None)


def test_the_merge_engine_filling_its_disk_is_the_full_disk_error(tmp_path, monkeypatch):
    """DuckDB reports spill files that fill their disk as memory it could not offload past
    max_temp_directory_size (by default the disk's free space): that is ENOSPC, which the output's handler
    turns into the one line a full disk gives (test_faults.py has the whole stage on a full disk)."""
    monkeypatch.setattr(merge, "MEMORY_LIMIT", "32MiB")
    with merge.connect(tmp_path) as con, pytest.raises(OSError) as raised, merge.engine_errors():
        con.execute("SET max_temp_directory_size = '1MiB'")
        con.sql("SELECT range, random() AS r FROM range(2000000) ORDER BY r").to_arrow_table()
    assert raised.value.errno == errno.ENOSPC


def test_the_merge_engine_running_out_of_memory_names_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(merge, "MEMORY_LIMIT", "32MiB")
    with merge.connect(tmp_path) as con, pytest.raises(StageError) as raised, merge.engine_errors():
        con.sql("SELECT length(list(range)) FROM range(20000000)").fetchall()  # one list: nothing to spill
    assert str(raised.value).startswith("merge: DuckDB needed more than its memory limit (32MiB, MEMORY_LIMIT in "
                                        "stages/merge/main.py) (Out of Memory Error: ")


def test_the_merge_engines_memory_fits_the_stages_tier():
    """DuckDB's limit, plus what the stage holds besides (about 0.4 GiB, docs/performance.md), within the
    memory of the tier the registry gives merge, with room to spare."""
    limit = merge.MEMORY_LIMIT
    assert limit.endswith("MiB") or limit.endswith("GiB")
    engine = float(limit[:-3]) * (1 if limit.endswith("MiB") else 1024)
    tier = jobs.TIERS[registry.STAGES["merge"].tier].memory
    assert tier.endswith("g") and engine + 512 <= float(tier[:-1]) * 1024 / 2


# ------------------------------------------------------------------ process (more in test_streaming.py)


def test_process_drops_noise_normalises_labels_and_counts_dropped(wf_root, capsys):
    t = table([(1, " Iris-setosa "), (2, "VERSICOLOR"), (3, "iris-virginica"), (4, "setosa"), (5, None)],
              PetalWidthCm=[0.1, 0.2, math.nan, 0.3, 0.4])
    write_snapshot(wf_root / "inputs" / "merged_data", t, {"sources": []})
    assert run_main(process, wf_root) == (0, None)
    out = dataset.Snapshot(wf_root / "outputs" / "processed_data", "processed_data")
    assert "RandomColumn" not in out.column_names
    assert out.read().column("Id").to_pylist() == [1, 2, 4]
    assert out.read().column("Species").to_pylist() == ["setosa", "versicolor", "setosa"]
    assert out.meta == {"sources": [], "rows": 3, "dropped": 2,
                        "dropped_by": {"PetalWidthCm NaN": 1, "Species missing": 1},
                        "missing_by_feature": {"SepalLengthCm": 0, "SepalWidthCm": 0, "PetalLengthCm": 0,
                                               "PetalWidthCm": 1}}
    assert ("dropped 2 of 5 rows that cannot be trained on: Species missing in 1, PetalWidthCm NaN in 1"
            in capsys.readouterr().err)


def json_records(label):
    rows = [(1, "Iris-setosa"), (2, "Iris-versicolor"), (3, label)]
    return [{"Id": i, **{name: 1.0 + i for name in IRIS_FEATURES}, "Species": species} for i, species in rows]


MISSING_LABEL_SOURCES = {
    "csv empty": ("s.csv", lambda p: write_csv(p, HEADER + "\n" + GOOD_ROWS + "3,6.3,3.3,0.3,6.0,2.5,\n")),
    "csv blank": ("s.csv", lambda p: write_csv(p, HEADER + "\n" + GOOD_ROWS + "3,6.3,3.3,0.3,6.0,2.5,  \n")),
    "jsonl null": ("s.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in json_records(None)))),
    "jsonl empty": ("s.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in json_records("")))),
    "parquet null": ("s.parquet", lambda p: pq.write_table(pa.table({
        "Id": [1, 2, 3], **{name: [1.0, 2.0, 3.0] for name in IRIS_FEATURES},
        "Species": ["Iris-setosa", "Iris-versicolor", None]}), p)),
}


@pytest.mark.parametrize("case", MISSING_LABEL_SOURCES)
def test_a_missing_label_is_a_dropped_row_whatever_the_format(wf_root, tmp_path, capsys, case):
    name, writer = MISSING_LABEL_SOURCES[case]
    writer(wf_root / name)
    status, error, snapshot = load_source(wf_root, wf_root / name)
    assert (status, error) == (0, None)
    assert snapshot.read().column("Species").to_pylist() == ["Iris-setosa", "Iris-versicolor", None]
    ptree = tmp_path / "process"
    (ptree / "inputs").mkdir(parents=True)
    os.link(wf_root / "outputs" / "datasetA", ptree / "inputs" / "merged_data")
    assert run_main(process, ptree) == (0, None)
    out = dataset.Snapshot(ptree / "outputs" / "processed_data", "processed_data")
    assert out.read().column("Id").to_pylist() == [1, 2] and out.meta["dropped"] == 1
    assert out.meta["dropped_by"] == {"Species missing": 1}
    assert "dropped 1 of 3 rows that cannot be trained on: Species missing in 1" in capsys.readouterr().err


# ------------------------------------------------------------------ train


def settings(**given):
    """The train task's settings: flow.py's defaults, but for those given."""
    values = {**TRAIN_DEFAULTS, "epochs": "10", "batch_size": "32", **{k: str(v) for k, v in given.items()}}
    return train.Settings(**{name: inputs.parsed(name, values[name]) for name in inputs.SETTINGS})


def split(x, codes, names, fraction=0.2, seed=42):
    return train.split(x, codes, names, fraction, seed)


def test_fit_honours_epochs_and_learns():
    x, codes, names = iris_like()
    x_train, x_test, c_train, c_test = split(x, codes, names)
    model, history = train.fit(x_train, c_train, names, settings(epochs=7, batch_size=8), (x_test.copy(), c_test))
    losses = history.loss
    assert len(losses) == 7 and losses[-1] < losses[0]
    assert len(history.holdout) == 7 and history.holdout[-1] < history.holdout[0]
    assert list(model.classes_) == ["setosa", "versicolor", "virginica"]  # the model predicts names
    assert train.evaluate(model, x_test, c_test, names)["accuracy"] >= 0.9


def test_each_batch_is_one_gradient_step_of_batch_size_rows():
    """sklearn's default would cut a partial_fit call into 200-row steps: 240 rows would be 2 steps."""
    x, codes, names = iris_like(n_per_class=100)
    x_train, _, c_train, _ = split(x, codes, names)
    assert len(c_train) == 240
    model, losses = train.fit(x_train, c_train, names, settings(epochs=3, batch_size=240))
    assert model.named_steps["classify"]._optimizer.t == 3  # Adam's step counter: one step per epoch
    model, _ = train.fit(x_train, c_train, names, settings(epochs=2, batch_size=100))
    assert model.named_steps["classify"]._optimizer.t == 2 * 3  # batches of 100, 100 and 40


def test_fit_is_reproducible_to_the_model_bytes():
    x, codes, names = iris_like(n_per_class=50)
    models = [train.fit(x.copy(), codes, names, settings(epochs=3, batch_size=16))[0] for _ in range(2)]
    assert pickle.dumps(models[0], protocol=5) == pickle.dumps(models[1], protocol=5)


def test_each_epoch_passes_over_every_row_in_a_new_order(monkeypatch):
    seen = []
    partial_fit = MLPClassifier.partial_fit

    def recording(self, x, y, **kwargs):
        seen.append(x[:, 0].copy())
        return partial_fit(self, x, y, **kwargs)

    monkeypatch.setattr(MLPClassifier, "partial_fit", recording)
    monkeypatch.setattr(train, "STEP_ROWS", 40)  # calls of 40 rows (whole batches of 8), the last one shorter
    x, codes, names = iris_like(n_per_class=50)
    train.fit(x, codes, names, settings(epochs=3, batch_size=8))
    assert [len(rows) for rows in seen] == [40, 40, 40, 30] * 3
    epochs = [np.concatenate(seen[i:i + 4]) for i in range(0, 12, 4)]
    assert all(sorted(rows) == sorted(x[:, 0]) for rows in epochs)  # every row once (x was scaled in place)
    assert len({tuple(rows) for rows in epochs}) == 3


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_model_trained_on_codes_and_named_is_the_model_trained_on_names(n_classes):
    """The stage trains on integer codes (sklearn checks text labels again on every call), then names the
    classes: byte for byte the model sklearn trains on the names themselves."""
    x, codes, names = iris_like(n_per_class=30)
    keep = codes < n_classes
    x, codes, names = x[keep], codes[keep].astype(np.uint8), names[:n_classes]
    on_codes, on_names = train.estimator(settings(batch_size=8)), train.estimator(settings(batch_size=8))
    for _ in range(2):
        on_codes.partial_fit(x, codes, classes=np.arange(n_classes, dtype=np.uint8))
        on_names.partial_fit(x, names[codes], classes=names)
    train.name_classes(on_codes, names)
    assert on_codes.predict(x).tolist() == on_names.predict(x).tolist()
    assert set(on_codes.predict(x)) <= set(names)
    assert pickle.dumps(on_codes, protocol=5) == pickle.dumps(on_names, protocol=5)


def test_evaluate_agrees_with_sklearn_on_names():
    x, codes, names = iris_like(seed=3)
    x_train, x_test, c_train, c_test = split(x, codes, names)
    model, _ = train.fit(x_train, c_train, names, settings(epochs=1, batch_size=4))  # one short epoch: some mistakes
    got = train.evaluate(model, x_test, c_test, names)
    y_true, y_pred = names[c_test], model.predict(x_test)
    classes = list(names)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert got["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=classes).tolist()


def test_labels_become_sorted_codes_of_the_classes_present(tmp_path):
    """Row groups with different dictionaries, one listing a label no row uses."""
    features = {name: pa.array([1.0, 2.0]) for name in IRIS_FEATURES}
    groups = [pa.table({"Id": pa.array(ids, pa.int64()), **features, "Species": pa.DictionaryArray.from_arrays(
                  pa.array(indices, pa.int32()), pa.array(dictionary))})
              for ids, indices, dictionary in (([1, 2], [2, 1], ["versicolor", "setosa", "virginica"]),
                                               ([3, 4], [0, 0], ["versicolor", "unused"]))]
    with pq.ParquetWriter(tmp_path / "p.parquet", groups[0].schema) as writer:
        for group in groups:
            writer.write_table(group)
    x, codes, names = train.to_arrays(dataset.Snapshot(tmp_path / "p.parquet", "processed_data"))
    assert list(names) == ["setosa", "versicolor", "virginica"]
    assert names[codes].tolist() == ["virginica", "setosa", "versicolor", "versicolor"]
    assert x[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_a_missing_label_is_refused(tmp_path):
    t = pa.table({"Id": [1, 2], **{name: pa.array([1.0, 2.0]) for name in IRIS_FEATURES},
                  "Species": pa.array(["setosa", None])})
    pq.write_table(t, tmp_path / "p.parquet")
    with pytest.raises(StageError, match=r"^input processed_data: column Species is empty in 1 row\(s\) from row 1$"):
        train.to_arrays(dataset.Snapshot(tmp_path / "p.parquet", "processed_data"))


def test_split_is_stratified_and_seeded():
    x, codes, names = iris_like()
    first, second = split(x, codes, names), split(x, codes, names)
    assert np.array_equal(first[1], second[1])
    assert np.bincount(first[3]).tolist() == [4, 4, 4]  # 20% of 20 per class
    # every row lands in exactly one half
    assert sorted(map(tuple, np.vstack([first[0], first[1]]))) == sorted(map(tuple, x))


def test_split_keeps_a_row_of_each_class_on_both_sides():
    x, codes, names = iris_like()
    codes, x = np.concatenate([codes[:2], codes[20:]]), np.concatenate([x[:2], x[20:]])  # setosa: 2 rows
    x_train, x_test, c_train, c_test = split(x, codes, names)
    assert np.bincount(c_test).tolist() == [1, 4, 4] and np.bincount(c_train).tolist() == [1, 16, 16]


def test_single_class_is_refused():
    x, codes, names = iris_like()
    with pytest.raises(StageError, match=r"only one class \(setosa\) is left"):
        split(x[:20], codes[:20], names[:1])


def test_too_few_rows_for_a_split_are_refused():
    x, codes, names = iris_like(n_per_class=2)
    codes[0] = 2  # setosa left with one row
    with pytest.raises(StageError, match=r"6 rows are too few for a stratified hold-out split \(setosa has 1 row\(s\)"):
        split(x, codes, names)


@pytest.mark.parametrize("name, value, message", [
    ("epochs", "0", "input epochs: must be at least 1, found 0"),
    ("epochs", "-3", "input epochs: must be at least 1, found -3"),
    ("batch_size", "0", "input batch_size: must be at least 1, found 0"),
    ("epochs", str(10**9), "input epochs: 1000000000 is more than the limit of 10000"),
    ("batch_size", str(10**12), "input batch_size: 1000000000000 is more than the limit of 10000000"),
    ("learning_rate", "0", "input learning_rate: must be a number above 0 and at most 10, found 0.0"),
    ("learning_rate", "nan", "input learning_rate: must be a number above 0 and at most 10, found nan"),
    ("hidden_layers", "16,0", "input hidden_layers: a layer holds 1 to 4096 units, found 0"),
    ("hidden_layers", "sixteen", "input hidden_layers: expected units per layer separated by commas, such as 16 or "
                                 "32,16; found 'sixteen'"),
    ("hidden_layers", ",".join(["4"] * 11), "input hidden_layers: 11 layers are more than the limit of 10"),
    ("seed", "-1", "input seed: must be at least 0, found -1"),
    ("seed", str(2**32), "input seed: 4294967296 is more than the limit of 4294967295"),
    ("test_fraction", "1", "input test_fraction: must be a fraction above 0 and below 1 (0.2 holds out a fifth), "
                           "found 1.0"),
    ("test_fraction", "0", "input test_fraction: must be a fraction above 0 and below 1 (0.2 holds out a fifth), "
                           "found 0.0"),
    ("early_stopping", "-1", "input early_stopping: must be at least 0, found -1"),
])
def test_bad_training_settings_are_refused_by_the_stage(train_root, name, value, message):
    (train_root / "inputs" / name).write_text(value)
    assert run_main(train, train_root) == (1, message + "\n")
    assert sorted(p.name for p in (train_root / "outputs").iterdir()) == [contract.ERROR_FILE]


@pytest.mark.parametrize("text, layers", [("16", (16,)), ("32,16", (32, 16)), ("(16,)", (16,)),
                                           (" (32, 16) ", (32, 16)), ("8, 8, 4", (8, 8, 4))])
def test_hidden_layers_are_read_as_written_and_shown_as_python_writes_them(text, layers):
    assert inputs.check("hidden_layers", text) == layers
    assert inputs.layers_text(layers) == repr(layers)


def test_early_stopping_is_off_by_default_and_stops_on_the_validation_loss_when_on():
    x, codes, names = iris_like(n_per_class=40)
    x_train, x_test, c_train, c_test = split(x, codes, names)
    _, off = train.fit(x_train.copy(), c_train, names, settings(epochs=40, batch_size=8), (x_test.copy(), c_test))
    assert len(off.loss) == len(off.holdout) == 40 and off.validation == [] and not off.stopped_early
    model, on = train.fit(x_train.copy(), c_train, names, settings(epochs=200, batch_size=8, learning_rate=0.5,
                                                                  early_stopping=3), (x_test.copy(), c_test))
    assert on.stopped_early and len(on.loss) == len(on.validation) == len(on.holdout) < 200
    best = min(range(len(on.validation)), key=on.validation.__getitem__) + 1
    assert on.best_epoch == best  # the model keeps the weights of the epoch with the lowest validation loss
    best_so_far, without = math.inf, []  # epochs in a row not beating the best so far by the tolerance
    for loss in on.validation:
        without.append(without[-1] + 1 if without and loss > best_so_far - train.TOLERANCE else
                       (1 if loss > best_so_far - train.TOLERANCE else 0))
        best_so_far = min(best_so_far, loss)
    assert without[-1] == 3 and max(without[:-1]) < 3  # it stopped at the first third epoch without a fall
    assert on.n_validation == round(0.1 * 32) * 3  # a tenth of each class's training rows, not the hold-out rows
    assert len(model.named_steps["classify"].coefs_) == 2


def test_early_stopping_keeps_the_best_epochs_weights():
    x, codes, names = iris_like(n_per_class=40)
    x_train, x_test, c_train, c_test = split(x, codes, names)
    chosen = settings(epochs=200, batch_size=8, learning_rate=0.5, early_stopping=3)
    model, history = train.fit(x_train.copy(), c_train, names, chosen, (x_test.copy(), c_test))
    again, _ = train.fit(x_train.copy(), c_train, names, settings(epochs=history.best_epoch, batch_size=8,
                                                                  learning_rate=0.5, early_stopping=1000))
    for kept, trained in zip(model.named_steps["classify"].coefs_, again.named_steps["classify"].coefs_):
        assert np.array_equal(kept, trained)  # the weights of epoch best_epoch, not of the last one


def test_integer_labels_are_trained_and_predicted_as_integers_without_sklearns_private_binarizer(monkeypatch):
    """Integer labels go to sklearn as they are (as fast as codes); only text labels are named afterwards."""
    x, codes, _ = iris_like()
    names = np.array([0, 1, 7])
    named = []
    monkeypatch.setattr(train, "name_classes", lambda model, names: named.append(names))
    model, _ = train.fit(x, codes, names, settings(epochs=2, batch_size=8))
    assert named == [] and model.classes_.tolist() == [0, 1, 7]
    assert {type(v) for v in model.predict(x).tolist()} == {int}


def test_many_classes_keep_the_confusion_matrix_to_its_nonzero_cells():
    rng = np.random.default_rng(0)
    names = np.asarray([f"c{i:03d}" for i in range(60)], dtype=object)
    codes = np.repeat(np.arange(60), 3)
    x = rng.normal(codes[:, None] * 0.1, 1.0, (len(codes), 2))

    class Guess:  # predicts the true class for the first half of the rows, class c000 for the rest
        def predict(self, rows):
            return np.where(np.arange(len(rows)) < len(rows) // 2, names[codes[:len(rows)]], names[0])

    found = train.evaluate(Guess(), x, codes, names)
    assert "confusion_matrix" not in found
    cells = {(t, p): n for t, p, n in found["confusion_nonzero"]}
    assert sum(cells.values()) == len(codes) and len(cells) <= len(codes)
    assert cells[(0, 0)] == 3 and cells[(59, 0)] == 3 and (59, 59) not in cells
    small = train.evaluate(Guess(), x[:150], codes[:150], names[:50])
    assert len(small["confusion_matrix"]) == 50 and "confusion_nonzero" not in small


# ------------------------------------------------------------------ a data stage as its own process

# Runs a stage's main.py as its own process does (as `__main__`), then notes what the process loaded.
LOADED = """import json, runpy, sys
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
except SystemExit as done:
    status = done.code
import pyarrow
json.dump({"status": status, "modules": sorted(m for m, v in sys.modules.items() if v is not None),
           "pool": pyarrow.default_memory_pool().backend_name}, open(sys.argv[2], "w"))
"""


def own_process(stage: str, root: Path, **env) -> dict:
    """Stage `stage` as its own process on the tree at `root`: its exit status, the modules it loaded and
    the allocator behind Arrow's memory."""
    report = root / "loaded.json"
    subprocess.run([sys.executable, "-c", LOADED, str(ROOT / registry.stage(stage).script), str(report)],
                   cwd=ROOT, check=True, timeout=300,
                   env={**os.environ, "WORKFLOW_ROOT": str(root), schemas.ENV: str(schemas.path()),
                        "PYTHONPATH": str(ROOT), **env})
    return json.loads(report.read_text())


def stage_tree(root: Path, **inputs: Path | str) -> Path:
    (root / "outputs").mkdir(parents=True)
    (root / "inputs").mkdir()
    for name, value in inputs.items():
        target = root / "inputs" / name
        target.write_bytes(value.read_bytes()) if isinstance(value, Path) else target.write_text(value)
    return root


def jemalloc_built() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


def loaded_modules(names: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


def test_the_data_stages_own_processes_load_no_pandas_and_take_arrows_memory_from_jemalloc(tmp_path):
    """pyarrow imports pandas (0.2-0.4 s) the first time it is handed a Python value, only to ask whether it
    is a pandas object; a data stage without a cluster never needs it. Through the whole data path, sources
    overlapping, so that merge's engine runs too."""
    source = tmp_path / "a.csv"
    source.write_text(HEADER + "\n" + "".join(f"{i},5.1,3.5,0.2,1.4,0.2,Iris-setosa\n" for i in range(1, 41)))
    reports = {}
    for name in ("load_a", "load_b"):
        reports[name] = own_process(name, stage_tree(tmp_path / name, data_path=str(source)))
    merge_root = stage_tree(tmp_path / "merge", datasetA=tmp_path / "load_a" / "outputs" / "datasetA",
                            datasetB=tmp_path / "load_b" / "outputs" / "datasetB")
    reports["merge"] = own_process("merge", merge_root)
    reports["process"] = own_process("process", stage_tree(tmp_path / "process",
                                                           merged_data=merge_root / "outputs" / "merged_data"))
    assert dataset.Snapshot(tmp_path / "process" / "outputs" / "processed_data", "processed_data").num_rows == 40
    for name, report in reports.items():
        assert report["status"] == 0, name
        assert "pandas" not in loaded_modules(report["modules"]), name
        assert report["pool"] == ("jemalloc" if jemalloc_built() else pa.default_memory_pool().backend_name), name
    assert "duckdb" in loaded_modules(reports["merge"]["modules"])  # the Ids both hold compared by the engine


def test_train_without_tracking_loads_no_pandas(tmp_path):
    """scikit-learn imports pandas only if it is there (0.36 s of a small run); only MLflow's logging needs it."""
    trees = {}
    for name, source in zip(("load_a", "load_b"), samples()):
        trees[name] = stage_tree(tmp_path / name, data_path=str(source))
        assert own_process(name, trees[name])["status"] == 0
    merged = stage_tree(tmp_path / "merge", datasetA=trees["load_a"] / "outputs" / "datasetA",
                        datasetB=trees["load_b"] / "outputs" / "datasetB")
    assert own_process("merge", merged)["status"] == 0
    processed = stage_tree(tmp_path / "process", merged_data=merged / "outputs" / "merged_data")
    assert own_process("process", processed)["status"] == 0
    settings = {"epochs": "2", "batch_size": "32", "learning_rate": "0.05", "hidden_layers": "16", "seed": "42",
                "test_fraction": "0.2", "early_stopping": "0"}
    report = own_process("train", stage_tree(tmp_path / "train", processed_data=processed / "outputs" /
                                             "processed_data", **settings), MLFLOW_TRACKING_URI="")
    assert report["status"] == 0 and "pandas" not in loaded_modules(report["modules"])
    assert (tmp_path / "train" / "outputs" / "model").is_file()


def test_with_a_cluster_a_data_stage_keeps_pandas_for_dask(tmp_path, monkeypatch):
    """keep_pandas_out steps aside when the job has a cluster (Dask works on pandas frames)."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delitem(sys.modules, "pandas", raising=False)
    from stageflow.runtime import cluster

    cluster.keep_pandas_out({cluster.HOST_ENV: "127.0.0.1", cluster.PORT_ENV: "8786"})
    import pandas  # noqa: F401 - importable still
    monkeypatch.delitem(sys.modules, "pandas")
    cluster.keep_pandas_out({})
    with pytest.raises(ModuleNotFoundError, match="kept out of this stage's process"):
        import pandas  # noqa: F401,F811


def test_merge_of_sources_sharing_no_id_never_loads_its_engine(tmp_path):
    """The streamed merge needs DuckDB only for Ids both sources hold (0.1 s and 48 MiB otherwise)."""
    a = write_snapshot(tmp_path / "a", table([(1, "Iris-setosa"), (2, "Iris-setosa")]))
    b = write_snapshot(tmp_path / "b", table([(3, "Iris-setosa"), (4, "Iris-versicolor")]))
    report = own_process("merge", stage_tree(tmp_path / "merge", datasetA=a, datasetB=b))
    assert report["status"] == 0
    merged = dataset.Snapshot(tmp_path / "merge" / "outputs" / "merged_data", "merged_data")
    assert merged.column("Id").to_pylist() == [1, 2, 3, 4]
    assert "duckdb" not in loaded_modules(report["modules"])
