"""Faults: a stage killed mid-write, Ctrl-C, a full disk, concurrent runs, and model integrity."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from stageflow import dag as dag_module, model

from stageflow.runtime import contract, schema as schemas

from conftest import IRIS_FEATURES, ROOT, downstream, holds, lock_holders, write_snapshot


def load_tree(root, source):
    (root / "inputs").mkdir(parents=True)
    (root / "outputs").mkdir()
    (root / "inputs" / "data_path").write_text(str(source))
    return root


def start_load(tree):
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / "load_a" / "main.py")], cwd=ROOT,
                            env={**os.environ, "WORKFLOW_ROOT": str(tree), "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_write_leaves_no_output_and_the_next_run_completes(tmp_path, big_source):
    tree = load_tree(tmp_path / "tree", big_source)
    proc = start_load(tree)
    deadline = time.monotonic() + 60
    while not list((tree / "outputs").glob(".datasetA.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "the stage never started writing"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tree / "outputs" / "datasetA").exists()  # the partial file never took the output's name
    rerun = start_load(tree)
    assert rerun.wait(timeout=120) == 0, rerun.stdout.read()
    assert sorted(os.listdir(tree / "outputs")) == ["datasetA"]  # the killed run's temp file is cleared


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_a_clear_error_with_no_partial_output(tmp_path, big_source):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        tree = load_tree(disk / "tree", big_source)
        proc = start_load(tree)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out
        assert os.listdir(tree / "outputs") == ["_ERROR"]
        assert (tree / "outputs" / "_ERROR").read_text() == \
            f"output datasetA: no space left on the device holding {tree}/outputs\n"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """Mount a small tmpfs of the size asked for; unmounted whatever happens."""
    mounted = []

    def mount(path, size):
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def fill(disk):
    """Write to `disk` until it is full."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def pages(files) -> int:
    """Bytes the files take on a tmpfs, which gives each whole 4 KiB pages."""
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in files)


def stageflow_run(run_dir, env):
    return subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.iris  # iris columns
