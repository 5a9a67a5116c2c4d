"""The data stages on a real Dask cluster (a scheduler and two workers, each a process; one cluster for the
module): the same output bytes as on one machine, the same one-line errors, a worker killed mid-stage, and
`stageflow run --dask` starting and stopping its cluster however the run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, load_stage, run_main, samples, source_table, write_snapshot
from stageflow import dask_cluster
from stageflow.runtime import cluster, contract, dataset, schema as schemas, sources

ROWS = 6_000  # per source: enough for several partitions per worker, small enough to run in seconds


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    with dask_cluster.LocalCluster(2, tmp_path_factory.mktemp("dask"), no_workers_timeout=5) as found:
        yield found


@pytest.fixture
def on_cluster(local_cluster, monkeypatch):
    """The stages run in this test find the module's cluster, as a job that has one does."""
    for name, value in local_cluster.environment().items():
        monkeypatch.setenv(name, value)
    return local_cluster


def tree(root: Path) -> Path:
    (root / "inputs").mkdir(parents=True)
    (root / "outputs").mkdir()
    return root


def run_stage(name: str, root: Path, inputs: dict, capsys=None) -> tuple[int, str | None, Path]:
    for input_name, value in inputs.items():
        target = root / "inputs" / input_name
        target.write_bytes(Path(value).read_bytes()) if isinstance(value, Path) else target.write_text(value)
    status, error = run_main(load_stage(name), root)
    return status, error, root / "outputs"


