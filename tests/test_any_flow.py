"""Any Domino flow, locally: flows of public Domino shapes (tests/flows/*), unmodified, run end to end in
containers with one command each, their outputs typed in run.json; what cannot run is refused before anything
runs (docs/any-flow.md)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stageflow import images

from conftest import ROOT, samples

FLOWS = ROOT / "tests" / "flows"


def stageflow(*args, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", "stageflow", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def project(tmp_path: Path, name: str) -> Path:
    """A copy of tests/flows/<name> as a user's own git checkout (the code its tasks see at /mnt/code)."""
    code = tmp_path / name
    shutil.copytree(FLOWS / name, code)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@example.com", "-c", "user.name=t", "commit",
                                                  "-qm", "a flow"]):
        subprocess.run(["git", *args], cwd=code, check=True, capture_output=True)
    return code


@pytest.fixture(scope="module")
def standard_environment():
    """The local standard environment image (`make standard-environment`), built if missing."""
    images.build_standard_environment()
    return images.standard_environment()


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.docker
def test_the_template_flow_runs_unmodified_in_containers(tmp_path, standard_environment):
    """Shaped like Domino's AI training template: five tasks of /mnt/code scripts on a Py3.10 standard
    environment name, CSV files between them, a constant input, artifacts; its scripts read /workflow
    literally and import a helper beside them. The checkout is left exactly as it was."""
    code, run_dir = project(tmp_path, "template"), tmp_path / "run"
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(run_dir), "mlops_flow.py", "model_training",
                     "--data_path_a", "/mnt/code/data/datasetA.csv", "--data_path_b", "/mnt/code/data/datasetB.csv",
                     cwd=code)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    environment = "6.0 Domino Standard Environment Py3.10 R4.4"
    notice = (f"notice: environment {environment!r} has no local image: its tasks run on the standard environment "
              f"{standard_environment}; map it with --environment-image \"{environment}=IMAGE\"")
    assert proc.stdout.count(notice) == 1
    found = record(run_dir)
    assert list(found["stages"]) == ["Load Data A", "Load Data B", "Merge Data", "Process Data", "Train Model"]
    for stage in found["stages"].values():
        assert stage["status"] == "succeeded" and stage["environment"] == environment
        assert stage["image"] == standard_environment and stage["task"] in found["stages"]
    assert found["stages"]["Merge Data"]["upstream"] == ["Load Data A", "Load Data B"]
    assert found["outputs"]["model"]["path"] == str(run_dir / "outputs" / "model.pkl")
    accuracy = found["outputs"]["accuracy"]["value"]
    assert isinstance(accuracy, float) and 0.5 < accuracy <= 1
    assert "trained 100 trees" in (run_dir / "logs" / "train-model.log").read_text()  # the constant input
    assert subprocess.run(["git", "status", "--porcelain"], cwd=code, capture_output=True, text=True).stdout == ""
    assert not (code / "data" / "last_processed_sample.csv").exists()  # written at /mnt/code, in the task's copy
    assert "Merge Data" in (run_dir / "report.html").read_text()


@pytest.mark.docker
def test_directories_fan_out_fan_in_every_primitive_and_a_dataset(tmp_path, standard_environment):
    code, run_dir, readings = project(tmp_path, "shapes"), tmp_path / "run", tmp_path / "readings"
    readings.mkdir()
    values = [round(0.1 * (n % 10), 1) for n in range(30)]
    (readings / "readings.csv").write_text("value\n" + "".join(f"{v}\n" for v in values))
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(run_dir), "--dataset", f"readings={readings}",
                     "shapes_flow.py", "shapes", "--label", "daily", "--threshold", "0.45", "--strict", cwd=code)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = record(run_dir)
    scores = [found["stages"][f"Score Part (n{n})"] for n in (1, 2, 3)]
    assert [s["folder"] for s in scores] == ["score-part-n1", "score-part-n2", "score-part-n3"]
    parts = [values[i::3] for i in range(3)]
    assert [s["values"]["score"] for s in scores] == pytest.approx([sum(p) / len(p) for p in parts])
    assert [s["values"]["passed"] for s in scores] == [sum(p) / len(p) > 0.45 for p in parts]  # --strict
    outputs = found["outputs"]
    assert outputs["total"] == {"value": 30} and outputs["label"] == {"value": "daily-combined"}
    assert outputs["mean"]["value"] == pytest.approx(sum(values) / 30) and isinstance(outputs["mean"]["value"], float)
    assert outputs["passed"] == {"value": False}
    assert outputs["finished"] == {"value": "2024-05-13T00:10:00Z"} and outputs["window"] == {"value": "144h20m0s"}
    assert sorted(os.listdir(run_dir / "outputs" / "parts")) == ["part-0.csv", "part-1.csv", "part-2.csv"]
    assert (run_dir / "outputs" / "report.csv").read_text().startswith("part,score,passed\n")
    assert os.listdir(readings) == ["readings.csv"]  # mounted read-only, left as it was


