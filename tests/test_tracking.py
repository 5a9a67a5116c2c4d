"""MLflow tracking from the train stage, against a real local MLflow file store, read back with the client."""

import json
import socket

import pytest

from stageflow.runtime import contract, tracking

from conftest import load_stage

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
    assert contract.run(train.train, OUTPUTS) == 0
    client, run = logged_run()
    outputs = train_root / "outputs"
    metrics = json.loads((outputs / "metrics").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert {k: run.data.params[k] for k in ("epochs", "batch_size", "seed", "n_test")} == {
        "epochs": "5", "batch_size": "16", "seed": "42", "n_test": "12"}
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["f1_setosa"] == pytest.approx(metrics["per_class"]["setosa"]["f1"])
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert [m.value for m in history] == pytest.approx(metrics["loss_per_epoch"])
    assert run.data.tags["model_sha256"] == metrics["model_sha256"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["metrics.json", "model.pkl",
                                                                              "report.html"]
    for name, output in (("report.html", "report"), ("model.pkl", "model")):
        local = client.download_artifacts(run.info.run_id, name, str(tmp_path))
        assert open(local, "rb").read() == (outputs / output).read_bytes()


def test_unset_tracking_uri_attempts_nothing(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not tracking.enabled()
    assert tracking.log_run("x", {}, {}, {}, {}) is None


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
