"""Every bad input through the real stage entrypoint: one line naming the input and the problem in
_ERROR, a non-zero exit, no other output, and the input left exactly as it was."""

import gzip
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys

import pyarrow as pa
import pytest

from stageflow.runtime import dataset

from conftest import IRIS_FEATURES, ROOT, write_settings, write_snapshot

pytestmark = pytest.mark.iris  # iris columns, labels and messages

IRIS_HEADER = "Id,SepalLengthCm,SepalWidthCm,RandomColumn,PetalLengthCm,PetalWidthCm,Species"
ROWS = ["1,5.1,3.5,0.1,1.4,0.2,Iris-setosa", "2,7.0,3.2,0.2,4.7,1.4,Iris-versicolor",
        "3,6.3,3.3,0.3,6.0,2.5,Iris-virginica"]


def run_stage(tree, stage):
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / stage / "main.py")], cwd=ROOT, timeout=120,
                          env={**os.environ, "WORKFLOW_ROOT": str(tree), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    outputs = sorted(os.listdir(tree / "outputs")) if (tree / "outputs").exists() else []
    error = (tree / "outputs" / "_ERROR").read_text() if "_ERROR" in outputs else None
    return proc, outputs, error


def digest_tree(path):
    """Contents of regular files, the target of links and the kind of anything else (reading a FIFO blocks)."""
    if path.is_symlink():
        return "link to " + os.readlink(path)
    if path.is_dir():
        return {p.name: digest_tree(p) for p in sorted(path.iterdir())}
    if not path.is_file():
        return f"mode {stat.S_IFMT(path.stat().st_mode):o}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(tree, stage, message, watched):
    before = {str(p): digest_tree(p) for p in watched}
    proc, outputs, error = run_stage(tree, stage)
    assert proc.returncode == 1, proc.stderr
    assert outputs == ["_ERROR"], outputs
    assert error == message + "\n"
    assert error.count("\n") == 1  # one line
    assert message in proc.stderr  # also in the job's log
    assert {str(p): digest_tree(p) for p in watched} == before  # inputs untouched


def make_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "inputs").mkdir(parents=True)
    (tree / "outputs").mkdir()
    return tree


# ------------------------------------------------------------------------------------------ data_path


def junk(path):
    path.write_bytes(bytes(range(256)) * 8)


def truncated_gzip(path):
    data = gzip.compress(("\n".join([IRIS_HEADER] + ROWS * 200) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])


def text(body):
    return lambda path: path.write_text(body)


