"""MLflow tracking from the train stage, against a real local MLflow file store, read back with the client."""

import json
import os
import socket
import subprocess
import sys

import pytest
import sklearn

from stageflow.runtime import contract, schema as schemas, tracking

from conftest import ROOT, fenced, load_stage, source_table, write_settings, write_snapshot

train = load_stage("train")
OUTPUTS = ["model", "metrics", "report"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow file store (MLflow 3 keeps the file backend behind an explicit opt-in)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "stageflow-test")
    return tmp_path / "mlruns"


def logged_run():
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("stageflow-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_train_stage_logs_params_metrics_loss_and_files(train_root, store, tmp_path):
    write_settings(train_root, epochs=5, batch_size=16, learning_rate=0.01, hidden_layers="8,4", seed=7)
    assert contract.run(train.train, OUTPUTS) == 0
    client, run = logged_run()
    outputs = train_root / "outputs"
    metrics = json.loads((outputs / "metrics").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert {k: run.data.params[k] for k in ("epochs", "batch_size", "seed", "n_test", "learning_rate",
                                             "hidden_layers", "test_fraction", "early_stopping", "scikit_learn")} == {
        "epochs": "5", "batch_size": "16", "seed": "7", "n_test": "12", "learning_rate": "0.01",
        "hidden_layers": "(8, 4)", "test_fraction": "0.2", "early_stopping": "0", "scikit_learn": sklearn.__version__}
    assert metrics["tracking"] == {"status": "logged", "run_id": run.info.run_id, "experiment": "stageflow-test",
                                   "experiment_id": run.info.experiment_id, "tracking_uri": store.as_uri()}
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    first = metrics["classes"][0]
    assert run.data.metrics[f"f1_{first}"] == pytest.approx(metrics["per_class"][first]["f1"])
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert [m.value for m in history] == pytest.approx(metrics["loss_per_epoch"])
    holdout = sorted(client.get_metric_history(run.info.run_id, "holdout_loss"), key=lambda m: m.step)
    assert [m.value for m in holdout] == pytest.approx(metrics["holdout_loss_per_epoch"]) and len(holdout) == 5
    assert run.data.tags["model_sha256"] == metrics["model_sha256"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["metrics.json", "model.skops",
                                                                              "report.html"]
    for name, output in (("report.html", "report"), ("model.skops", "model")):
        local = client.download_artifacts(run.info.run_id, name, str(tmp_path))
        assert open(local, "rb").read() == (outputs / output).read_bytes()
    logged = json.loads(open(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))).read())
    assert logged == {k: v for k, v in metrics.items() if k != "tracking"}  # all but where it was logged


def test_the_sources_are_logged_as_datasets_with_their_sha256_and_rows(train_root, store):
    table = source_table(range(1, 61)).drop_columns(list(schemas.active().dropped))
    sources = [{"input": "datasetA", "sha256": "a" * 64, "rows": 31, "format": "csv"},
               {"input": "datasetB", "sha256": "b" * 64, "rows": 30, "format": "parquet"}]
    write_snapshot(train_root / "inputs" / "processed_data", table,
                   {"sources": sources, "rows": 60, "dropped": 1, "dropped_by": {"x missing": 1}, "overlap": 0})
    assert contract.run(train.train, OUTPUTS) == 0
    _, run = logged_run()
    logged = {entry.dataset.name: entry for entry in run.inputs.dataset_inputs}
    assert set(logged) == {"datasetA", "datasetB"}
    for source in sources:
        entry = logged[source["input"]]
        assert entry.dataset.digest == source["sha256"][:36]
        tags = {t.key: t.value for t in entry.tags}
        assert {k: tags.get(k) for k in ("sha256", "rows", "format", "mlflow.data.context")} == {
            "sha256": source["sha256"], "rows": str(source["rows"]), "format": source["format"],
            "mlflow.data.context": "source"}


def test_the_model_is_logged_in_mlflows_format_with_signature_and_input_example(train_root, store):
    import mlflow

    from stageflow.runtime import modelfile

    assert contract.run(train.train, OUTPUTS) == 0
    _, run = logged_run()
    loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert set(loaded.metadata.flavors) == {"python_function", "sklearn"}
    features = list(schemas.active().features)
    assert loaded.metadata.signature.inputs.input_names() == features
    assert loaded.metadata.saved_input_example_info["type"] == "dataframe"
    rows = source_table([1, 2]).select(features).to_pandas()
    saved = modelfile.loads((train_root / "outputs" / "model").read_bytes())
    assert list(loaded.predict(rows)) == list(saved.predict(rows))


def test_the_model_is_registered_under_the_name_asked_for(train_root, store, monkeypatch):
    import mlflow

    monkeypatch.setenv("STAGEFLOW_REGISTERED_MODEL", "iris-classifier")
    assert contract.run(train.train, OUTPUTS) == 0
    _, run = logged_run()
    versions = mlflow.MlflowClient().search_model_versions("name='iris-classifier'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]


def test_on_domino_the_default_experiment_is_the_projects_and_users(train_root, store, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    for name, value in (("DOMINO_PROJECT_OWNER", "ada"), ("DOMINO_PROJECT_NAME", "iris-flows"),
                        ("DOMINO_STARTING_USERNAME", "bob")):
        monkeypatch.setenv(name, value)
    assert contract.run(train.train, OUTPUTS) == 0
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("stageflow-ada-iris-flows-bob")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert client.get_experiment_by_name("stageflow") is None


def test_an_experiment_name_given_wins_and_the_local_default_stays():
    domino = {"DOMINO_PROJECT_OWNER": "ada", "DOMINO_PROJECT_NAME": "iris-flows", "DOMINO_STARTING_USERNAME": "bob"}
    assert tracking.experiment_name({**domino, "MLFLOW_EXPERIMENT_NAME": "mine"}) == "mine"
    assert tracking.experiment_name({}) == "stageflow"


def test_unset_tracking_uri_attempts_nothing(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not tracking.enabled()
    assert tracking.log_run("x", {}, {}, {}, {}) == tracking.off() == {"status": "off",
                                                                      "reason": "MLFLOW_TRACKING_URI is not set"}


def test_unreachable_tracking_server_warns_and_training_still_succeeds(train_root, monkeypatch, capsys):
    with socket.socket() as sock:  # a port on this machine that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    assert contract.run(train.train, OUTPUTS) == 0
    assert sorted(p.name for p in (train_root / "outputs").iterdir()) == sorted(OUTPUTS)
    assert "WARNING MLflow tracking failed, outputs are unaffected: " in capsys.readouterr().err  # the stage log
    tracked = json.loads((train_root / "outputs" / "metrics").read_text())["tracking"]
    assert tracked["status"] == "failed" and tracked["tracking_uri"] == f"http://127.0.0.1:{port}"
    assert "Connection refused" in tracked["error"] or "Max retries" in tracked["error"], tracked


def test_a_tracking_uri_is_shown_without_its_credentials():
    assert tracking.shown_uri("https://ada:s3cret@mlflow.example:8443/x") == "https://mlflow.example:8443/x"
    assert tracking.shown_uri("https://token@mlflow.example/x") == "https://mlflow.example/x"
    assert tracking.shown_uri("file:///tmp/mlruns") == "file:///tmp/mlruns"


@pytest.mark.docker
def test_the_train_image_logs_the_model_in_mlflows_format(train_root, store):
    """The image's mlflow-skinny, pandas and skops do what tracking asks of them: the model in MLflow's
    format, logged from inside the container to a file store mounted at the same path."""
    import mlflow
    from docker.types import Mount

    from stageflow import containers, dag as dag_module, images, jobs
    from stageflow.registry import ROOT, STAGES

    mlruns = store
    mlruns.mkdir()
    mlruns.chmod(0o777)  # the container runs as Domino's uid
    containers.prepare_tree(train_root)
    job = jobs.plan(dag_module.load(), jobs.Setup(code=ROOT), "test", None)["train"]
    mounts = [*containers.mounts(job, train_root, []), Mount(str(mlruns), str(mlruns), type="bind")]
    images.client().containers.run(
        STAGES["train"].image(), user=containers.stage_user(), remove=True, network_mode="none", mounts=mounts,
        environment={"MLFLOW_TRACKING_URI": mlruns.as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true",
                     "MLFLOW_EXPERIMENT_NAME": "stageflow-test", "HOME": "/tmp"})
    _, run = logged_run()
    loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert loaded.metadata.signature.inputs.input_names() == list(schemas.active().features)


RUNNING = ROOT / "docs" / "running.md"


def stageflow_run(run_dir, env, *args):
    return subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def tracking_line(out):
    return next(line for line in out.splitlines() if line.startswith("tracking:"))


@pytest.mark.slow
def test_the_summary_says_where_train_logged_or_why_it_did_not_and_the_guides_cell_reads_it(tmp_path):
    """Logged: the run's id, experiment and store; reused from the cache: nothing logged now, and how to log;
    failed: why, and the run does not end clean. The notebook cell docs/running.md shows then finds the run."""
    env = {"MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_EXPERIMENT_NAME": "stageflow", "STAGEFLOW_CACHE": str(tmp_path / "cache")}
    first = stageflow_run(tmp_path / "first", env)
    assert first.returncode == 0, first.stderr
    tracked = json.loads((tmp_path / "first" / "outputs" / "metrics.json").read_text())["tracking"]
    assert tracking_line(first.stdout) == (f"tracking:        MLflow run {tracked['run_id']} in experiment stageflow "
                                           f"(id {tracked['experiment_id']}) at {env['MLFLOW_TRACKING_URI']}")

    cell = next(block for block in fenced(RUNNING, "python") if "search_runs" in block)
    shown = subprocess.run([sys.executable, "-c", cell], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    assert shown.returncode == 0, shown.stderr
    assert tracked["run_id"] in shown.stdout and "0.05" in shown.stdout  # its id and its learning rate
    holdout = json.loads((tmp_path / "first" / "outputs" / "metrics.json").read_text())["holdout_loss_per_epoch"]
    assert str([round(v, 4) for v in holdout]) in shown.stdout

    again = stageflow_run(tmp_path / "again", env)
    assert again.returncode == 0, again.stderr
    assert tracking_line(again.stdout) == (
        f"tracking:        skipped: train was reused from the cache, so nothing was logged now (it was logged then "
        f"as MLflow run {tracked['run_id']}); run with --no-cache to run it and log it")
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        assert len(mlflow.search_runs(experiment_names=["stageflow"])) == 1
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failing = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    failed = stageflow_run(tmp_path / "failed", failing, "--no-cache")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert tracking_line(failed.stdout).startswith("tracking:        failed: ")
    assert f"(tracking URI http://127.0.0.1:{port}); the outputs are complete" in failed.stdout
    assert "the flow succeeded, but its MLflow tracking failed" in failed.stderr and "Traceback" not in failed.stderr
    assert json.loads((tmp_path / "failed" / "run.json").read_text())["status"] == "succeeded"  # outputs kept


@pytest.mark.parametrize("tracked, cached, line, failed", [
    ({"status": "off", "reason": "MLFLOW_TRACKING_URI is not set"}, None, "off (MLFLOW_TRACKING_URI is not set)", False),
    ({"status": "logged", "run_id": "r1", "experiment": "e", "experiment_id": "7", "tracking_uri": "file:///m",
      "warning": "the model is not logged in MLflow's format: x"}, None,
     "MLflow run r1 in experiment e (id 7) at file:///m; but the model is not logged in MLflow's format: x", False),
    ({"status": "failed", "error": "boom", "tracking_uri": "http://h"}, "train",
     "skipped: train was reused from the cache, so nothing was logged now; run with --no-cache to run it and log it",
     False),
    ({"status": "failed", "error": "boom", "tracking_uri": "http://h"}, None,
     "failed: boom (tracking URI http://h); the outputs are complete: fix it and run with --no-cache to log them", True),
])
def test_each_tracking_outcome_is_one_line(monkeypatch, tracked, cached, line, failed):
    from stageflow import cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.tracking_line(tracked, cached) == (line, failed)