def messy_sources(folder: Path) -> tuple[Path, Path]:
    """A (CSV) and B (Parquet, in several row groups) in shuffled Id order, overlapping on identical rows,
    labels spelt in more ways than one where the schema's rules allow, some rows process must drop."""
    schema = schemas.active()
    rng = np.random.default_rng(7)
    keys_a = rng.permutation(np.arange(1, ROWS + 1))
    keys_b = rng.permutation(np.arange(ROWS // 2, ROWS + ROWS // 2))
    a = source_table(keys_a, seed=3)
    b = source_table(keys_b, seed=3)
    first = next(iter(schema.features))
    if schema.features[first] == "float":
        values = a.column(first).to_numpy().astype(float)
        values[::97] = np.nan  # rows process drops (a NaN feature)
        a = a.set_column(a.schema.get_field_index(first), first, pa.array(values))
    # B's rows for the Ids both hold are A's: identical, so no conflict
    in_a = {int(k): i for i, k in enumerate(keys_a)}
    b = pa.concat_tables([a.take([in_a[int(k)] for k in keys_b if int(k) in in_a]),
                          b.filter(pa.array([int(k) not in in_a for k in keys_b]))])
    if not schema.strip_prefixes and schema.match == "ignore-case":
        spelt = [v.upper() if i % 5 == 0 else v for i, v in enumerate(a.column(schema.label).to_pylist())]
        a = a.set_column(a.schema.get_field_index(schema.label), schema.label, pa.array(spelt))
    path_a, path_b = folder / "a.csv", folder / "b.parquet"
    pcsv.write_csv(a, path_a)
    pq.write_table(b, path_b, row_group_size=ROWS // 4)
    return path_a, path_b


def flow_on(root: Path, path_a: Path, path_b: Path) -> dict[str, Path]:
    """load A, load B, merge and process, as the flow chains them; each stage's output."""
    out = {}
    for name, output, inputs in (("load_a", "datasetA", {"data_path": str(path_a)}),
                                 ("load_b", "datasetB", {"data_path": str(path_b)}),
                                 ("merge", "merged_data", {"datasetA": None, "datasetB": None}),
                                 ("process", "processed_data", {"merged_data": None})):
        inputs = {key: out.get(key, value) for key, value in inputs.items()}
        status, error, outputs = run_stage(name, tree(root / name), inputs)
        assert (status, error) == (0, None), name
        out[output] = outputs / output
    return out


def test_each_data_stage_writes_on_the_cluster_what_it_writes_on_one_machine(tmp_path, on_cluster, monkeypatch,
                                                                                capsys):
    path_a, path_b = messy_sources(tmp_path)
    clustered = flow_on(tmp_path / "cluster", path_a, path_b)
    logged = capsys.readouterr().err
    for name, value in on_cluster.environment().items():
        monkeypatch.delenv(name)
    alone = flow_on(tmp_path / "alone", path_a, path_b)
    assert "on the Dask cluster" not in capsys.readouterr().err
    # every stage did its work on the cluster: the loads (both formats), merge's ranges, process
    assert logged.count("on the Dask cluster at") == 4 and "on the cluster: " in logged
    assert "naming the problem on one machine" not in logged
    for name in ("merged_data", "processed_data"):
        assert clustered[name].read_bytes() == alone[name].read_bytes(), name
    for name in ("datasetA", "datasetB"):  # the same rows, row groups and lineage; only the load time differs
        one, other = dataset.Snapshot(clustered[name], name), dataset.Snapshot(alone[name], name)
        assert one.read().to_pandas().equals(other.read().to_pandas())  # (NaN where NaN: pandas says equal)
        assert one.row_group_rows() == other.row_group_rows()
        assert {**one.meta["source"], "loaded_at": 0} == {**other.meta["source"], "loaded_at": 0}
    processed = dataset.Snapshot(clustered["processed_data"], "processed_data")
    assert processed.meta["dropped"] > 0 and processed.num_rows == ROWS + ROWS // 2 - 1 - processed.meta["dropped"]  # Ids 1 to 8,999
    assert not list(Path(on_cluster.environment()[cluster.SHARED_ENV]).iterdir())  # nothing left in shared storage


def bad_rows(folder: Path) -> list[tuple[str, dict]]:
    """Stage inputs that a stage refuses somewhere past its first partition."""
    schema = schemas.active()
    first = next(iter(schema.features))
    rows = source_table(np.arange(1, ROWS + 1), seed=1)
    text = folder / "bad.csv"
    pcsv.write_csv(rows, text)
    lines = text.read_text().splitlines()
    cells = lines[ROWS - 10].split(",")
    cells[rows.column_names.index(first)] = "oops"
    lines[ROWS - 10] = ",".join(cells)
    text.write_text("\n".join(lines) + "\n")
    repeated = folder / "repeated.csv"
    pcsv.write_csv(source_table(np.r_[np.arange(1, ROWS), [17]], seed=1), repeated)
    sorted_twice = folder / "sorted-twice.csv"  # sorted, one Id twice in a row (within a part or across two)
    pcsv.write_csv(source_table(np.r_[np.arange(1, ROWS // 2), np.arange(ROWS // 2 - 1, ROWS)], seed=1), sorted_twice)
    a = write_snapshot(folder / "a", source_table(np.arange(1, ROWS + 1), seed=1))
    other = source_table(np.arange(ROWS - 5, 2 * ROWS), seed=2)  # the Ids both hold differ in their values
    b = write_snapshot(folder / "b", other)
    unknown = source_table(np.arange(1, ROWS + 1), seed=1)
    labels = unknown.column(schema.label).to_pylist()
    labels[ROWS - 3] = "no-such-class"
    unknown = unknown.set_column(unknown.schema.get_field_index(schema.label), schema.label, pa.array(labels))
    cases = [("load_a", {"data_path": str(text)}), ("load_a", {"data_path": str(repeated)}),
             ("load_a", {"data_path": str(sorted_twice)}),
             ("merge", {"datasetA": a, "datasetB": b})]
    if schema.classes:
        cases.append(("process", {"merged_data": write_snapshot(folder / "unknown", unknown)}))
    return cases


def test_what_a_stage_refuses_on_the_cluster_it_refuses_in_the_same_words(tmp_path, on_cluster, monkeypatch):
    cases = bad_rows(tmp_path)
    clustered = [run_stage(name, tree(tmp_path / f"c{n}"), inputs) for n, (name, inputs) in enumerate(cases)]
    for name, value in on_cluster.environment().items():
        monkeypatch.delenv(name)
    alone = [run_stage(name, tree(tmp_path / f"a{n}"), inputs) for n, (name, inputs) in enumerate(cases)]
    for (name, _), (status, error, outputs), single in zip(cases, clustered, alone):
        assert status == 1 and error and error == single[1], name
        assert [p.name for p in outputs.iterdir()] == [contract.ERROR_FILE]  # nothing partial


def test_a_worker_killed_mid_stage_is_survived_and_all_killed_is_one_line(tmp_path, local_cluster, monkeypatch):
    """Runs last in the module: it kills the module cluster's workers."""
    from distributed import Client

    big = write_snapshot(tmp_path / "merged", source_table(np.arange(1, 400_001), seed=4))
    for name, value in local_cluster.environment().items():
        monkeypatch.setenv(name, value)

    def stage(root: Path) -> subprocess.Popen:
        tree(root)
        (root / "inputs" / "merged_data").write_bytes(big.read_bytes())
        env = {**os.environ, "WORKFLOW_ROOT": str(root), "PYTHONPATH": str(ROOT)}
        return subprocess.Popen([sys.executable, str(ROOT / "stages/process/main.py")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def kill_busy(client, every: bool) -> int:
        """Kill the worker processes (nanny and worker) running a partition, once one runs; how many."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [address for address, tasks in client.processing().items() if tasks]
            if busy:
                names = {info["name"]: address for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}
                victims = [proc for proc in local_cluster.processes[1:]
                           if names.get(Path(proc.args[-1]).name) in (names.values() if every else busy[:1])]
                for proc in victims:
                    os.killpg(proc.pid, signal.SIGKILL)
                return len(victims)
            time.sleep(0.005)
        raise AssertionError("no partition ran")

    with Client(local_cluster.address, set_as_default=False) as client:
        proc = stage(tmp_path / "one")
        assert kill_busy(client, every=False) == 1
        log = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, log
        assert "on the Dask cluster" in log and "naming the problem" not in log
        out = dataset.Snapshot(tmp_path / "one" / "outputs" / "processed_data", "processed_data")
        assert out.num_rows == 400_000 and out.read().column(schemas.active().key).to_pylist() == list(range(1, 400_001))

        proc = stage(tmp_path / "all")
        assert kill_busy(client, every=True) >= 1
        log = proc.communicate(timeout=120)[0]
    error = (tmp_path / "all" / "outputs" / contract.ERROR_FILE).read_text()
    assert proc.returncode == 1 and error.startswith("cluster: ") and len(error.strip().splitlines()) == 1, log
    assert [p.name for p in (tmp_path / "all" / "outputs").iterdir()] == [contract.ERROR_FILE]
    assert "Traceback" not in error


# ------------------------------------------------------------------ no cluster needed


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
@pytest.mark.parametrize("last_newline", [True, False])
def test_a_csvs_parts_hold_each_line_once_wherever_the_cuts_fall(tmp_path, ending, last_newline):
    lines = ["Id,x"] + [f"{i},{'y' * (i % 7)}" for i in range(1, 300)]
    path = tmp_path / "s.csv"
    path.write_bytes((ending.join(lines) + (ending if last_newline else "")).encode())
    size = path.stat().st_size
    for workers in (1, 2, 7):
        parts = sources.csv_parts(size, workers)
        assert parts[0][0] == 0 and parts[-1][1] == size and all(x[1] == y[0] for x, y in zip(parts, parts[1:]))
    for step in (3, 5, 64, 1000):
        blocks = [sources.csv_block(path, start, min(start + step, size)).decode()
                  for start in range(0, size, step)]
        assert all(block.startswith("Id,x") for block in blocks if block)
        rows = [line.rstrip("\r") for block in blocks if block for line in block.splitlines()[1:]]
        assert rows == lines[1:], step


def test_the_same_rows_give_the_same_snapshot_bytes_however_they_were_batched(tmp_path):
    table = dataset.conform(source_table(np.arange(1, 5001), seed=2), "t")
    one, other = tmp_path / "one", tmp_path / "other"
    with dataset.Writer(one) as writer:
        writer.write(table)
    with dataset.Writer(other) as writer:  # batches whose labels came on dictionaries of their own
        for start in range(0, table.num_rows, 333):
            part = table.slice(start, 333)
            label = schemas.active().label
            writer.write(part.set_column(part.schema.get_field_index(label), label,
                                         pa.chunked_array([pa.array(part.column(label).to_pylist()).dictionary_encode()])))
    assert one.read_bytes() == other.read_bytes()


@pytest.mark.parametrize("value, expected", [("3", 3), ("127.0.0.1:8786", "127.0.0.1:8786"),
                                             ("tcp://sched:9000", "sched:9000")])
def test_dask_takes_workers_or_a_scheduler(value, expected):
    assert dask_cluster.parse(value) == expected


@pytest.mark.parametrize("value", ["0", "65", "two", "host:", ":8786", "http://x:1"])
def test_dask_refuses_what_is_neither_in_one_line(value):
    with pytest.raises(dask_cluster.ClusterError, match=r"^--dask "):
        dask_cluster.parse(value)


def test_a_half_named_scheduler_is_one_line(monkeypatch):
    monkeypatch.setenv(cluster.HOST_ENV, "sched")
    monkeypatch.delenv(cluster.PORT_ENV, raising=False)
    with pytest.raises(contract.StageError, match="set both"):
        cluster.scheduler_address()


# ------------------------------------------------------------------ stageflow run --dask


def cluster_processes(run_dir: Path) -> list[int]:
    """Processes still working in the run's cluster folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(run_dir / ".dask")):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def stageflow_run(*words, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stageflow", "run", *words], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_stageflow_run_dask_2_gives_the_outputs_of_a_run_on_one_machine(tmp_path):
    a, b = samples()
    common = ["--no-cache", "--data-path-a", str(a), "--data-path-b", str(b), "--epochs", "3"]
    clustered = stageflow_run("--dask", "2", "--run-dir", str(tmp_path / "c"), *common)
    log = clustered.communicate(timeout=600)[0]
    assert clustered.returncode == 0, log
    assert "dask: cluster stages on the scheduler at 127.0.0.1:" in log
    alone = stageflow_run("--run-dir", str(tmp_path / "a"), *common)
    assert alone.communicate(timeout=600)[1] is None and alone.returncode == 0
    for path in ("merge/outputs/merged_data", "process/outputs/processed_data", "outputs/model.skops"):
        assert (tmp_path / "c" / path).read_bytes() == (tmp_path / "a" / path).read_bytes(), path
    metrics = [json.loads((tmp_path / run / "outputs" / "metrics.json").read_text()) for run in ("c", "a")]
    for found in metrics:
        found.pop("seconds")  # how long training took: the one figure two runs do not share
    assert metrics[0] == metrics[1]
    for stage in ("load_a", "merge", "process"):
        assert "on the Dask cluster at" in (tmp_path / "c" / "logs" / f"{stage}.log").read_text(), stage
    assert not cluster_processes(tmp_path / "c") and not (tmp_path / "c" / ".dask").exists()


def test_the_cluster_is_stopped_when_a_run_fails_or_is_interrupted(tmp_path, big_source):
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing,of,the,schema\n1,2,3,4\n")
    failed = stageflow_run("--dask", "1", "--run-dir", str(tmp_path / "f"), "--no-cache", "--data-path-a", str(bad))
    log = failed.communicate(timeout=300)[0]
    assert failed.returncode != 0 and "task load_a failed" in log, log
    assert not cluster_processes(tmp_path / "f")

    run = stageflow_run("--dask", "1", "--run-dir", str(tmp_path / "i"), "--no-cache", "--data-path-a", str(big_source))
    deadline = time.monotonic() + 120
    seen = ""
    while "on the Dask cluster at" not in seen:
        seen += run.stdout.readline()
        assert time.monotonic() < deadline and run.poll() is None, seen
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=120)
    assert run.returncode != 0
    assert not cluster_processes(tmp_path / "i")


def test_dask_with_the_docker_backend_is_refused_in_one_line(tmp_path):
    proc = stageflow_run("--dask", "2", "--backend", "docker", "--run-dir", str(tmp_path / "d"))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "--dask" in out and "--backend host" in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1