@pytest.mark.docker
def test_a_failing_task_is_named_and_what_depends_on_it_is_skipped(tmp_path, standard_environment):
    code, run_dir = project(tmp_path, "failing"), tmp_path / "run"
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(run_dir), "failing_flow.py", "checks",
                     "--rows", "5", cwd=code)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "task Validate Rows failed: exit status 1: table: 2 rows have no id (lines 3, 5)" in proc.stderr
    assert "--- last 20 lines of" in proc.stderr and "checked 5 rows" in proc.stderr
    statuses = {name: stage["status"] for name, stage in record(run_dir)["stages"].items()}
    assert statuses == {"Prepare Rows": "succeeded", "Validate Rows": "failed", "Count Rows": "succeeded",
                        "Publish Rows": "skipped"}
    assert os.listdir(run_dir / "validate-rows" / "outputs") == ["_ERROR"]


@pytest.mark.docker
def test_a_task_called_twice_runs_twice_with_its_own_inputs(tmp_path, standard_environment):
    """The wrong result this closes: two calls of the train stage (1 and 30 epochs) compiled to two nodes but
    ran as one, so the task that compares them compared one training with itself."""
    run_dir = tmp_path / "run"
    a, b = samples()
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(run_dir), "--no-cache",
                     str(FLOWS / "two_trains" / "two_trains.py"), "compare", "--data_path_a", str(a),
                     "--data_path_b", str(b), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = record(run_dir)
    trains = [name for name in found["stages"] if name.startswith("train")]
    assert len(trains) == 2 and len({found["stages"][t]["folder"] for t in trains}) == 2
    epochs = [json.loads((run_dir / found["stages"][t]["folder"] / "outputs" / "metrics").read_text())["epochs"]
              for t in trains]
    assert epochs == [1, 30]
    assert found["outputs"]["o0"]["value"].startswith("1,30 better ")


REFUSALS = [
    (["nothing_here.py", "wf"], "error: flow file nothing_here.py: does not exist"),
    (["data/datasetA.csv"], None),  # not a flow file: this project's flow's parser says what it takes
    (["mlops_flow.py"], "error: give the workflow to run after mlops_flow.py: stageflow run mlops_flow.py WORKFLOW"),
    (["mlops_flow.py", "model_trainin"], "error: flow file mlops_flow.py: no @workflow named model_trainin "
                                        "(defined: model_training)"),
    (["mlops_flow.py", "model_training", "--data_path_a", "x", "--data_path_c", "y"],
     "error: No such option '--data_path_c'. (Did you mean one of:"),
    (["mlops_flow.py", "model_training", "--data_path_a", "x"], "error: flow input data_path_b: required but not "
                                                               "given"),
    (["--backend", "host", "mlops_flow.py", "model_training", "--data_path_a", "x", "--data_path_b", "y"],
     "error: task Load Data A runs `python /mnt/code/scripts/load-data-A.py` in environment '6.0 Domino Standard "
     "Environment Py3.10 R4.4', not one of this project's stages, so it needs containers: use --backend docker"),
    (["--environment-image", "no equals sign", "mlops_flow.py", "model_training"],
     "error: --environment-image 'no equals sign': expected NAME=VALUE"),
]


@pytest.mark.parametrize("args, said", REFUSALS)
def test_what_cannot_run_is_refused_in_one_line_before_anything_runs(tmp_path, args, said):
    code = project(tmp_path, "template")
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), *args, cwd=code)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
    if said:
        assert said in proc.stderr, proc.stderr
        assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


FLOW_HEAD = """
from datetime import datetime
from typing import List, TypeVar
from flytekit import task, workflow
from flytekit.types.file import FlyteFile
from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task
from flytekitplugins.domino.task import DatasetSnapshot, ExternalDataVolume
ENV = "Domino Standard Environment Py3.10 R4.4"
"""

