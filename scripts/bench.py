"""Benchmark: the flow against what a user would run instead, on sources generated like the schema's sample.

    make bench                                   # 2 x 1,000,000 rows, the flow's defaults (10 epochs, batch 32)
    make bench ROWS=50000 BENCH_ARGS="--repeat 3 --no-baseline --no-docker --no-peer"
    make bench ROWS=10000000 BENCH_ARGS="--shuffle --until merge --no-baseline --no-docker"
    make bench ROWS=10000000 BENCH_ARGS="--shuffle --until merge --no-baseline --no-docker --merge-against 9534ef9 --merge-against dask"

(docs/performance.md lists the commands behind each figure it gives.)

Generates two CSV sources of ROWS rows each in the active schema's columns (iris: schema.toml; SCHEMA= or
STAGEFLOW_SCHEMA for another), drawn like the rows of its [samples] (Ids 1..N in A and N+1..2N in B; odd and
even Ids with --interleave; each source's Ids in random order with --shuffle), in a temporary directory it
deletes afterwards, then measures, side by side:
  1. the whole flow, stage by stage: the seed-style stages (scripts/bench_seed.py: a process per stage,
     pandas and CSV between stages, the seed's random forest), the flow through the runner (DAG from
     flow.py, no cache) with the process backend, and with the docker backend when a daemon answers and
     the stage images are built (`make images`);
  2. the whole flow against the same five stages as plain flytekit tasks run by `pyflyte run`
     (scripts/bench_flytekit.py: pandas between tasks, scikit-learn's own fit), alternating, --repeat times;
  3. the train stage against scikit-learn's own `MLPClassifier(...).fit(X, y)` on the same rows, both
     as fresh processes, alternating, --repeat times at each of --fit-batch-sizes;
  4. with --dask N, the flow again with the data stages on a Dask cluster of N local workers (a scheduler and
     N worker processes, as `stageflow run --dask N` starts them), against the first run on one machine:
     per stage the job's wall seconds and peak, and each worker's peak memory while the stage ran (sampled
     every 50 ms; the two loads run together, so their workers' figures are shared);
  5. with --merge-against, the merge stage on the loads' snapshots against the merge stage at a git revision
     (9534ef9: the last with the hand-written external sort) or Dask's shuffle (scripts/bench_merge_dask.py),
     fresh processes, alternating, --repeat times, checking that each gives the same rows in the same order.
Per stage: wall and CPU seconds, peak memory and input rows per second. Peak memory of a process is its
own high-water mark (VmHWM, MiB: the interpreter and libraries included); of a container, its cgroup's
(which counts page cache too). CPU seconds (user + system) are steadier than wall seconds on a busy
machine. Epochs and batch size default to flow.py's. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "scripts")) if p not in sys.path]

from stageflow import backends, dag as dag_module, jobs, registry, runner  # noqa: E402
from stageflow.files import place  # noqa: E402
from stageflow.runtime import contract, dataset, inputs, schema as schemas, sources  # noqa: E402

CHUNK = 1_000_000
STAGES = list(registry.STAGES)
TRAIN = "train"  # the stage measured against scikit-learn's own fit
FLOOR_UNTIL = "process"  # the last stage of the data path the DuckDB floor does in one query
PYFLYTE = Path(sys.executable).with_name("pyflyte")


# ------------------------------------------------------------------ the sources


@dataclasses.dataclass
class Shape:
    """What the generated rows look like: those of the active schema's sample, so that the classes overlap
    as the real ones do. Columns in the order of sample A's header; per class (rows) and feature (columns)
    the sample's mean and standard deviation; each class's label as the sample spells it most often."""
    schema: schemas.Schema
    columns: list[str]
    labels: list[str]
    mean: np.ndarray
    std: np.ndarray
    places: list[int]  # decimal places each feature is written with: as many as the sample's values have
    floor: list[int | None]  # the lowest value generated, in units of the last place: 1 where the sample's
    # values are all positive, 0 where they are at least 0, none where some are negative


def _read(path: Path) -> pa.Table:
    """A sample source through the load stage's own reader and checks."""
    fmt = inputs.source_format(inputs.data_path(str(path)))
    return pa.concat_tables([dataset.conform(table, str(path)) for table in sources.source_tables(path, fmt)])


def _places(values: np.ndarray) -> int:
    return next((d for d in range(5) if np.allclose(values * 10 ** d, np.rint(values * 10 ** d))), 4)


def sample_shape() -> Shape:
    schema = schemas.active()
    if set(schema.samples) != {"data_path_a", "data_path_b"}:
        raise SystemExit(f"bench: schema {schema.path} names no sample sources ([samples] data_path_a and "
                         f"data_path_b): the generated rows are drawn like the sample's")
    first = schema.samples["data_path_a"]
    columns = next(sources.source_tables(first, inputs.source_format(first))).column_names
    table = pa.concat_tables([_read(path) for path in schema.samples.values()], promote_options="permissive")
    raw = np.asarray(pa.chunked_array(table.column(schema.label)).cast(pa.string()).to_pylist(), dtype=object)
    present = np.asarray([label is not None for label in raw])
    canonical = np.asarray([schema.canonical(label) for label in raw[present]], dtype=object)
    x = np.column_stack([table.column(name).to_numpy(zero_copy_only=False).astype(float) for name in schema.features])
    x = x[present]
    classes = sorted(set(canonical))
    rows = [canonical == name for name in classes]
    spelt = [max(set(raw[present][r]), key=list(raw[present][r]).count) for r in rows]
    return Shape(schema, columns, spelt, np.array([np.nanmean(x[r], axis=0) for r in rows]),
                 np.array([np.nanstd(x[r], axis=0, ddof=1) for r in rows]),
                 [0 if kind == "int" else _places(x[:, i][~np.isnan(x[:, i])])
                  for i, kind in enumerate(schema.features.values())],
                 [1 if low > 0 else 0 if low == 0 else None for low in np.nanmin(x, axis=0)])