def test_merge_out_of_disk_for_its_engine_is_a_clear_error_with_nothing_left(tmp_path, small_disk):
    """Sources not sorted by Id: merge copies them beside its output for DuckDB. A disk with room for the
    inputs but not for those copies gives the one line a full disk gives, and no spill file stays."""
    rng = np.random.default_rng(0)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    for name, first in (("datasetA", 1), ("datasetB", 100_001)):
        ids = first + rng.permutation(100_000)
        write_snapshot(snapshots / name, pa.table({"Id": ids, **{f: rng.normal(size=ids.size) for f in IRIS_FEATURES},
                                                   "Species": ["setosa"] * ids.size}))
    tree = small_disk(tmp_path / "tree", f"{pages(snapshots.iterdir()) // 1024 + 256}k")
    (tree / "inputs").mkdir()
    (tree / "outputs").mkdir()
    for path in snapshots.iterdir():
        shutil.copy(path, tree / "inputs" / path.name)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "merge" / "main.py")], cwd=ROOT, text=True,
                          env={**os.environ, "WORKFLOW_ROOT": str(tree), "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert os.listdir(tree / "outputs") == ["_ERROR"]
    assert (tree / "outputs" / "_ERROR").read_text() == \
        f"output merged_data: no space left on the device holding {tree}/outputs\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_while_restoring_from_the_cache_leaves_no_partial_output(tmp_path, small_disk):
    """The stage's tree is on a disk with room for some of its cached outputs but not all: the stage fails
    in one line, and none of its outputs (whole or cut short) takes its name."""
    env = {**os.environ, "STAGEFLOW_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    assert stageflow_run(run_dir, env).returncode == 0  # fills the cache
    last = dag_module.load().nodes[-1].name
    tree = run_dir / last
    room = pages(tree.glob("inputs/*")) + pages(tree.glob("outputs/*")) // 2 // 4096 * 4096
    small_disk(tree, f"{room // 1024}k")  # the stage's inputs fit, half of its cached outputs do
    proc = stageflow_run(run_dir, env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"task {last} failed: no space left on the device holding {run_dir / last / 'outputs'}" in proc.stderr
    assert os.listdir(run_dir / last / "outputs") == []
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["stages"][last]["status"] == "failed"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_run_on_a_full_disk_leaves_no_earlier_record_in_its_place(tmp_path, small_disk):
    env = {**os.environ, "STAGEFLOW_CACHE": str(tmp_path / "cache")}
    assert stageflow_run(tmp_path / "warm", env).returncode == 0  # fills the cache
    disk = small_disk(tmp_path / "disk", "2m")
    run_dir = disk / "run"
    assert stageflow_run(run_dir, env).returncode == 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"
    fill(disk)
    proc = stageflow_run(run_dir, env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no space left on the device" in proc.stderr, proc.stderr
    if (run_dir / "run.json").exists():
        assert json.loads((run_dir / "run.json").read_text())["status"] != "succeeded"


def processes_with_root(run_dir):
    """Live processes whose environment points into `run_dir`: stage processes of that run."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if f"WORKFLOW_ROOT={run_dir}".encode() in environ:
            found.append(int(pid))
    return found


def start_run(run_dir, source, stages: int = 1, **popen) -> subprocess.Popen:
    """`stageflow run` on `source` as both sources, once `stages` of its stage processes are running."""
    proc = subprocess.Popen([sys.executable, "-m", "stageflow", "run", "--no-cache", "--run-dir", str(run_dir),
                             "--data-path-a", str(source), "--data-path-b", str(source)], cwd=ROOT,
                            **(popen or {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}))
    deadline = time.monotonic() + 60
    while len(processes_with_root(run_dir)) < stages:
        assert proc.poll() is None and time.monotonic() < deadline, "the stages did not start"
        time.sleep(0.01)
    return proc


def test_ctrl_c_stops_stage_processes_and_leaves_no_orphan(tmp_path, big_source):
    run_dir = tmp_path / "run"
    proc = start_run(run_dir, big_source)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; stopped every running task" in err
    assert processes_with_root(run_dir) == []
    assert lock_holders(run_dir) == []  # the stages started early, waiting for their trees, too
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    stages, dag = record["stages"], dag_module.load()
    sources = [node.name for node in dag.nodes if not node.upstream]  # the loads, which read big_source
    assert "interrupted" in {stages[name]["error"] for name in sources}, stages  # one may have won
    assert {stages[name]["status"] for name in downstream(dag, sources)} == {"skipped"}


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_signals_until_the_runner_exits_end_it_in_one_line_with_130(tmp_path, big_source, number):
    """Any number of signals at any moment: a stream of them from a stage's start until the process is gone
    meets the run, its summary and its exit alike (one arriving after the run's handlers were gone made the
    process die of the signal, -2, once in a full run)."""
    run_dir, deadline = tmp_path / "run", time.monotonic() + 60
    proc = start_run(run_dir, big_source)
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(number)
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("interrupted") == 1, err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert processes_with_root(run_dir) == []


def test_kill_9_of_the_runner_kills_its_stages(tmp_path, big_source):
    """Whatever kills the runner kills its stages: none may live on to write into the run directory (or
    into the next run there), and each holds the directory's lock as long as it lives."""
    run_dir = tmp_path / "run"
    proc = start_run(run_dir, big_source, stages=2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the loads
    locked = [holds(pid, run_dir / ".stageflow-run") for pid in processes_with_root(run_dir)]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 120
    while (processes_with_root(run_dir) or lock_holders(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_root(run_dir) == []
    assert lock_holders(run_dir) == []  # the stages started early, waiting for their trees, too
    written = [path for path in run_dir.glob("*/outputs/*") if not path.name.startswith(".")]  # not temp files
    assert written == []  # killed before writing any output
    assert locked == [True, True]


def test_two_runs_at_once_in_different_directories_do_not_interfere(tmp_path):
    env = {**os.environ, "STAGEFLOW_CACHE": str(tmp_path / "cache")}  # shared, and empty: both store at once
    procs = [subprocess.Popen([sys.executable, "-m", "stageflow", "run", "--run-dir", str(tmp_path / f"r{i}")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    records = [json.loads((tmp_path / f"r{i}" / "run.json").read_text()) for i in (1, 2)]
    for name in ("merge", "process"):
        assert records[0]["stages"][name]["outputs"] == records[1]["stages"][name]["outputs"]
    assert records[0]["outputs"]["model"]["sha256"] == records[1]["outputs"]["model"]["sha256"] is not None


# ------------------------------------------------------------------------------------------ model integrity


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_dir / "train" / "outputs" / "model", run_dir / "train" / "outputs" / "metrics", run_dir


def test_model_hash_is_recorded_in_metrics_and_run_json(trained):
    model_path, metrics_path, run_dir = trained
    digest = model.verify(model_path, metrics_path)
    assert json.loads(metrics_path.read_text())["model_sha256"] == digest
    assert json.loads((run_dir / "run.json").read_text())["outputs"]["model"]["sha256"] == digest


def test_verified_model_loads(trained):
    model_path, metrics_path, _ = trained
    assert list(model.load(model_path, metrics_path).classes_) == sorted(schemas.active().classes)


def test_tampered_model_is_refused_before_it_is_read_as_a_model(trained, tmp_path):
    model_path, metrics_path, _ = trained
    evil = tmp_path / "model"
    marker = tmp_path / "pwned"
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil.write_bytes(pickle.dumps(Payload()))
    proc = subprocess.run([sys.executable, "-m", "stageflow", "verify-model", str(evil), str(metrics_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: model {evil}: sha256 ")
    assert "refusing to load it (it is not the model train wrote)" in proc.stderr
    with pytest.raises(model.ModelError):
        model.load(evil, metrics_path)
    assert not marker.exists()  # the payload never ran


def test_the_model_is_a_skops_file_that_rebuilds_only_the_types_it_trusts(trained, tmp_path):
    """Even with its hash matching, a model holding a type outside skops's defaults and TRUSTED_TYPES is refused
    before it is built; pickle.loads would have built it (and run what it asked for)."""
    import pickle
    import zipfile

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    from stageflow.runtime import modelfile

    model_path, metrics_path, _ = trained
    assert zipfile.is_zipfile(model_path)  # skops's format, not a pickle
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(model_path.read_bytes())
    assert skops.io.get_untrusted_types(file=model_path) == list(modelfile.TRUSTED_TYPES)
    evil, metrics = tmp_path / "model", tmp_path / "metrics"
    evil.write_bytes(skops.io.dumps(FunctionTransformer(func=os.system)))
    metrics.write_text(json.dumps({"model_sha256": contract.sha256_file(evil)}))
    with pytest.raises(model.ModelError, match=rf"^model {evil}: not a model this flow writes: .*[Uu]ntrusted"):
        model.load(evil, metrics)


def test_the_same_model_gives_the_same_file(trained, tmp_path):
    """skops names objects by their address in memory and stamps the time: the file is rewritten so that
    training the same data with the same settings gives the same bytes (and sha256) every time."""
    from stageflow.runtime import modelfile

    model_path, metrics_path, _ = trained
    loaded = model.load(model_path, metrics_path)
    assert modelfile.dumps(loaded) == model_path.read_bytes()


def test_verify_model_cli_accepts_the_real_model(trained):
    model_path, metrics_path, _ = trained
    proc = subprocess.run([sys.executable, "-m", "stageflow", "verify-model", str(model_path), str(metrics_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith(f"ok: {model_path} matches sha256 ")


def test_metrics_without_a_hash_are_refused(trained, tmp_path):
    model_path, _, _ = trained
    metrics = tmp_path / "metrics"
    metrics.write_text(json.dumps({"accuracy": 1.0}))
    with pytest.raises(model.ModelError, match=r"metrics .*: no model_sha256 to check against"):
        model.verify(model_path, metrics)


def payload(marker):
    """A pickle that creates `marker` when it is unpickled: proof that untrusted code ran."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Payload())


def test_a_model_swapped_after_its_hash_is_checked_is_never_unpickled(trained, tmp_path, monkeypatch):
    """The bytes unpickled are the bytes hashed: replacing the file once it is hashed changes nothing."""
    real_model, metrics_path, _ = trained
    model_path, evil, marker = tmp_path / "model", tmp_path / "evil", tmp_path / "pwned"
    model_path.write_bytes(real_model.read_bytes())
    evil.write_bytes(payload(marker))
    real_sha256 = hashlib.sha256

    class SwapOnceHashed:  # the file is replaced on disk the moment its digest is taken
        def __init__(self, *data):
            self.hash = real_sha256(*data)

        def update(self, data):
            self.hash.update(data)

        def hexdigest(self):
            if evil.exists():
                os.replace(evil, model_path)
            return self.hash.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", SwapOnceHashed)
    loaded = model.load(model_path, metrics_path)
    monkeypatch.undo()
    assert not evil.exists() and model_path.read_bytes() == payload(marker)  # the swap did happen
    assert not marker.exists()  # the payload never ran
    assert list(loaded.classes_) == sorted(schemas.active().classes)  # what was hashed is what loaded


def test_a_fifo_is_refused_as_a_model_without_waiting_for_a_writer(trained, tmp_path):
    """A FIFO can hand the hash one stream and the unpickler another (or hang the reader): refused unread."""
    _, metrics_path, _ = trained
    fifo = tmp_path / "model"
    os.mkfifo(fifo)
    message = f"model {fifo}: is a FIFO (named pipe), not a regular file; refusing to read it"
    proc = subprocess.run([sys.executable, "-m", "stageflow", "verify-model", str(fifo), str(metrics_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)  # reading it would wait forever
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"error: {message}\n")
    with pytest.raises(model.ModelError) as raised:
        model.load(fifo, metrics_path)
    assert str(raised.value) == message


def test_a_directory_is_refused_as_a_model(trained, tmp_path):
    _, metrics_path, _ = trained
    with pytest.raises(model.ModelError, match=rf"^model {tmp_path}: is a directory, not a regular file; "):
        model.verify(tmp_path, metrics_path)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "1e400", "soon"])
def test_timeout_must_be_a_positive_number_of_seconds(tmp_path, value):
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(tmp_path / "run"),
                           "--timeout", value], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: timeout: expected a positive number of seconds, found {value!r}\n"
    assert not (tmp_path / "run").exists()


def test_a_run_refused_before_it_starts_makes_no_run_directory():
    """Without --run-dir a run gets runs/<time>; a bad --timeout or flow input must not leave one behind."""
    runs = ROOT / "runs"
    before = sorted(os.listdir(runs)) if runs.is_dir() else []
    latest = os.readlink(runs / "latest") if (runs / "latest").is_symlink() else None
    for args in (["--timeout", "nan"], ["--epochs", "ten"]):
        proc = subprocess.run([sys.executable, "-m", "stageflow", "run", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert (sorted(os.listdir(runs)) if runs.is_dir() else []) == before
    assert (os.readlink(runs / "latest") if (runs / "latest").is_symlink() else None) == latest


@pytest.fixture
def endless_source(tmp_path):
    """A 1 TB source that takes no disk (sparse) and that no stage can read (not Parquet): hashing it would
    take many minutes, the load rejects it at once."""
    path = tmp_path / "endless.parquet"
    with open(path, "wb") as handle:
        handle.truncate(1 << 40)
    return path


def test_hashing_a_source_counts_against_the_timeout(tmp_path, endless_source):
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(tmp_path / "run"),
                           "--data-path-a", str(endless_source), "--timeout", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    first = dag_module.load().nodes[0].name
    assert f"task {first} failed: timed out after 2 s" in proc.stderr


def test_without_the_cache_sources_are_not_hashed(tmp_path, endless_source):
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(tmp_path / "run"),
                           "--data-path-a", str(endless_source), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert f"input data_path: {endless_source} is not a valid parquet file" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_while_publishing_names_the_directory_and_still_shows_the_table(tmp_path, small_disk):
    """The issue's example: a full disk while the flow's outputs were copied to RUN_DIR/outputs said "no space
    left on the device" without the directory, and printed no stage table."""
    env = {**os.environ, "STAGEFLOW_CACHE": str(tmp_path / "cache")}
    warm = tmp_path / "warm"
    assert stageflow_run(warm, env).returncode == 0  # fills the cache: the next run restores every stage
    kept = [p for p in warm.rglob("*") if p.is_file() and "outputs" != p.relative_to(warm).parts[0]
            and p.name != "report.html"]
    room = pages(kept) + 4 * 4096  # the stages' trees, logs and run.json fit; the published copies do not
    run_dir = small_disk(tmp_path / "run", f"{room // 1024}k")
    proc = stageflow_run(run_dir, env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the run failed: no space left on the device holding {run_dir / 'outputs'}" in proc.stderr, proc.stderr
    assert "task " in proc.stdout and "succeeded" in proc.stdout  # the table, every stage having succeeded
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["outputs"] == {}
