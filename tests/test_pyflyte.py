"""`pyflyte run flow.py model_training ...` without --remote: the real pyflyte CLI, each stage through the
local runner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stageflow import model as models
from stageflow.domino import plugin as domino
from stageflow.registry import STAGES
from stageflow.backends import HostBackend
from stageflow.runner import RunError

from stageflow.runtime import schema as schemas

from conftest import ROOT, bad_source, samples

PYFLYTE = Path(sys.executable).with_name("pyflyte")
# The active schema's samples, relative to the repository (pyflyte runs there): data/source_a.csv for iris.
SAMPLE_A, SAMPLE_B = (os.path.relpath(path, ROOT) for path in samples())


def pyflyte(run_dir, *args, backend="host"):
    env = {**os.environ, "STAGEFLOW_RUN_DIR": str(run_dir), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("STAGEFLOW_BACKEND", None)
    if backend:
        env["STAGEFLOW_BACKEND"] = backend
    return subprocess.run([str(PYFLYTE), "run", "flow.py", "model_training", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone, for matching messages that may be wrapped."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pyflyte")
    proc = pyflyte(run_dir, "--data_path_a", SAMPLE_A, "--data_path_b", SAMPLE_B, "--epochs", "3", "--batch_size", "16",
                   "--hidden_layers", "12", "--seed", "3")
    return run_dir, proc


@pytest.mark.slow
def test_pyflyte_runs_every_stage_through_the_runner(bundled):
    run_dir, proc = bundled
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = "stageflow: running each task with the host backend (STAGEFLOW_BACKEND=host)"
    assert proc.stdout.count(said) == 1  # said once, not per stage
    for name in STAGES:
        assert f"[{name}] " in proc.stdout  # streamed, prefixed by stage
        record = json.loads((run_dir / name / "run.json").read_text())
        assert record["status"] == "succeeded" and record["backend"] == "host"


@pytest.mark.slow
def test_pyflyte_returns_the_model_and_metrics(bundled):
    run_dir, proc = bundled
    outputs = run_dir / "train" / "outputs"  # the train stage's run directory publishes its outputs there
    model, metrics = outputs / "model.skops", outputs / "metrics.json"
    assert f"TrainingOutputs(model={model}, metrics={metrics}, report={outputs / 'report.html'})" in proc.stdout
    assert (outputs / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    figures = json.loads(metrics.read_text())
    assert (figures["epochs"], figures["batch_size"]) == (3, 16) and figures["accuracy"] >= 0.8
    assert (figures["hidden_layers"], figures["seed"], figures["learning_rate"]) == ([12], 3, 0.05)
    assert list(models.load(model, metrics).classes_) == sorted(schemas.active().classes)


@pytest.mark.slow
def test_pyflyte_materialises_inputs_as_the_contract_says(bundled):
    run_dir, _ = bundled
    assert (run_dir / "load_a" / "load_a" / "inputs" / "data_path").read_text() == str(ROOT / SAMPLE_A)
    assert (run_dir / "train" / "train" / "inputs" / "epochs").read_text() == "3"  # flytekit alone drops these
    upstream = run_dir / "process" / "process" / "outputs" / "processed_data"
    assert (run_dir / "train" / "train" / "inputs" / "processed_data").read_bytes() == upstream.read_bytes()


@pytest.mark.slow
def test_pyflyte_fails_loudly_on_a_failing_stage(tmp_path):
    bad = tmp_path / "b.csv"
    message = bad_source(bad)
    proc = pyflyte(tmp_path / "run", "--data_path_a", SAMPLE_A, "--data_path_b", str(bad))
    assert proc.returncode != 0
    out = flat(proc.stdout + proc.stderr)
    assert f"task load_b failed: exit status 1: {message}" in out
    assert f"--- last 20 lines of {tmp_path / 'run' / 'load_b' / 'logs' / 'load_b.log'} ---" in out
    assert not (tmp_path / "run" / "merge").exists()  # nothing downstream ran
    assert "TrainingOutputs(" not in proc.stdout


@pytest.mark.slow
def test_a_task_input_its_stage_would_refuse_is_one_line_before_that_task_starts(tmp_path):
    """pyflyte runs the tasks one by one: each task's inputs are checked, by the stage's own rule, before it
    starts and without flytekit's traceback."""
    missing = tmp_path / "nowhere.csv"
    proc = pyflyte(tmp_path / "run", "--data_path_a", str(missing), "--data_path_b", SAMPLE_B)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: input data_path of task load_a: {missing} does not exist"
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr
    assert not (tmp_path / "run" / "load_a").exists()


def test_forced_backend_must_be_known(monkeypatch):
    monkeypatch.setenv("STAGEFLOW_BACKEND", "kubernetes")
    with pytest.raises(RunError, match="STAGEFLOW_BACKEND=kubernetes: expected host or docker"):
        domino.choose_backend()


def test_without_a_daemon_the_process_backend_is_chosen_and_said_why(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    monkeypatch.delenv("STAGEFLOW_BACKEND", raising=False)
    backend, why = domino.choose_backend()
    assert isinstance(backend, HostBackend) and why.startswith("no docker backend: no Docker daemon reachable")
    monkeypatch.setenv("STAGEFLOW_BACKEND", "docker")  # forced: an error, not a quiet fallback
    with pytest.raises(RunError, match="STAGEFLOW_BACKEND=docker: no Docker daemon reachable"):
        domino.choose_backend()


@pytest.mark.docker
def test_pyflyte_uses_the_docker_backend_when_images_are_built(tmp_path):
    proc = pyflyte(tmp_path, "--data_path_a", SAMPLE_A, "--data_path_b", SAMPLE_B, backend=None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("stageflow: running each task with the docker backend (Docker daemon reachable and every stage image "
            "built)") in proc.stdout
    for name in STAGES:
        assert json.loads((tmp_path / name / "run.json").read_text())["backend"] == "docker"
    assert json.loads((tmp_path / "train" / "train" / "outputs" / "metrics").read_text())["accuracy"] >= 0.9
