"""The whole flow through the local runner (process backend), DAG taken from flow.py."""

import json
import os
import re
import subprocess
import sys

import pytest

from stageflow import dag as dag_module
from stageflow.registry import STAGES
from stageflow.rundir import RunDir
from stageflow.backends import HostBackend, ProcessHandle
from stageflow.runtime.contract import StageError
from stageflow.runner import Run, RunError

from stageflow.runtime import contract, schema as schemas

from conftest import (ROOT, TRAIN_DEFAULTS, assert_self_contained, bad_source, downstream, fenced, references,
                      sample_rows, samples, source_rows)

DATA_A, DATA_B = samples()  # the active schema's: the bundled iris sample by default


def stageflow(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "stageflow", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def flow_dag():
    return dag_module.load()


def test_dag_comes_from_flow_py(flow_dag):
    assert [n.name for n in flow_dag.nodes] == list(STAGES)  # the registry lists them in flow.py's order
    merge = flow_dag.node("merge")
    assert {k: (s.stage, s.output) for k, (_, s) in merge.inputs.items() if s.stage} == {
        "datasetA": ("load_a", "datasetA"), "datasetB": ("load_b", "datasetB")}
    for node in flow_dag.nodes:  # the schema travels as a constant input, captured when flow.py is compiled
        assert node.inputs["schema"][1].value == schemas.text() == schemas.path().read_text()
    train = flow_dag.node("train")
    settings = ["epochs", "batch_size", "learning_rate", "hidden_layers", "seed", "test_fraction", "early_stopping"]
    assert {k: s.flow_input for k, (_, s) in train.inputs.items() if s.flow_input} == {k: k for k in settings}
    assert list(train.outputs) == ["model", "metrics", "report"]
    assert flow_dag.defaults == {"epochs": 10, "batch_size": 32, "learning_rate": 0.05, "hidden_layers": "16",
                                 "seed": 42, "test_fraction": 0.2, "early_stopping": 0}
    assert {k: contract.format_value(v) for k, v in flow_dag.defaults.items() if k in TRAIN_DEFAULTS} == TRAIN_DEFAULTS
    assert {k: (s.stage, s.output) for k, s in flow_dag.outputs.items()} == {
        "model": ("train", "model"), "metrics": ("train", "metrics"), "report": ("train", "report")}


FAKE_ARTIFACT_PLUGIN = """
from typing import Annotated, TypeVar
from flytekit.types.file import FlyteFile
MODEL, REPORT = "model", "report"
class Artifact:
    def __init__(self, name, type):
        self.name, self.type = name, type
    def File(self, name, type=None):
        return Annotated[FlyteFile[TypeVar(type)], ("domino artifact", self.name, self.type, name)]
"""


def test_report_is_a_domino_report_artifact_where_the_plugin_has_artifacts(tmp_path):
    """With the plugin's artifact module importable, flow.py marks the flow's report output with it."""
    plugin = tmp_path / "flytekitplugins" / "domino"
    plugin.mkdir(parents=True)
    (plugin / "artifact.py").write_text(FAKE_ARTIFACT_PLUGIN)
    code = ("import typing, flow; kind = flow.model_training.python_interface.outputs['report']; "
            "print(typing.get_args(kind)[1:])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(('domino artifact', 'Training report', 'report', 'report.html'),)"


def test_without_the_plugin_the_report_is_a_plain_html_file():
    from stageflow.domino.plugin import REPORT, Artifact

    assert Artifact("Training report", REPORT).File(name="report.html").extension() == "html"
    assert Artifact("Training report", REPORT).File(name="page", type="htm").extension() == "htm"


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = stageflow("run", "--run-dir", str(run_dir))
    return run_dir, proc


def test_bundled_run_succeeds_and_reports(bundled_run):
    run_dir, proc = bundled_run
    assert proc.returncode == 0, proc.stderr
    assert f"run report:      {run_dir}/report.html" in proc.stdout
    for name, extension in (("model", "skops"), ("metrics", "json"), ("report", "html")):
        assert f"{name + ':':16} {run_dir}/outputs/{name}.{extension}" in proc.stdout
    assert "tracking:        off (MLFLOW_TRACKING_URI is not set)" in proc.stdout
    metrics = json.loads((run_dir / "outputs" / "metrics.json").read_text())
    headline = proc.stdout[proc.stdout.index("metrics headline:"):].splitlines()
    assert [line.split("  ")[1] for line in headline[1:]] == list(metrics["headline"])  # all of it, in order
    assert "  hold-out accuracy  " in proc.stdout and f"  F1 {metrics['classes'][0]}  " in proc.stdout
    assert "[load_a]" in proc.stdout and "[train]" in proc.stdout  # streamed, prefixed by stage


def test_bundled_run_metrics(bundled_run):
    run_dir, _ = bundled_run
    metrics = json.loads((run_dir / "train" / "outputs" / "metrics").read_text())
    assert metrics["accuracy"] >= 0.9 and metrics["macro_f1"] >= 0.9
    schema = schemas.active()
    assert metrics["classes"] == sorted(schema.classes)  # iris: setosa, versicolor, virginica
    assert metrics["n_train"] + metrics["n_test"] == sample_rows()  # iris: 150
    counts = metrics["class_counts"]
    assert metrics["n_test"] == sum(max(1, round(0.2 * (counts["train"][name] + counts["test"][name])))
                                    for name in counts["test"])  # iris: 30
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_test"]
    assert (metrics["epochs"], metrics["batch_size"]) == (10, 32) and len(metrics["loss_per_epoch"]) == 10
    assert metrics["feature_names"] == list(schema.features) and schema.key not in metrics["feature_names"]


def test_bundled_run_record(bundled_run):
    run_dir, _ = bundled_run
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert set(record["stages"]) == set(STAGES)
    for name, stage in record["stages"].items():
        assert stage["status"] == "succeeded" and (stage["seconds"] > 0 or stage["cached"])
        for digest in [*stage["inputs"].values(), *stage["outputs"].values()]:
            assert len(digest) == 64
    stages = record["stages"]
    assert stages["merge"]["inputs"]["datasetA"] == stages["load_a"]["outputs"]["datasetA"]
    assert stages["train"]["inputs"]["processed_data"] == stages["process"]["outputs"]["processed_data"]
    outputs = {name: run_dir / "outputs" / f"{name}.{extension}"
               for name, extension in (("model", "skops"), ("metrics", "json"), ("report", "html"))}
    assert record["outputs"] == {name: {"path": str(path), "sha256": stages["train"]["outputs"][name]}
                                 for name, path in outputs.items()}
    for name, path in outputs.items():
        assert path.read_bytes() == (run_dir / "train" / "outputs" / name).read_bytes()
        assert not path.stat().st_mode & 0o222  # read-only
        assert path.stat().st_ino != (run_dir / "train" / "outputs" / name).stat().st_ino  # a copy
    assert "model_sha256" not in record


def test_bundled_run_prints_the_summary_table(bundled_run):
    _, proc = bundled_run
    lines = proc.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.split() == ["task", "status", "seconds", "rows",
                                                                          "cached"]))
    assert [line.split()[:2] for line in lines[header + 1:header + 1 + len(STAGES)]] == [
        [name, "succeeded"] for name in STAGES]