def _decimal_strings(low: int, high: int, places: int) -> pa.Array:
    """Every decimal with `places` digits after the point from low to high (in units of the last digit)."""
    scale = 10 ** places
    if places == 0:
        return pa.array([str(v) for v in range(low, high + 1)])
    return pa.array([f"{'-' if v < 0 else ''}{abs(v) // scale}.{abs(v) % scale:0{places}d}"
                     for v in range(low, high + 1)])


def _as_text(units: np.ndarray, places: int) -> pa.DictionaryArray:
    """Numbers given in units of their last decimal place, as their decimal strings (through a dictionary:
    formatting floats is what makes a CSV writer slow, and a measurement has few distinct values)."""
    low, high = int(units.min()), int(units.max())
    return pa.DictionaryArray.from_arrays(pa.array(units - low, pa.int32()), _decimal_strings(low, high, places))


def _rows(shape: Shape, rng: np.random.Generator, keys: np.ndarray) -> pa.Table:
    """One chunk of generated rows: a class for each, then its features, dropped columns and label."""
    schema, n = shape.schema, len(keys)
    classes = rng.integers(0, len(shape.labels), n, dtype=np.int8)
    values = rng.normal(shape.mean[classes], shape.std[classes])
    text_keys = schema.key_type == "text"  # zero-padded, so that text order is number order
    columns = {schema.key: pa.array(np.char.zfill(keys.astype(str), 12) if text_keys else keys)}
    for i, name in enumerate(schema.features):
        units = np.rint(values[:, i] * 10 ** shape.places[i]).astype(np.int64)
        if shape.floor[i] is not None:
            units = np.maximum(units, shape.floor[i])
        columns[name] = _as_text(units, shape.places[i])
    for name, kind in schema.dropped.items():  # noise, like the seed's RandomColumn
        if kind == "float":
            columns[name] = _as_text(np.clip(np.rint(rng.normal(0, 1, n) * 10_000), -40000, 40000).astype(np.int64), 4)
        else:
            columns[name] = pa.array(rng.integers(0, 100, n) if kind == "int" else np.full(n, "x"))
    columns[schema.label] = pa.DictionaryArray.from_arrays(pa.array(classes), pa.array(shape.labels))
    return pa.table({name: columns[name] for name in shape.columns})


def generate(path: Path, rows: int, first_id: int, seed: int, id_step: int = 1, shuffle: bool = False) -> None:
    """Write a CSV of rows like the active schema's sample, a chunk at a time (bounded memory at any size;
    with `shuffle`, the keys' order is drawn whole: 8 bytes a row)."""
    shape = sample_shape()
    rng = np.random.default_rng(seed)
    ids = first_id + id_step * (rng.permutation(rows) if shuffle else np.arange(rows, dtype=np.int64))
    with open(path, "wb") as handle:
        handle.write((",".join(shape.columns) + "\n").encode())
        for start in range(0, rows, CHUNK):
            pcsv.write_csv(_rows(shape, rng, ids[start:start + CHUNK]), handle,
                           pcsv.WriteOptions(include_header=False, quoting_style="none"))


# ------------------------------------------------------------------ measuring


@dataclasses.dataclass
class Measure:
    seconds: float | None = None  # wall
    rss_mb: float | None = None  # peak resident set
    cpu: float | None = None  # user + system seconds: steadier than wall on a busy machine
    loop: float | None = None  # for train and fit: seconds in the training loop alone
    reached: float | None = None  # a stage of a run: seconds from the run's start to the stage's end


REAP_LOCK = threading.Lock()


class RusageHandle:
    """The runner's own process handle (which records the stage's peak memory), plus its CPU seconds.

    They come from this process's RUSAGE_CHILDREN just before and after the runner's handle reaps the
    stage: waiting (without reaping) until it has exited, then reaping under a lock, keeps two stages that
    end together (load_a, load_b) from mixing their figures.
    """

    def __init__(self, inner, sink: dict, name: str, ended: dict | None = None):
        self.inner, self.sink, self.name, self.ended = inner, sink, name, ended

    def lines(self):
        return self.inner.lines()

    def kill(self, reason: str = "interrupted") -> None:
        self.inner.kill(reason)

    def wait(self) -> backends.Outcome:
        os.waitid(os.P_PID, self.inner.proc.pid, os.WEXITED | os.WNOWAIT)
        with REAP_LOCK:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            outcome = self.inner.wait()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.sink[self.name] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if self.ended is not None:
            self.ended[self.name] = time.perf_counter()
        return outcome


class RusageHostBackend(backends.HostBackend):
    """The process backend, keeping each stage's CPU seconds and when it ended (perf_counter)."""

    def __init__(self):
        self.usage: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def start(self, job, tree, *args, **kwargs):
        return RusageHandle(super().start(job, tree, *args, **kwargs), self.usage, job.node.name, self.ended)


def measured(cmd: list[str], log: Path, **popen) -> Measure:
    """Run one child to completion, watched as the runner watches a stage (its peak VmHWM, its CPU seconds
    and its children's), so that every contender's figures are taken the same way."""
    started, usage = time.perf_counter(), {}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **{"cwd": ROOT, **popen})
        outcome = RusageHandle(backends.ProcessHandle(proc, math.inf), usage, "child").wait()
    seconds = time.perf_counter() - started
    if outcome.exit_code != 0:
        raise SystemExit(f"bench: {' '.join(map(str, cmd))} failed ({outcome.exit_code}); see {log}")
    return Measure(seconds, outcome.peak_rss_mb, usage["child"])


# ------------------------------------------------------------------ the contenders


def upto(dag, last: str):
    """The DAG cut after stage `last`: that stage and everything upstream of it."""
    keep, todo = {last}, [last]
    while todo:
        new = dag.node(todo.pop()).upstream - keep
        keep |= new
        todo += new
    return dataclasses.replace(dag, nodes=[n for n in dag.nodes if n.name in keep], outputs={})