UNSUPPORTED = [
    ("@task\ndef plain(x: int) -> int:\n    return x\n\n@workflow\ndef wf(x: int = 1) -> int:\n    return plain(x=x)\n",
     "error: task ", "a flytekit PythonFunctionTask, which the local runner does not run"),
    ("@workflow\ndef wf() -> None:\n    run_domino_job_task(flyte_task_name='T', command='true', environment_name=ENV,"
     " inputs=[Input(name='xs', type=List[int], value=[1, 2])])\n",
     "error: input xs of task T: type ", "is not supported by the local runner"),
    ("@workflow\ndef wf() -> None:\n    run_domino_job_task(flyte_task_name='T', command='true', environment_name=ENV,"
     " external_data_volumes=[ExternalDataVolume(Name='edv')])\n",
     "error: task T: mounts external data volumes (edv), which exist only on Domino", ""),
    ("@workflow\ndef wf() -> None:\n    run_domino_job_task(flyte_task_name='T', command='true', environment_name=ENV,"
     " dataset_snapshots=[DatasetSnapshot(Name='sales', Version=3)])\n",
     "error: task T: lists dataset snapshot sales, which this run does not have; give --dataset sales=DIR", ""),
    ("@workflow\ndef wf(when: datetime) -> None:\n    run_domino_job_task(flyte_task_name='T', command='true',"
     " environment_name=ENV, inputs=[Input(name='when', type=datetime, value=when)])\n",
     "error: flow input when: expected an RFC 3339 timestamp", ""),
]


@pytest.mark.parametrize("body, start, rest", UNSUPPORTED)
def test_a_task_type_or_domino_feature_the_runner_lacks_is_named(tmp_path, body, start, rest):
    (tmp_path / "flow.py").write_text(FLOW_HEAD + body)
    extra = ["--when", "yesterday"] if "when" in body else []
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(tmp_path / "run"), "flow.py", "wf", *extra,
                     cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(start) and rest in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


TYPED = FLOW_HEAD + """
@workflow
def wf(text: str = "abc") -> int:
    made = run_domino_job_task(flyte_task_name="Count", command="printf '%s' \\"$(cat /workflow/inputs/text)\\" "
                               "> /workflow/outputs/count", environment_name=ENV, cache=True, cache_version="1",
                               inputs=[Input(name="text", type=str, value=text)],
                               output_specs=[Output(name="count", type=int)])
    return made["count"]
"""


@pytest.mark.docker
def test_an_output_is_checked_against_its_declared_type(tmp_path, standard_environment):
    (tmp_path / "flow.py").write_text(TYPED)
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(tmp_path / "run"), "flow.py", "wf", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "task Count failed: output count: declared int: expected a base-10 integer, found 'abc'" in proc.stderr
    proc = stageflow("run", "--backend", "docker", "--run-dir", str(tmp_path / "run"), "flow.py", "wf",
                     "--text", " 42\n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert record(tmp_path / "run")["outputs"]["o0"] == {"value": 42}


@pytest.mark.docker
def test_a_cached_task_is_reused_until_its_code_changes(tmp_path, standard_environment):
    """cache=True: reused for the same image, command, inputs and /mnt/code; an edit of the code reruns it."""
    (tmp_path / "flow.py").write_text(TYPED)
    (tmp_path / "notes.txt").write_text("v1")
    run = ["run", "--backend", "docker", "--run-dir", str(tmp_path / "run"), "flow.py", "wf", "--text", "7"]
    assert stageflow(*run, cwd=tmp_path).returncode == 0
    assert stageflow(*run, cwd=tmp_path).returncode == 0
    assert record(tmp_path / "run")["stages"]["Count"]["cached"] is True
    (tmp_path / "notes.txt").write_text("v2")
    assert stageflow(*run, cwd=tmp_path).returncode == 0
    assert record(tmp_path / "run")["stages"]["Count"]["cached"] is False


def test_the_mapping_file_names_an_image_per_environment(tmp_path):
    from stageflow import jobs

    (tmp_path / "environment-images.txt").write_text("# what runs where\nMy Env=my/image:1\n\nOther = other:2\n")
    (tmp_path / "flow.py").write_text("")
    setup = jobs.Setup(code=tmp_path, images={"Other": "given:3"}).with_flow(tmp_path / "flow.py")
    assert setup.images == {"Other": "given:3", "My Env": "my/image:1"}  # an option wins over the file


@pytest.mark.docker
def test_pyflyte_runs_each_call_of_a_task_in_a_folder_of_its_own(tmp_path, standard_environment):
    """The same wrong result under `pyflyte run` (no --remote): both trainings ran into one train/ folder, the
    second overwriting the first. Domino's plugin is the stand-in here, on PYTHONPATH as a rehearsal puts it."""
    a, b = samples()
    env = {**os.environ, "STAGEFLOW_RUN_DIR": str(tmp_path), "STAGEFLOW_BACKEND": "docker",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "stageflow" / "domino" / "standin"), str(ROOT)])}
    proc = subprocess.run([str(Path(sys.executable).with_name("pyflyte")), "run", str(FLOWS / "two_trains" / "two_trains.py"),
                           "compare", "--data_path_a", str(a), "--data_path_b", str(b)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    epochs = [json.loads((tmp_path / folder / "train" / "outputs" / "metrics").read_text())["epochs"]
              for folder in ("train", "train-2")]
    assert epochs == [1, 30]
    assert "1,30 better " in proc.stdout