def test_run_report_links_resolve_in_the_run_directory(bundled_run):
    run_dir, _ = bundled_run
    page = (run_dir / "report.html").read_text()
    refs = [ref for ref in references(page) if not ref.startswith("#")]
    assert {"outputs/report.html", "outputs/model.skops", "outputs/metrics.json", "logs/train.log",
            "load_a/outputs/datasetA", "run.json"} <= set(refs)
    assert [ref for ref in refs if not (run_dir / ref).is_file()] == []
    assert_self_contained(page)
    headline = json.loads((run_dir / "outputs" / "metrics.json").read_text())["headline"]
    for label, value in headline.items():
        assert f'<div class="label">{label}</div><div class="value">{value}</div>' in page


def test_report_command_rewrites_the_run_report(bundled_run, tmp_path):
    run_dir, _ = bundled_run
    (run_dir / "report.html").unlink()
    proc = stageflow("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir / "report.html")
    assert 'class="status succeeded"' in (run_dir / "report.html").read_text()
    proc = stageflow("report", str(tmp_path))
    assert proc.returncode == 2 and f"{tmp_path} is not a run directory (no run.json)" in proc.stderr


def test_primitive_inputs_are_materialised_as_text(bundled_run):
    run_dir, _ = bundled_run
    assert (run_dir / "train" / "inputs" / "epochs").read_text() == "10"
    assert (run_dir / "load_a" / "inputs" / "data_path").read_text() == str(DATA_A)


def test_model_loads_and_predicts(bundled_run):
    import pyarrow.csv as pcsv

    from stageflow import model as models

    run_dir, _ = bundled_run
    schema = schemas.active()
    model = models.load(run_dir / "outputs" / "model.skops", run_dir / "outputs" / "metrics.json")
    assert list(model.feature_names_in_) == list(schema.features)  # iris: SepalLengthCm, ... PetalWidthCm
    assert list(model.classes_) == sorted(schema.classes)
    rows = pcsv.read_csv(DATA_A).to_pandas()  # the rows of source A, as a user would hand them over
    truth = [schema.canonical(str(label)) for label in rows[schema.label]]
    assert (model.predict(rows[list(schema.features)]) == truth).mean() >= 0.9
    with pytest.raises(ValueError, match="feature names"):
        model.predict(rows[list(schema.features)].rename(columns={next(iter(schema.features)): "renamed"}))


def test_failed_stage_stops_downstream_and_is_reported(tmp_path, flow_dag):
    bad = tmp_path / "b.csv"
    message = bad_source(bad)
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), "--data-path-b", str(bad))
    assert proc.returncode == 1
    assert f"task load_b failed: exit status 1: {message}" in proc.stderr
    assert "--- last 20 lines of" in proc.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    states = {name: s["status"] for name, s in record["stages"].items()}
    assert states == {**{name: "succeeded" for name in STAGES}, "load_b": "failed",
                      **{name: "skipped" for name in downstream(flow_dag, ["load_b"])}}
    assert record["status"] == "failed" and record["outputs"] == {}
    assert os.listdir(tmp_path / "run" / "load_b" / "outputs") == ["_ERROR"]
    page = (tmp_path / "run" / "report.html").read_text()  # written for a failed run too
    assert 'class="status failed"' in page and "No outputs: the flow did not finish." in page
    assert "must be a number" in page
    assert not (tmp_path / "run" / "outputs").exists()