def bound_socket(path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the socket file stays after the socket closes


NOT_A_FILE = "input data_path: {path} is %s, not a regular file"


DATA_PATH_CASES = {
    "missing file": ("absent.csv", None, "input data_path: {path} does not exist"),
    "directory": ("dir.csv", lambda p: p.mkdir(), NOT_A_FILE % "a directory"),
    "fifo": ("fifo.csv", os.mkfifo, NOT_A_FILE % "a FIFO (named pipe)"),
    "socket": ("sock.csv", bound_socket, NOT_A_FILE % "a socket"),
    "link to a device": ("null.csv", lambda p: p.symlink_to("/dev/null"),
                         NOT_A_FILE % "a link to /dev/null, a character device"),
    "only blank lines": ("blank.csv", text("\n\n\n"), "input data_path: {path} has only blank lines; expected a "
                         "header row naming the columns, then data rows"),
    "header missing": ("nohead.csv", text("5.1,3.5,1.4,0.2,Iris-setosa\n4.9,3.0,1.4,0.2,Iris-setosa\n"),
                       "input data_path: {path}: the header row is missing: the first row (5.1, 3.5, 1.4, 0.2, "
                       "Iris-setosa) looks like data; the first line must name the columns Id, SepalLengthCm, "
                       "SepalWidthCm, PetalLengthCm, PetalWidthCm, Species (and optionally RandomColumn), in any "
                       "order"),
    "a line longer than a block": ("long.csv", text(IRIS_HEADER + "\n" + ROWS[0] + "\n2,7.0,3.2,0.2,4.7,1.4," +
                                                    "x" * (2 << 20) + "\n"),
                                   "input data_path: {path}: a line after row 1 is longer than 1 MiB, the most a row "
                                   "may take: is this a CSV file with one row per line?"),
    "a header longer than a block": ("wide.csv", text(",".join(f"c{i}" for i in range(200_000)) + "\n1\n"),
                                     "input data_path: {path}: its first line is longer than 1 MiB, too long for "
                                     "a header naming the schema's columns: is this a CSV file with one row per line?"),
    "a hundred thousand columns": ("many.csv", text(",".join(f"x{i}" for i in range(100_000)) + "\n" +
                                                    ",".join("1" * 100_000) + "\n"),
                                   "input data_path: {path}: missing required column Id, SepalLengthCm, "
                                   "SepalWidthCm, PetalLengthCm, PetalWidthCm, Species (found x0, x1, x2, x3, x4, "
                                   "x5, x6, x7, x8, x9 and 99990 more)"),
    "empty file": ("empty.csv", text(""), "input data_path: {path} is empty"),
    "header only": ("header.csv", text(IRIS_HEADER + "\n"), "input data_path: {path} has a header but no data rows"),
    "unsupported extension": ("data.xlsx", text("x"), "input data_path: {path} has an unsupported extension; "
                              "expected one of .csv, .csv.gz, .parquet, .pq, .jsonl, .ndjson"),
    # What a path is comes before what it is called (issue 20: a directory was an "unsupported extension", and
    # the CLI named a link's target, /dev/null for /dev/stdin, instead of the path given).
    "a directory": ("folder", lambda path: path.mkdir(), "input data_path: {path} is a directory, not a regular file"),
    "a link to a device": ("stdin", lambda path: path.symlink_to("/dev/null"),
                           "input data_path: {path} is a link to /dev/null, a character device, not a regular file"),
    "a dangling link": ("dangling.csv", lambda path: path.symlink_to(path.parent / "nowhere.csv"),
                        "input data_path: {path} is a link that cannot be followed (No such file or directory)"),
    "binary junk as csv": ("junk.csv", junk, None),
    "binary junk as parquet": ("junk.parquet", junk, None),
    "truncated csv.gz": ("cut.csv.gz", truncated_gzip, None),
    "missing column": ("nocol.csv", text("Id,SepalLengthCm,SepalWidthCm,PetalLengthCm,Species\n1,1,1,1,setosa\n"),
                       "input data_path: {path}: missing required column PetalWidthCm (found Id, SepalLengthCm, "
                       "SepalWidthCm, PetalLengthCm, Species)"),
    "unknown column": ("extra.csv", text(IRIS_HEADER + ",Colour\n" + ROWS[0] + ",red\n"),
                       "input data_path: {path}: unknown column Colour; expected only Id, SepalLengthCm, "
                       "SepalWidthCm, PetalLengthCm, PetalWidthCm, RandomColumn, Species"),
    "non-numeric feature": ("word.csv", text(IRIS_HEADER + "\n" + ROWS[0] + "\n2,7.0,wide,0.2,4.7,1.4,setosa\n"),
                            "input data_path: {path}: column SepalWidthCm must be a number in every row, "
                            "found 'wide' in row 2"),
    "non-integer id": ("frac.csv", text(IRIS_HEADER + "\n1.5,7.0,3.2,0.2,4.7,1.4,setosa\n"),
                       "input data_path: {path}: column Id must be an integer in every row, found '1.5' in row 1"),
    "missing id": ("noid.csv", text(IRIS_HEADER + "\n" + ROWS[0] + "\n,7.0,3.2,0.2,4.7,1.4,setosa\n"),
                   "input data_path: {path}: column Id is empty in 1 row(s); every row needs an integer Id"),
    "duplicate ids": ("dup.csv", text(IRIS_HEADER + "\n" + ROWS[0] + "\n" + ROWS[0] + "\n"),
                      "input data_path: {path}: duplicate Id 1 (1 Id(s) appear more than once)"),
}


@pytest.mark.parametrize("case", DATA_PATH_CASES)
def test_bad_source_is_refused(tmp_path, case):
    name, writer, message = DATA_PATH_CASES[case]
    source = tmp_path / "src" / name
    source.parent.mkdir()
    if writer:
        writer(source)
    tree = make_tree(tmp_path)
    (tree / "inputs" / "data_path").write_text(str(source))
    if message is None:  # the parser's own words vary; the line must still name the input and the format
        proc, outputs, error = run_stage(tree, "load_a")
        assert proc.returncode == 1 and outputs == ["_ERROR"] and error.count("\n") == 1
        assert error.startswith(f"input data_path: {source} is not a valid ")
        assert error[:-1].isprintable()
        return
    assert_refused(tree, "load_a", message.format(path=source), [source.parent])


ACCEPTED = {
    "utf-8 bom": lambda: ("\ufeff" + IRIS_HEADER + "\n" + "\n".join(ROWS) + "\n").encode("utf-8"),
    "crlf line endings": lambda: ("\r\n".join([IRIS_HEADER] + ROWS) + "\r\n").encode(),
    "quoted fields": lambda: (IRIS_HEADER + "\n" + "\n".join(
        '"{}","{}","{}","{}","{}","{}","{}"'.format(*r.split(",")) for r in ROWS) + "\n").encode(),
    "columns in another order": lambda: ("Species,PetalWidthCm,PetalLengthCm,RandomColumn,SepalWidthCm,"
                                         "SepalLengthCm,Id\n" + "\n".join(",".join(reversed(r.split(",")))
                                                                         for r in ROWS) + "\n").encode(),
    "whitespace in labels": lambda: (IRIS_HEADER + "\n" + "\n".join(
        r.replace("Iris-", "  Iris-") + "  " for r in ROWS) + "\n").encode(),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted_source_variants_load_and_process(tmp_path, case):
    source = tmp_path / "src.csv"
    source.write_bytes(ACCEPTED[case]())
    tree = make_tree(tmp_path)
    (tree / "inputs" / "data_path").write_text(str(source))
    proc, outputs, _ = run_stage(tree, "load_a")
    assert proc.returncode == 0, proc.stderr
    table = dataset.Snapshot(tree / "outputs" / "datasetA", "datasetA").read()
    assert table.column("Id").to_pylist() == [1, 2, 3]
    assert table.column("SepalLengthCm").to_pylist() == [5.1, 7.0, 6.3]
    ptree = make_tree(tmp_path / "p")
    os.link(tree / "outputs" / "datasetA", ptree / "inputs" / "merged_data")
    proc, outputs, _ = run_stage(ptree, "process")
    assert proc.returncode == 0, proc.stderr
    labels = dataset.Snapshot(ptree / "outputs" / "processed_data", "p").read().column("Species").to_pylist()
    assert labels == ["setosa", "versicolor", "virginica"]


# ------------------------------------------------------------------------------------------ merge


def snapshot(path, rows, **overrides):
    cols = {"Id": [r[0] for r in rows]}
    for i, name in enumerate(IRIS_FEATURES):
        cols[name] = [1.0 + r[0] + i for r in rows]
    cols["RandomColumn"] = [0.5] * len(rows)
    cols["Species"] = [r[1] for r in rows]
    cols.update(overrides)
    write_snapshot(path, pa.table(cols), {"source": {"sha256": "0" * 64, "rows": len(rows), "format": "csv"}})


def test_merge_refuses_different_types(tmp_path):
    """Snapshots are cast to the schema's types on read, so a type clash surfaces as the value that fails."""
    import pyarrow.parquet as pq

    tree = make_tree(tmp_path)
    snapshot(tree / "inputs" / "datasetA", [(1, "setosa")])
    pq.write_table(pa.table({"Id": [2], **{f: ["wide"] for f in IRIS_FEATURES}, "RandomColumn": [0.1],
                             "Species": ["setosa"]}), tree / "inputs" / "datasetB")
    assert_refused(tree, "merge", "input datasetB: column SepalLengthCm must be a number in every row, "
                   "found 'wide' in row 1", [tree / "inputs"])


def test_merge_refuses_conflicting_ids(tmp_path):
    tree = make_tree(tmp_path)
    snapshot(tree / "inputs" / "datasetA", [(1, "setosa"), (2, "setosa")])
    snapshot(tree / "inputs" / "datasetB", [(1, "setosa"), (2, "virginica")])
    assert_refused(tree, "merge", "merge: Id 2 (1 in all) have different values in datasetA and datasetB; "
                                  "Id 2: Species is 'setosa' in datasetA but 'virginica' in datasetB",
                   [tree / "inputs"])


# ------------------------------------------------------------------------------------------ process/train


def test_process_refuses_when_every_row_is_invalid(tmp_path):
    tree = make_tree(tmp_path)
    snapshot(tree / "inputs" / "merged_data", [(1, "setosa"), (2, "virginica")], PetalWidthCm=[None, float("nan")])
    assert_refused(tree, "process", "input merged_data: all 2 rows were dropped (PetalWidthCm missing in 1, "
                   "PetalWidthCm NaN in 1); nothing is left to train on", [tree / "inputs"])


def test_process_refuses_an_unknown_label(tmp_path):
    tree = make_tree(tmp_path)
    snapshot(tree / "inputs" / "merged_data", [(1, "setosa"), (2, "Iris-setsoa")])
    assert_refused(tree, "process", "input merged_data: column Species has unknown label 'setsoa' in 1 row(s); "
                   "expected one of setosa, versicolor, virginica", [tree / "inputs"])


def train_tree(tmp_path, rows, epochs="10", batch_size="32"):
    tree = make_tree(tmp_path)
    snapshot(tree / "inputs" / "processed_data", rows)
    write_settings(tree, epochs=epochs, batch_size=batch_size)
    return tree


BALANCED = [(i, ("setosa", "versicolor", "virginica")[i % 3]) for i in range(1, 31)]

TRAIN_CASES = {
    "single class": ([(i, "setosa") for i in range(1, 11)], "10", "32",
                     "input processed_data: only one class (setosa) is left; a classifier needs at least two"),
    "too few rows": ([(1, "setosa"), (2, "setosa"), (3, "virginica")], "10", "32",
                     "input processed_data: 3 rows are too few for a stratified hold-out split (virginica has 1 "
                     "row(s); every class needs at least 2, one to train on and one to test)"),
    "epochs 0": (BALANCED, "0", "32", "input epochs: must be at least 1, found 0"),
    "epochs negative": (BALANCED, "-5", "32", "input epochs: must be at least 1, found -5"),
    "epochs not an integer": (BALANCED, "ten", "32", "input epochs: expected a base-10 integer, found 'ten'"),
    "epochs fractional": (BALANCED, "2.5", "32", "input epochs: expected a base-10 integer, found '2.5'"),
    "epochs absurd": (BALANCED, "99999999999", "32", "input epochs: 99999999999 is more than the limit of 10000"),
    "batch_size 0": (BALANCED, "10", "0", "input batch_size: must be at least 1, found 0"),
    "batch_size negative": (BALANCED, "10", "-1", "input batch_size: must be at least 1, found -1"),
    "batch_size not an integer": (BALANCED, "10", "32 rows", "input batch_size: expected a base-10 integer, "
                                  "found '32 rows'"),
    "batch_size absurd": (BALANCED, "10", "10000000000", "input batch_size: 10000000000 is more than the limit "
                          "of 10000000"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_bad_training_input_is_refused(tmp_path, case):
    rows, epochs, batch_size, message = TRAIN_CASES[case]
    tree = train_tree(tmp_path, rows, epochs, batch_size)
    assert_refused(tree, "train", message, [tree / "inputs"])


def test_batch_size_larger_than_the_training_set_is_one_full_batch(tmp_path):
    tree = train_tree(tmp_path, BALANCED, "3", "1000")
    proc, outputs, _ = run_stage(tree, "train")
    assert proc.returncode == 0, proc.stderr
    assert "batch_size 1000 is more than the 24 training rows: each epoch is one full batch" in proc.stderr
    metrics = json.loads((tree / "outputs" / "metrics").read_text())
    assert (metrics["batch_size"], metrics["effective_batch_size"]) == (1000, 24)


# ------------------------------------------------------------------------------------------ contract


def test_input_symlink_out_of_the_tree_is_refused(tmp_path):
    tree = make_tree(tmp_path)
    outside = tmp_path / "outside.parquet"
    snapshot(outside, [(1, "setosa")])
    (tree / "inputs" / "merged_data").symlink_to(outside)
    assert_refused(tree, "process", f"input merged_data: is a symlink to {outside}, outside the workflow tree {tree}",
                   [outside])


def test_output_name_taken_by_a_directory_is_refused(tmp_path):
    tree = make_tree(tmp_path)
    snapshot(tree / "inputs" / "merged_data", BALANCED)
    (tree / "outputs" / "processed_data").mkdir()
    proc, outputs, error = run_stage(tree, "process")
    assert proc.returncode == 1
    assert error == f"output processed_data: {tree}/outputs/processed_data already exists as a directory\n"
    assert outputs == ["_ERROR", "processed_data"]  # the directory is not ours to delete