def run_baseline(work: Path, dag, sources: dict[str, Path], params: dict) -> dict[str, Measure]:
    """The seed-style stages, one process each, wired as the DAG wires the flow's: CSV between them."""
    d = work / "seed"
    d.mkdir()
    results = {}
    for node in dag.nodes:  # constants (the schema's text) are left out: the seed read files of its own
        args = [f"{name}={d / f'{src.stage}.out' if src.stage else {**dag.defaults, **sources, **params}[src.flow_input]}"
                for name, (_, src) in node.inputs.items() if src.stage or src.flow_input]
        print(f"  seed-style {node.name} ...", flush=True)
        results[node.name] = measured([sys.executable, str(ROOT / "scripts" / "bench_seed.py"), node.name,
                                       str(d / f"{node.name}.out"), *args], d / f"{node.name}.log")
    return results


def run_flow(work: Path, dag, backend, params: dict, timeout: float, label: str = ""
             ) -> tuple[dict[str, Measure], float, runner.Run]:
    run_dir = work / f"run-{backend.name}{label}"
    run = runner.Run(dag, run_dir, backend, params, timeout=timeout, echo=False)
    started = time.perf_counter()
    ok = run.execute()
    wall = time.perf_counter() - started
    if not ok:
        failed = next(n for n, r in run.results.items() if r.status == "failed")
        raise RuntimeError(f"task {failed} failed: {run.results[failed].error} (log {run.results[failed].log})")
    own, ended = getattr(backend, "usage", {}), getattr(backend, "ended", {})
    results = {name: Measure(r.seconds, r.peak_rss_mb, own.get(name), reached=ended[name] - started if name in ended
                             else None) for name, r in run.results.items()}
    return results, wall, run


def worker_memory(proc: subprocess.Popen) -> float:
    """A local worker's resident memory (MiB): the worker process its nanny started (the nanny's own aside)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == proc.pid:
            continue
        try:
            if os.getpgid(int(entry.name)) != proc.pid:
                continue
            found = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        total += int(found.split()[1])
    return total / 1024


def run_on_cluster(work: Path, dag, params: dict, timeout: float, workers: int
                   ) -> tuple[dict[str, Measure], dict[str, list[float]], float]:
    """The flow with its cluster stages on a local cluster of `workers` workers: per stage the job's figures and
    each worker's peak memory while the stage ran."""
    from stageflow import dask_cluster

    peaks: dict[str, list[float]] = {}
    with dask_cluster.LocalCluster(workers, work / "dask") as found:
        setup = jobs.Setup(dask=found.address).with_flow(ROOT / "flow.py")
        run = runner.Run(dag, work / "run-dask", RusageHostBackend(), params, timeout=timeout, echo=False, setup=setup)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                running = [name for name, result in run.results.items() if result.status == "running"]
                if running:
                    now = [worker_memory(proc) for proc in found.processes[1:]]
                    for name in running:
                        peaks[name] = [max(a, b) for a, b in zip(peaks.get(name, [0.0] * len(now)), now)]

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        started = time.perf_counter()
        try:
            ok = run.execute()
        finally:
            done.set()
            watcher.join()
        wall = time.perf_counter() - started
    if not ok:
        failed = next(n for n, r in run.results.items() if r.status == "failed")
        raise RuntimeError(f"task {failed} failed on the cluster: {run.results[failed].error}")
    results = {name: Measure(r.seconds, r.peak_rss_mb, run.backend.usage.get(name)) for name, r in run.results.items()}
    return results, peaks, wall