def test_bad_flow_input_stops_before_any_stage(tmp_path):
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), "--epochs", "ten")
    assert proc.returncode == 2
    assert "error: flow input epochs: expected a base-10 integer, found 'ten'" in proc.stderr
    assert not (tmp_path / "run" / "load_a").exists()


EARLY_REFUSALS = {  # a flow input the stage would refuse, refused before any stage runs: option, value, problem
    "epochs 0": ("--epochs", "0", "flow input epochs: must be at least 1, found 0"),
    "batch size too large": ("--batch-size", "99999999999", "flow input batch_size: 99999999999 is more than the "
                             "limit of 10000000"),
    "learning rate 0": ("--learning-rate", "0", "flow input learning_rate: must be a number above 0 and at most 10, "
                        "found 0.0"),
    "hidden layers": ("--hidden-layers", "16,x", "flow input hidden_layers: expected units per layer separated by "
                      "commas, such as 16 or 32,16; found '16,x'"),
    "test fraction": ("--test-fraction", "1.5", "flow input test_fraction: must be a fraction above 0 and below 1 "
                      "(0.2 holds out a fifth), found 1.5"),
    "seed": ("--seed", "-1", "flow input seed: must be at least 0, found -1"),
    "early stopping": ("--early-stopping", "-2", "flow input early_stopping: must be at least 0, found -2"),
    "missing data file": ("--data-path-a", "{tmp}/nowhere.csv", "flow input data_path_a: {tmp}/nowhere.csv does not "
                          "exist"),
    "data path a directory": ("--data-path-b", "{tmp}/dir.csv", "flow input data_path_b: {tmp}/dir.csv is a "
                              "directory, not a regular file"),
    "empty data file": ("--data-path-a", "{tmp}/empty.csv", "flow input data_path_a: {tmp}/empty.csv is empty"),
    "unsupported format": ("--data-path-a", "{tmp}/a.xlsx", "flow input data_path_a: {tmp}/a.xlsx has an unsupported "
                           "extension; expected one of .csv, .csv.gz, .parquet, .pq, .jsonl, .ndjson"),
}


@pytest.mark.parametrize("case", EARLY_REFUSALS)
def test_a_flow_input_a_stage_would_refuse_is_one_line_before_any_stage_or_run_directory(tmp_path, case):
    """Every flow input is checked by the rule its stage applies, in Run.__init__: one line, exit 2, and no run
    directory, rather than a failure of train after every stage upstream of it ran."""
    option, value, problem = (text.format(tmp=tmp_path) for text in EARLY_REFUSALS[case])
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "empty.csv").touch()
    (tmp_path / "a.xlsx").write_text("x")
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), option, value)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, f"error: {problem}\n", "")
    assert not (tmp_path / "run").exists()


def test_a_constant_input_a_stage_would_refuse_names_the_task(flow_dag, tmp_path):
    """The schema's text is a constant input: a broken one is refused before the first stage too."""
    node = flow_dag.node("merge")
    broken = {**node.inputs, "schema": (str, dag_module.Source(value="[key]\ncolumn = 1\n"))}
    dag = dag_module.Dag([dag_module.Node(node.name, node.task, broken, node.outputs, node.formats)], {}, {}, {})
    with pytest.raises(RunError, match=r"^input schema of task merge: schema given as text: features: missing; it "
                                       r"is required$"):
        Run(dag, tmp_path / "run", HostBackend(), {}, echo=False)
    assert not (tmp_path / "run").exists()


def test_second_run_on_a_busy_run_dir_stops_at_once(tmp_path):
    with RunDir(tmp_path, STAGES):
        proc = stageflow("run", "--run-dir", str(tmp_path))
    assert proc.returncode == 2
    assert f"error: run directory {tmp_path} is in use by another run (pid {os.getpid()})" in proc.stderr


def test_stage_that_exits_zero_without_its_output_fails(tmp_path, flow_dag, monkeypatch):
    class Liar(HostBackend):
        def start(self, job, tree, timeout, mounts):
            if job.node.name == "merge":  # a stage script that "succeeds" without writing merged_data
                proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fixtures" / "noop.py")],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                return ProcessHandle(proc, timeout)
            return super().start(job, tree, timeout, mounts)
    (ROOT / "tests" / "fixtures").mkdir(exist_ok=True)
    run = Run(flow_dag, tmp_path, Liar(), {"data_path_a": str(DATA_A), "data_path_b": str(DATA_B)}, echo=False)
    assert not run.execute()
    assert run.results["merge"].error == "exited 0 but did not write declared output merged_data"
    assert run.results["process"].status == "skipped"


def test_unknown_and_missing_flow_inputs(flow_dag, tmp_path):
    with pytest.raises(StageError, match="flow input data_path_b: required but not given"):
        Run(flow_dag, tmp_path, HostBackend(), {"data_path_a": "x"})
    with pytest.raises(StageError, match="flow input colour: not an input of model_training"):
        Run(flow_dag, tmp_path, HostBackend(), {"data_path_a": "x", "data_path_b": "y", "colour": "red"})


def renamed_flow(tmp_path):
    """flow.py with its workflow and its outputs renamed: nothing outside flow.py and train may care."""
    text = (ROOT / "flow.py").read_text()
    renames = [("def model_training(", "def iris_classifier("),
               ('"TrainingOutputs", model=', '"TrainingOutputs", classifier='),
               ("metrics=Json, report=", "scores=Json, page="),
               ('TrainingOutputs(model=train["model"], metrics=train["metrics"], report=train["report"])',
                'TrainingOutputs(classifier=train["model"], scores=train["metrics"], page=train["report"])')]
    for old, new in renames:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "renamed_flow.py"
    path.write_text(text)
    return path