def show_cluster(dag, n: int, alone: dict[str, Measure], wall_alone: float, clustered: dict[str, Measure],
                 peaks: dict[str, list[float]], wall: float, workers: int) -> None:
    print(f"\nthe data stages on a Dask cluster of {workers} local workers (scheduler and workers as processes) / on "
          f"one machine, {n:,} rows per source: wall s and peak MiB of the job; each worker's peak MiB while the "
          f"stage ran (the outputs are the same bytes: tests/test_cluster.py)")
    lines = [["stage", "one machine s", "peak", "cluster s", "job peak", "workers' peaks", "cluster / one"]]
    for node in dag.nodes:
        one, other = alone[node.name], clustered[node.name]
        lines.append([node.name, f"{one.seconds:.2f}", fmt(one.rss_mb, ".0f"), f"{other.seconds:.2f}",
                      fmt(other.rss_mb, ".0f"), ", ".join(f"{p:.0f}" for p in peaks.get(node.name, [])) or "-",
                      f"{other.seconds / one.seconds:.2f}x"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    for row in lines:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print(f"  whole run: {wall_alone:.2f} s on one machine, {wall:.2f} s with the cluster ({wall / wall_alone:.2f}x)")


def cli_start(work: Path) -> Measure:
    """What `stageflow run` costs before its first stage starts (imports, the DAG from its cache): the
    runner is timed in this process, the peer as a whole command."""
    return measured([sys.executable, "-c", "from stageflow import cli, dag; dag.load()"], work / "cli-start.log")


def run_command(work: Path, sources: dict[str, Path], params: dict, label: str) -> Measure:
    """`stageflow run --no-cache` as a user types it, the whole command: its start, the run, the run report and
    the summary it prints (host backend, the same inputs as the flow's other runs)."""
    args = [f"--{name.replace('_', '-')}={value}" for name, value in {**sources, **params}.items()]
    return measured([sys.executable, "-m", "stageflow", "run", "--no-cache", "--backend", "host",
                     "--run-dir", str(work / f"command{label}"), *args], work / f"command{label}.log")


def run_peer(work: Path, sources: dict[str, Path], params: dict, label: str) -> Measure:
    """The same stages as plain flytekit tasks, run by `pyflyte run` (flytekit's scratch files in `work`)."""
    d = work / f"peer{label}"
    d.mkdir()
    args = [f"--{name}={value}" for name, value in {**params, **sources}.items()]
    return measured([str(PYFLYTE), "run", str(ROOT / "scripts" / "bench_flytekit.py"), "model_training", *args],
                    d / "pyflyte.log", cwd=d, env={**os.environ, "TMPDIR": str(d)})


def floor_query(sources: dict[str, Path], out: Path) -> str:
    """The whole data path as one DuckDB query, the floor the data stages are measured against: read both
    sources, A's rows and those of B whose key A lacks, without the rows process drops (a label or a feature
    missing, a feature NaN) and the columns it drops, sorted by the key, written as zstd Parquet. No schema
    checks, no conflict check, no snapshot metadata, no label spelling: what the stages do beyond this is theirs."""
    schema = schemas.active()
    key, label = f'"{schema.key}"', f'"{schema.label}"'
    kept = ", ".join(f'"{name}"' for name in schema.required)
    usable = " AND ".join([f"{label} IS NOT NULL"] + [f'"{f}" IS NOT NULL AND NOT isnan(CAST("{f}" AS DOUBLE))'
                                                    for f in schema.features])
    a, b = (str(sources[name]).replace("'", "''") for name in ("data_path_a", "data_path_b"))
    return (f"COPY (WITH a AS (SELECT * FROM read_csv('{a}')), b AS (SELECT * FROM read_csv('{b}')) "
            f"SELECT {kept} FROM (SELECT * FROM a UNION ALL BY NAME (SELECT * FROM b ANTI JOIN a USING ({key}))) "
            f"WHERE {usable} ORDER BY {key}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")


def run_floor(work: Path, sources: dict[str, Path], label: str) -> Measure:
    """The floor query as a fresh process: Python, DuckDB's import and the query, as a user's one script would."""
    out = work / f"floor{label}.parquet"
    m = measured([sys.executable, "-c", "import sys, duckdb; duckdb.sql(sys.argv[1])", floor_query(sources, out)],
                 work / f"floor{label}.log")
    out.unlink()
    return m


def run_alone(backend, node, tree: Path, timeout: float):
    """Node `node` as one job of `backend` in the prepared `tree`, its log in tree/stage.log: its outcome, and
    the monotonic clock when it was started and when it ended."""
    job = jobs.plan(dag_module.Dag([node], {}, {}, {}), jobs.Setup(code=ROOT), "bench", None)[node.name]
    started = time.monotonic()
    handle = backend.start(job, tree, timeout, [])
    with open(tree / "stage.log", "w") as log:
        log.writelines(handle.lines())
    outcome = handle.wait()
    return outcome, started, time.monotonic()


def run_train(work: Path, node, processed: Path, epochs: int, batch_size: int, label: str,
              timeout: float) -> Measure:
    """The train stage alone as the process backend runs it, on a fresh tree holding `processed` and its other
    inputs as the flow gives them (its defaults, and the schema's text)."""
    tree = work / "train-vs-fit" / label
    (tree / "inputs").mkdir(parents=True)
    (tree / "outputs").mkdir()
    defaults = {**dag_module.load().defaults, "epochs": epochs, "batch_size": batch_size}
    for name, (_, src) in node.inputs.items():
        if src.stage:
            place(processed, tree / "inputs" / name)
        else:
            value = defaults[src.flow_input] if src.flow_input else src.value
            (tree / "inputs" / name).write_text(contract.format_value(value))
    backend = RusageHostBackend()
    outcome, started, ended = run_alone(backend, node, tree, timeout)
    seconds = ended - started
    if outcome.exit_code != 0:
        raise SystemExit(f"bench: the train stage failed ({outcome.exit_code}); see {tree / 'stage.log'}")
    loop = json.loads((tree / "outputs" / "metrics").read_text())["seconds"]
    shutil.rmtree(tree)  # a copy of the data, the model, the report: not needed, and repeats add up
    return Measure(seconds, outcome.peak_rss_mb, backend.usage[node.name], loop)


class PhaseBackend(RusageHostBackend):
    """The process backend running each stage under scripts/bench_phases.py, which notes its phases in a file."""

    def __init__(self, times: Path):
        super().__init__()
        self.times = times

    def command(self, job) -> list[str]:
        return [sys.executable, str(ROOT / "scripts" / "bench_phases.py"), str(self.times), str(ROOT / job.stage.script)]


PHASES = ("python up", "imports", "work", "writing")


def run_phases(work: Path, dag, run: runner.Run, label: str, timeout: float) -> dict[str, dict[str, float]]:
    """Each stage again as a fresh process, in a copy of its tree from `run`, under the phase probe: seconds from
    the process's start until its interpreter is up, until its first input is read (its imports), then the work
    and the writing up to its exit."""
    phases = {}
    for node in dag.nodes:
        tree = work / "phases" / f"{node.name}-{label}"
        shutil.copytree(run.tree(node.name) / "inputs", tree / "inputs", symlinks=True)
        (tree / "outputs").mkdir()
        outcome, started, ended = run_alone(PhaseBackend(tree / "times.json"), node, tree, timeout)
        if outcome.exit_code != 0:
            raise SystemExit(f"bench: stage {node.name} failed under the phase probe; see {tree / 'stage.log'}")
        marks = json.loads((tree / "times.json").read_text())
        read = marks["read"] or ended
        phases[node.name] = dict(zip(PHASES, (marks["up"] - started, read - marks["up"],
                                              ended - read - marks["writing"], marks["writing"])))
        shutil.rmtree(tree)
    return phases


def show_phases(dag, n: int, rounds: list[dict[str, dict[str, float]]]) -> None:
    print(f"\nwhere each stage's time goes, {n:,} rows per source, fresh processes under scripts/bench_phases.py "
          f"(seconds, median of {len(rounds)}): python up = process start to interpreter ready; imports = to its "
          f"first input read; work; writing = inside the snapshot writer (or an output's block)")
    lines = [["stage", *PHASES, "total"]]
    for node in dag.nodes:
        values = [statistics.median(r[node.name][p] for r in rounds) for p in PHASES]
        lines.append([node.name, *(f"{v:.3f}" for v in values),
                      f"{statistics.median(sum(r[node.name].values()) for r in rounds):.3f}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    for row in lines:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


def run_fit(work: Path, processed: Path, epochs: int, batch_size: int, label: str) -> Measure:
    """scikit-learn's own fit on the rows the stage trains on, then the model saved with skops.io.dump, as the
    stage saves it, as a fresh process."""
    log = work / "train-vs-fit" / f"{label}.fit.log"
    m = measured([sys.executable, str(ROOT / "scripts" / "bench_seed.py"), "fit", str(processed), str(epochs),
                  str(batch_size)], log)
    m.loop = json.loads(log.read_text().splitlines()[-1])["seconds"]
    return m


def merge_tree(work: Path, inputs: Path, label: str) -> Path:
    """A fresh /workflow tree for the merge stage holding `inputs` (the loads' snapshots, linked)."""
    tree = work / "merge-vs" / label
    (tree / "outputs").mkdir(parents=True)
    (tree / "inputs").mkdir()
    for name in ("datasetA", "datasetB"):
        os.link(inputs / name, tree / "inputs" / name)
    return tree


def old_merge(work: Path, revision: str) -> Path:
    """The merge stage and the package it imports as they were at `revision` (git archive), to run beside
    this checkout's: say, the last one with the hand-written external sort."""
    where = work / f"merge-at-{revision}"
    if not where.is_dir():
        where.mkdir()
        archive = subprocess.run(["git", "archive", revision, "stageflow", "stages/merge", "schema.toml"], cwd=ROOT,
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise SystemExit(f"bench: --merge-against {revision}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def run_merge_contender(work: Path, inputs: Path, contender: str, label: str) -> tuple[Measure, Path]:
    """One merge of the loads' snapshots as a fresh process: this checkout's stage ("stage"), the stage at a
    git revision ("at REV"), or Dask ("dask"). Returns its figures and its output."""
    tree = merge_tree(work, inputs, label)
    log = tree / "merge.log"
    env = {**os.environ, "WORKFLOW_ROOT": str(tree)}
    if contender == "dask":
        out = tree / "outputs" / "merged_data"
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_merge_dask.py"), *(str(tree / "inputs" / n)
                                                                              for n in ("datasetA", "datasetB")), str(out)]
    else:
        code = old_merge(work, contender.split()[-1]) if contender.startswith("at ") else ROOT
        env["PYTHONPATH"] = str(code)
        cmd = [sys.executable, str(code / "stages" / "merge" / "main.py")]
    return measured(cmd, log, env=env), tree / "outputs" / "merged_data"


def same_rows(left: Path, right: Path) -> bool:
    """Whether two merged snapshots hold the same rows in the same order, compared a column at a time."""
    a, b = dataset.Snapshot(left, "left"), dataset.Snapshot(right, "right")
    if a.column_names != b.column_names or a.num_rows != b.num_rows:
        return False
    return all(a.column(name).cast(pa.string() if name == schemas.active().label else a.column(name).type)
               .equals(b.column(name).cast(pa.string() if name == schemas.active().label else a.column(name).type))
               for name in a.column_names)


def docker_backend(dag):
    """The runner's docker backend if it exists, a daemon answers and the images are built; else (None, why)."""
    try:
        from stageflow.containers import DockerBackend
    except ImportError:
        return None, "this checkout has no docker backend (stageflow.containers)"
    try:
        backend = DockerBackend()
        backend.check(list(jobs.plan(dag, jobs.Setup(code=ROOT), "bench", None).values()))
    except Exception as err:  # noqa: BLE001 - any reason the backend cannot run is a reason to skip it
        return None, contract.one_line(err)
    return backend, None


# ------------------------------------------------------------------ the report


def stage_rows(dag, n: int) -> dict[str, int]:
    """Rows each stage reads: one source for a stage that reads a source, both for the rest."""
    return {node.name: 2 * n if node.upstream else n for node in dag.nodes}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


TITLES = {"seed": "seed-style (pandas, CSV)", "process": "stageflow, process backend",
          "docker": "stageflow, docker backend"}
UNITS = ("wall s", "cpu s", "peak MiB", "rows/s")


def table(columns: dict[str, dict[str, Measure]], rows: dict[str, int]) -> str:
    """One group of columns per contender, one row per stage, then the totals (sums; peak is the max)."""
    names = list(rows)
    data_stages = [name for name in names if name != TRAIN]
    lines = [["stage", "rows"] + [unit for _ in columns for unit in UNITS]]
    for name in names:
        line = [name, f"{rows[name]:,}"]
        for results in columns.values():
            m = results.get(name, Measure())
            line += [fmt(m.seconds, ".2f"), fmt(m.cpu, ".2f"), fmt(m.rss_mb, ".0f"),
                     fmt(rows[name] / m.seconds if m.seconds else None, ",.0f")]
        lines.append(line)
    totals = [(f"{len(data_stages)} data stages", data_stages)] + ([("whole flow", names)] if TRAIN in names else [])
    for label, group in totals:
        line = [label, ""]
        for results in columns.values():
            def summed(attr):
                values = [getattr(results[n], attr) for n in group if n in results]
                return fmt(sum(values), ".2f") if len(values) == len(group) and None not in values else "-"
            rss = [results[n].rss_mb for n in group if n in results and results[n].rss_mb is not None]
            line += [summed("seconds"), summed("cpu"), fmt(max(rss), ".0f") if rss else "-", ""]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    render = lambda row: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    out = [render(row).rstrip() for row in lines]
    group = sum(widths[2:6]) + 2 * 3
    titles = " " * (widths[0] + widths[1] + 4) + "  ".join(TITLES[k].center(group) for k in columns)
    rule = "-" * len(out[0])
    return "\n".join([titles.rstrip(), out[0], rule, *out[1:len(names) + 1], rule, *out[len(names) + 1:]])


def total(results: dict[str, Measure], names: list[str], attr: str = "seconds") -> float:
    return sum(getattr(results[n], attr) for n in names)


def spread(values: list[float]) -> str:
    """min / median / max of repeated ratios: the noise is part of the figure."""
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"median {statistics.median(values):.2f}x (min {min(values):.2f}x, max {max(values):.2f}x, {len(values)} runs)"


def show_train_vs_fit(batch_size: int, pairs: list[tuple[Measure, Measure]]) -> None:
    print(f"\nbatch {batch_size}:")
    for i, (train, fit) in enumerate(pairs, 1):
        print(f"  run {i}: train {train.seconds:.2f} s (cpu {train.cpu:.2f}, loop {train.loop:.2f}, "
              f"{train.rss_mb:.0f} MiB) / fit {fit.seconds:.2f} s (cpu {fit.cpu:.2f}, loop {fit.loop:.2f}, "
              f"{fit.rss_mb:.0f} MiB) = {train.seconds / fit.seconds:.2f}x wall, {train.cpu / fit.cpu:.2f}x cpu, "
              f"{train.loop / fit.loop:.2f}x loop")
    for label, attr in (("wall", "seconds"), ("cpu", "cpu"), ("loop", "loop")):
        print(f"  train / fit, {label}: {spread([getattr(t, attr) / getattr(f, attr) for t, f in pairs])}")


# ------------------------------------------------------------------ the run


def arguments() -> argparse.ArgumentParser:
    """The bench's options; tests/test_docs.py parses every `make bench` command the guides show with it."""
    defaults = dag_module.load().defaults
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per source (default 1000000)")
    parser.add_argument("--epochs", type=int, default=defaults["epochs"],
                        help=f"training epochs (default flow.py's, {defaults['epochs']})")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                        help=f"training batch size (default flow.py's, {defaults['batch_size']})")
    parser.add_argument("--fit-batch-sizes", default=f"{defaults['batch_size']},1024",
                        help="batch sizes at which train is measured against sklearn's own fit, comma-separated "
                             f"(default {defaults['batch_size']},1024)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="side-by-side pairs: train and fit at each batch size, the flow and the peer (default 1)")
    parser.add_argument("--until", choices=STAGES, help="run the flow only up to this stage (and what it needs)")
    parser.add_argument("--work-dir", help="where sources and runs go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (default: delete it)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the seed-style stages")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker backend")
    parser.add_argument("--no-peer", action="store_true", help="skip the plain flytekit tasks (pyflyte run)")
    parser.add_argument("--no-fit", action="store_true", help="skip train against sklearn's own fit")
    parser.add_argument("--no-floor", action="store_true", help="skip the data path as one DuckDB query")
    parser.add_argument("--interleave", action="store_true", help="odd Ids in A, even in B (default: A 1..N, B N+1..2N)")
    parser.add_argument("--shuffle", action="store_true", help="each source's Ids in random order (merge cannot stream)")
    parser.add_argument("--merge-against", action="append", default=[], metavar="REV|dask",
                        help="after the flow, run the merge stage again on the loads' snapshots beside the merge "
                             "stage at git revision REV, or Dask's shuffle (dask), fresh processes, alternating, "
                             "--repeat times (repeatable)")
    parser.add_argument("--dask", type=int, metavar="N", help="after the flow, run it again with the data stages on "
                        "a Dask cluster of N local worker processes, side by side")
    parser.add_argument("--phases", action="store_true", help="after the flow, run each stage again --repeat times "
                        "as a fresh process under scripts/bench_phases.py: its start-up, imports, work and writing")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds before a stage is killed")
    parser.add_argument("--task-overhead", type=int, metavar="N", help="only measure what the runner adds to one task "
                        "of a foreign flow against `docker run` of the same command on the same image, N times each")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.rows < 50:
        parser.error("--rows must be at least 50 (the train stage needs a stratified split)")
    args.fit_batch_sizes = [int(b) for b in args.fit_batch_sizes.split(",")]
    # Every contender runs in a directory of its own: a relative schema path must not change meaning there.
    os.environ[schemas.ENV] = str(schemas.path())

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="stageflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.task_overhead:
            return task_overhead(work.resolve(), args.task_overhead)
        return bench(args, work.resolve())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


TASK_COMMAND = "python3 -c \"import json; json.dump({'ok': 1}, open('/workflow/outputs/result', 'w'))\""
TASK_FLOW = f"""
from typing import TypeVar
from flytekit import workflow
from flytekit.types.file import FlyteFile
from flytekitplugins.domino.helpers import Output, run_domino_job_task

@workflow
def one() -> FlyteFile[TypeVar("json")]:
    return run_domino_job_task(flyte_task_name="One", command={TASK_COMMAND!r}, environment_name="Bench",
                               output_specs=[Output(name="result", type=FlyteFile[TypeVar("json")])])["result"]
"""


def task_overhead(work: Path, repeat: int) -> int:
    """One task of a foreign flow through the runner (its code copied to /mnt/code, its outputs checked and
    recorded) against `docker run` of the same command on the same image, alternated, N times each; what
    the runner adds is the difference of the medians."""
    from stageflow import images
    from stageflow.backends import backend_named

    image = images.standard_environment()
    code = work / "code"
    code.mkdir()
    (code / "flow.py").write_text(TASK_FLOW)
    dag = dag_module.load(code / "flow.py", "one")
    plain, ours = [], []
    for n in range(repeat):
        outputs = work / f"plain-{n}"
        outputs.mkdir()
        os.chmod(outputs, 0o777)
        started = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "12574:12574", "-v",
                        f"{outputs}:/workflow/outputs", "--entrypoint", "/bin/sh", image, "-c", TASK_COMMAND],
                       check=True, capture_output=True)
        plain.append(time.perf_counter() - started)
        setup = jobs.Setup(code=code, images={"Bench": image})
        run = runner.Run(dag, work / f"run-{n}", backend_named("docker"), {}, echo=False, setup=setup.with_flow(code / "flow.py"))
        started = time.perf_counter()
        if not run.execute():
            raise SystemExit(f"bench: the task failed: {run.failures()}")
        ours.append(time.perf_counter() - started)
    first, second = statistics.median(plain), statistics.median(ours)
    print(f"one task on {image}, median of {repeat}:\n  docker run            {first:6.2f} s\n"
          f"  stageflow (docker)    {second:6.2f} s\n  what the runner adds  {second - first:+6.2f} s")
    return 0


@dataclasses.dataclass
class Round:
    """One side-by-side round: the flow on each backend, and the peer."""
    ours: dict[str, Measure]
    wall: float  # the process backend's whole run
    docker: dict[str, Measure] | None = None
    peer: Measure | None = None
    command: Measure | None = None  # `stageflow run` as a command, beside the peer
    floor: Measure | None = None  # the data path as one DuckDB query


def make_sources(args: argparse.Namespace, work: Path) -> tuple[dict[str, Path], str]:
    n = args.rows
    sources = {"data_path_a": work / "source_a.csv", "data_path_b": work / "source_b.csv"}
    started = time.perf_counter()
    step, second = (2, 2) if args.interleave else (1, n + 1)
    generate(sources["data_path_a"], n, 1, seed=1, id_step=step, shuffle=args.shuffle)
    generate(sources["data_path_b"], n, second, seed=2, id_step=step, shuffle=args.shuffle)
    size = sum(p.stat().st_size for p in sources.values()) / 1e6
    shape = ", ".join(s for s, on in (("Ids interleaved", args.interleave), ("Ids shuffled", args.shuffle)) if on)
    print(f"generated 2 x {n:,} rows ({size:,.0f} MB of CSV{', ' + shape if shape else ''}) in "
          f"{time.perf_counter() - started:.1f} s in {work}", flush=True)
    return sources, shape


def bench(args: argparse.Namespace, work: Path) -> int:
    sources, shape = make_sources(args, work)
    dag = dag_module.load()
    if args.until:
        dag = upto(dag, args.until)
    params = {"epochs": args.epochs, "batch_size": args.batch_size}
    with_train = any(node.name == TRAIN for node in dag.nodes)
    if with_train:
        print(f"training: epochs {args.epochs}, batch size {args.batch_size}", flush=True)
    flow_params = {**{k: str(v) for k, v in sources.items()}, **params}

    seed = None
    if not args.no_baseline:
        print("seed-style stages (pandas, CSV between stages, one process per stage)", flush=True)
        seed = run_baseline(work, dag, sources, params)
    docker, docker_note = (None, "--no-docker") if args.no_docker else docker_backend(dag)
    with_peer = with_train and not args.no_peer
    with_floor = not args.no_floor and any(node.name == FLOOR_UNTIL for node in dag.nodes)
    start = cli_start(work).seconds if with_floor else 0.0
    rounds: list[Round] = []
    for i in range(args.repeat if docker or with_peer or with_floor else 1):
        label = f"-{i + 1}"
        print(f"stageflow, process backend, run {i + 1}", flush=True)
        ours, wall, run = run_flow(work, dag, RusageHostBackend(), flow_params, args.timeout, label)
        rounds.append(Round(ours, wall))
        if docker:
            print(f"stageflow, docker backend, run {i + 1}", flush=True)
            try:
                rounds[-1].docker = run_flow(work, dag, docker, flow_params, args.timeout, label)[0]
            except RuntimeError as err:
                docker, docker_note = None, contract.one_line(err)
        if with_peer:
            print(f"the same stages as plain flytekit tasks, pyflyte run, run {i + 1}", flush=True)
            rounds[-1].peer = run_peer(work, sources, params, label)
            print(f"stageflow run, the command, run {i + 1}", flush=True)
            rounds[-1].command = run_command(work, sources, params, label)
        if with_floor:
            print(f"the data path as one DuckDB query, run {i + 1}", flush=True)
            rounds[-1].floor = run_floor(work, sources, label)
        if i == 0:
            if with_train:
                processed = run.tree(TRAIN) / "inputs" / "processed_data"  # what train-vs-fit trains on
            if any(node.name == "merge" for node in dag.nodes):
                merge_inputs = run.tree("merge") / "inputs"
    phases = [run_phases(work, dag, run, str(i), args.timeout) for i in range(args.repeat)] if args.phases else []
    on_cluster = None
    if args.dask:
        print(f"stageflow, process backend, the data stages on a Dask cluster of {args.dask} local workers", flush=True)
        on_cluster = run_on_cluster(work, dag, flow_params, args.timeout, args.dask)
    fits: dict[int, list[tuple[Measure, Measure]]] = {}
    if with_train and not args.no_fit:
        for batch_size in args.fit_batch_sizes:
            for i in range(args.repeat):
                print(f"train stage and sklearn's own fit, batch {batch_size}, run {i + 1}", flush=True)
                label = f"b{batch_size}-{i}"
                fits.setdefault(batch_size, []).append((
                    run_train(work, dag.node(TRAIN), processed, args.epochs, batch_size, label, args.timeout),
                    run_fit(work, processed, args.epochs, batch_size, label)))

    merges: dict[str, list[Measure]] = {}
    if args.merge_against:
        if not any(node.name == "merge" for node in dag.nodes):
            raise SystemExit("bench: --merge-against needs the merge stage in the run (--until merge or later)")
        contenders = ["stage"] + [c if c == "dask" else f"at {c}" for c in args.merge_against]
        for i in range(args.repeat):
            outputs = {}
            for contender in contenders:
                print(f"merge on the loads' snapshots: {contender}, run {i + 1}", flush=True)
                measure, outputs[contender] = run_merge_contender(work, merge_inputs, contender,
                                                                  f"{contender.replace(' ', '-')}-{i}")
                merges.setdefault(contender, []).append(measure)
            for contender in contenders[1:]:
                if not same_rows(outputs["stage"], outputs[contender]):
                    raise SystemExit(f"bench: merge {contender} gave other rows than the merge stage")
            shutil.rmtree(work / "merge-vs")

    show_flow(dag, args.rows, shape, seed, rounds, docker_note, start)
    if phases:
        show_phases(dag, args.rows, phases)
    if on_cluster:
        show_cluster(dag, args.rows, rounds[0].ours, rounds[0].wall, *on_cluster, args.dask)
    if merges:
        show_merges(args.rows, shape, merges)
    if with_peer:
        show_peer(args, rounds)
    if fits:
        print(f"\ntrain stage / scikit-learn's own fit, fresh processes, the same {args.rows * 2:,} rows' training "
              f"split, {args.epochs} epochs (wall: whole processes; loop: the training loop alone):")
        for batch_size, pairs in fits.items():
            show_train_vs_fit(batch_size, pairs)
    return 0


def show_flow(dag, n: int, shape: str, seed: dict[str, Measure] | None, rounds: list[Round],
              docker_note: str | None, start: float) -> None:
    """The per-stage table (the first round), the ratios to the seed-style stages, docker's overhead."""
    first = rounds[0]
    columns = {"seed": seed, "process": first.ours, "docker": first.docker}
    names = [node.name for node in dag.nodes]
    data_stages = [name for name in names if name != TRAIN]
    print(f"\n{n:,} rows per source{' (' + shape + ')' if shape else ''}: per stage, wall and CPU seconds, "
          f"peak memory and input rows per second\n")
    print(table({k: v for k, v in columns.items() if v}, stage_rows(dag, n)))
    roots = [name for name in names if not dag.node(name).upstream]
    ours = first.ours
    path = max(ours[r].seconds for r in roots) + sum(ours[name].seconds for name in data_stages if name not in roots)
    print(f"\nprocess backend: {', '.join(roots)} run in parallel; data stages' critical path {path:.2f} s, "
          f"flow wall clock {first.wall:.2f} s")
    floors = [r for r in rounds if r.floor]
    if floors:
        def critical(r: Round) -> float:
            return r.ours[FLOOR_UNTIL].reached + start
        print(f"data path: the run's start to the end of {FLOOR_UNTIL} (the stages' processes, started early where "
              f"the host backend does, and the runner's own work between them, + {start:.2f} s CLI start) / one DuckDB "
              f"query doing it in one process (scripts/bench.py floor_query):")
        for i, r in enumerate(floors, 1):
            print(f"  run {i}: {critical(r):.2f} s / {r.floor.seconds:.2f} s = {critical(r) / r.floor.seconds:.2f}x "
                  f"(floor cpu {r.floor.cpu:.2f} s, peak {r.floor.rss_mb:.0f} MiB)")
        print(f"  data path / floor: {spread([critical(r) / r.floor.seconds for r in floors])}")
    if seed:
        for label, group in (("data stages", data_stages), ("whole flow ", names if TRAIN in names else [])):
            if group:
                print(f"{label}, seed-style / ours: wall {total(seed, group):.2f} s / {total(ours, group):.2f} s = "
                      f"{total(seed, group) / total(ours, group):.1f}x faster; cpu "
                      f"{total(seed, group, 'cpu') / total(ours, group, 'cpu'):.1f}x less")
    pairs = [r for r in rounds if r.docker]
    if pairs:
        print(f"docker - process, per stage{f' (median, min, max of {len(pairs)} runs)' if len(pairs) > 1 else ''}: "
              + ", ".join(f"{name} {extra(name, pairs)}" for name in names))
    if docker_note:
        print(f"docker backend: skipped ({docker_note})")
    worst = max((ours[name].rss_mb or 0, name) for name in data_stages)
    print(f"process backend, largest data stage peak: {worst[1]} {worst[0]:.0f} MiB"
          + (f"; train {fmt(ours[TRAIN].rss_mb, '.0f')} MiB" if TRAIN in names else ""))


def show_merges(n: int, shape: str, merges: dict[str, list[Measure]]) -> None:
    """Each merge contender's figures per run and their ratios to the merge stage's (same rows checked)."""
    print(f"\nmerge of the loads' snapshots, 2 x {n:,} rows{' (' + shape + ')' if shape else ''}, fresh processes "
          f"side by side, the same rows in the same order from each (stage: this checkout's merge stage; at REV: "
          f"the merge stage at that git revision; dask: scripts/bench_merge_dask.py):")
    stage = merges["stage"]
    for contender, runs in merges.items():
        for i, m in enumerate(runs):
            ratio = "" if contender == "stage" else (
                f" = {m.seconds / stage[i].seconds:.2f}x wall, {m.cpu / stage[i].cpu:.2f}x cpu, "
                f"{m.rss_mb / stage[i].rss_mb:.2f}x peak of the stage's")
            print(f"  {contender:>14}, run {i + 1}: {m.seconds:.2f} s wall, {m.cpu:.2f} s cpu, {m.rss_mb:.0f} MiB{ratio}")


def extra(name: str, rounds: list[Round]) -> str:
    """A stage's seconds in its container over its seconds as a process, over the rounds."""
    values = sorted(r.docker[name].seconds - r.ours[name].seconds for r in rounds)
    if len(values) == 1:
        return f"{values[0]:+.2f} s"
    return f"{statistics.median(values):+.2f} s ({values[0]:+.2f}, {values[-1]:+.2f})"


def show_peer(args: argparse.Namespace, rounds: list[Round]) -> None:
    print(f"\nwhole flow (epochs {args.epochs}, batch {args.batch_size}), `stageflow run --no-cache` (the whole "
          f"command, host backend) / the same stages as plain flytekit tasks (`pyflyte run`), one after the other:")
    for i, r in enumerate(rounds, 1):
        print(f"  run {i}: {r.command.seconds:.2f} s / {r.peer.seconds:.2f} s = {r.command.seconds / r.peer.seconds:.2f}x "
              f"(peak {max(m.rss_mb or 0 for m in r.ours.values()):.0f} MiB, the largest stage / "
              f"{r.peer.rss_mb:.0f} MiB)")
    print(f"  stageflow / flytekit: {spread([r.command.seconds / r.peer.seconds for r in rounds])}")


if __name__ == "__main__":
    sys.exit(main())