def test_a_flow_with_renamed_workflow_and_outputs_runs(tmp_path):
    run_dir = tmp_path / "run"
    proc = stageflow("run", "--flow", str(renamed_flow(tmp_path)), "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert record["flow"] == "iris_classifier" and record["status"] == "succeeded"
    files = {"classifier": "classifier.skops", "scores": "scores.json", "page": "page.html"}
    assert record["outputs"] == {name: {"path": str(run_dir / "outputs" / file),
                                        "sha256": record["stages"]["train"]["outputs"][stage_output]}
                                 for (name, file), stage_output in zip(files.items(), ["model", "metrics", "report"])}
    assert f"running flow iris_classifier (host backend) in {run_dir}" in proc.stdout
    for name, file in files.items():
        assert f"{name + ':':16} {run_dir / 'outputs' / file}" in proc.stdout
    assert "scores headline:" in proc.stdout and "  hold-out accuracy  " in proc.stdout
    proc = stageflow("report", str(run_dir), "--flow", str(tmp_path / "renamed_flow.py"))
    assert proc.returncode == 0, proc.stderr
    assert 'href="outputs/page.html"' in (run_dir / "report.html").read_text()


def test_a_stage_the_registry_does_not_know_is_one_line(tmp_path):
    flow = tmp_path / "flow.py"
    text = (ROOT / "flow.py").read_text()
    assert text.count('**job("process")') == 1
    flow.write_text(text.replace('**job("process")', '**job("profile")'))
    proc = stageflow("run", "--flow", str(flow), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: stage 'profile' is used in flow.py but not defined in stageflow/registry.py")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_workflow_is_found_or_named(tmp_path):
    flow = renamed_flow(tmp_path)
    two = tmp_path / "two.py"
    two.write_text(flow.read_text() + "\n\n@workflow\ndef other(data_path_a: str) -> str:\n    return data_path_a\n")
    assert dag_module.load(two, "iris_classifier").name == "iris_classifier"
    proc = stageflow("run", "--flow", str(two), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (f"error: flow file {two}: defines several workflows (iris_classifier, other); "
                           f"name the one to run (stageflow run FLOW.py WORKFLOW, or --workflow NAME)\n")
    proc = stageflow("run", "--flow", str(two), "--workflow", "nope", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr == f"error: flow file {two}: no @workflow named nope (defined: iris_classifier, other)\n"
    none = tmp_path / "none.py"
    none.write_text("from flytekit import workflow\n")
    proc = stageflow("run", "--flow", str(none), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and proc.stderr == f"error: flow file {none}: defines no @workflow\n"
    assert not (tmp_path / "run").exists()


def test_the_guides_cell_loads_the_model_and_scores_new_data(bundled_run, tmp_path):
    """docs/failures.md's cell, as written, where a user runs it: beside runs/ (its data file: the active
    schema's sample source A, the bundled iris one by default)."""
    run_dir, _ = bundled_run
    cell = next(block for block in fenced(ROOT / "docs" / "failures.md", "python") if "predict_proba" in block)
    assert '"data/source_a.csv"' in cell
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(run_dir)
    cell = cell.replace('pd.read_csv("data/source_a.csv")', f"pd.read_{'parquet' if DATA_A.suffix == '.parquet' else 'csv'}({str(DATA_A)!r})")
    proc = subprocess.run([sys.executable, "-c", cell + "\nprint(len(scored), sorted(map(str, set(scored.predicted))))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    rows, classes = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    metrics = json.loads((run_dir / "outputs" / "metrics.json").read_text())
    assert int(rows) == source_rows(DATA_A) and set(eval(classes)) <= set(metrics["classes"])


def many_classes(tmp_path, classes, rows):
    """A data set with `classes` classes spread over `rows` rows in two CSV sources, and its schema."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    codes = np.arange(rows) % classes
    x = np.random.default_rng(0).normal(codes[:, None] * 0.01, 1.0, (rows, 2))
    table = pa.table({"Id": np.arange(1, rows + 1), "a": x[:, 0], "b": x[:, 1],
                      "kind": [f"class-{code:05d}" for code in codes]})
    pcsv.write_csv(table.slice(0, rows // 2), tmp_path / "a.csv")
    pcsv.write_csv(table.slice(rows // 2), tmp_path / "b.csv")
    (tmp_path / "schema.toml").write_text('[key]\ncolumn = "Id"\n[features]\na = "float"\nb = "float"\n'
                                          '[label]\ncolumn = "kind"\n[samples]\ndata_path_a = "a.csv"\n'
                                          'data_path_b = "b.csv"\n')
    return tmp_path / "schema.toml"


def tree_size(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_1500_classes_in_7500_rows_give_outputs_bounded_by_the_input(tmp_path):
    """Issue 20's case: the report was 324 MB, the metrics 20 MB, the run directory and cache about 1 GB.
    Each output stays within its bound (docs/failures.md, "Bounded by the input"), and says what it left out."""
    schema = many_classes(tmp_path, 1500, 7500)
    env = {**os.environ, schemas.ENV: str(schema), "STAGEFLOW_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    outputs = run_dir / "outputs"
    assert (outputs / "report.html").stat().st_size < 400_000
    assert (outputs / "metrics.json").stat().st_size < 600_000
    assert tree_size(run_dir) < 10_000_000 and tree_size(tmp_path / "cache") < 5_000_000
    assert len(proc.stdout.splitlines()) < 60  # stages, table, outputs, headline: none of it per class
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert len(metrics["per_class"]) == len(metrics["classes"]) == 1500  # every class kept here
    assert "confusion_matrix" not in metrics and sum(n for *_, n in metrics["confusion_nonzero"]) == metrics["n_test"]
    assert len(metrics["confusion_nonzero"]) <= metrics["n_test"]
    assert [label for label in metrics["headline"] if label.startswith("F1")] == []
    assert any(label.startswith("lowest F1 of 1,500 classes (") for label in metrics["headline"])
    assert "lowest F1 of 1,500 classes" in proc.stdout  # the headline is printed: it fits the summary's read
    page = (outputs / "report.html").read_text()
    assert page.count("the 30 largest of 1,500 classes (metrics.json holds every class)") == 2
    assert "The 25 classes with the lowest F1 of 1,500; F1 over all of them: lowest" in page
    drawings = re.findall(r'<svg class="plot".*?</svg>', page, re.S)
    cells = re.findall(r"<title>true ", drawings[0])
    assert len(cells) == 30 * 30
    assert_self_contained(page)


def test_an_edit_of_the_schema_reaches_the_stages_without_a_stale_compiled_dag(tmp_path, monkeypatch):
    """The compiled DAG is cached; the schema's text is in it, so its content is part of the cache's key."""
    schema = tmp_path / "schema.toml"
    schema.write_text(schemas.path().read_text())
    monkeypatch.setenv(schemas.ENV, str(schema))
    assert dag_module.load().node("merge").inputs["schema"][1].value == schema.read_text()
    schema.write_text(schema.read_text() + "\n# edited\n")
    assert dag_module.load().node("merge").inputs["schema"][1].value.endswith("# edited\n")


def test_the_runner_starts_without_the_stages_libraries():
    """`stageflow run` imports what runs the flow, not what the stages compute with: pyarrow and numpy cost
    the runner 0.5 s before its first stage (runtime.cluster imported them for its variable names)."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from stageflow import backends, cli, dag, dask_cluster, "
                           "jobs, runner; cli.setup_from({}, cli.FLOW); print(sorted({m.partition('.')[0] for m in "
                           "sys.modules} & {'pyarrow', 'numpy', 'pandas', 'duckdb', 'flytekit'}))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_host_backend_gives_the_stages_the_packages_bytecode(tmp_path, monkeypatch):
    """As an install and the images have it: with PYTHONDONTWRITEBYTECODE=1 each stage process would compile
    the runtime from source, every time."""
    import importlib.util

    from stageflow import backends

    package = tmp_path / "package"
    (package / "runtime").mkdir(parents=True)
    modules = [package / "__init__.py", package / "runtime" / "contract.py"]
    for path in modules:
        path.write_text("VALUE = 1\n")
    monkeypatch.setattr(backends, "PACKAGE", package)
    HostBackend().prepare_run(tmp_path, 0)
    for path in modules:
        assert os.path.isfile(importlib.util.cache_from_source(str(path))), path
