"""Benchmark: the seed-style stages against this project's flow, on generated iris-shaped sources.

    make bench ROWS=1000000
    .venv/bin/python scripts/bench.py --rows 1000000 [--epochs 10] [--batch-size 1024] [--keep] [--interleave]

Generates two CSV sources of ROWS rows each (Ids 1..N in A and N+1..2N in B, or odd and even Ids with
--interleave; class-dependent features; Kaggle-spelt labels) in a temporary directory, then runs:
  - the seed-style baseline: each stage a separate process doing what the seed's scripts did
    (scripts/bench_seed.py: pandas read_csv / to_csv with CSV between stages);
  - the flow through the local runner (DAG from flow.py, no cache), process backend, and docker backend
    when a daemon answers and the stage images are built (`make images`);
  - the bare estimator fit, in a fresh process, on the very arrays the train stage trains on;
and prints per stage wall seconds, CPU seconds, peak memory and rows per second, then the ratios.
Peak memory of a process is its own high-water mark (VmHWM, MiB: the interpreter and libraries included);
of a container, its cgroup's (which counts page cache too). CPU seconds (user + system) are steadier than
wall seconds on a busy machine. It is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
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

from stageflow import dag as dag_module, runner
from stageflow.runtime import contract  # noqa: E402

COLUMNS = ["Id", "SepalLengthCm", "SepalWidthCm", "RandomColumn", "PetalLengthCm", "PetalWidthCm", "Species"]
SPECIES = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
# Per-class mean and standard deviation of (sepal length, sepal width, petal length, petal width) in the
# real iris data, so the generated classes overlap as the real ones do.
MEAN = np.array([[5.006, 3.428, 1.462, 0.246], [5.936, 2.770, 4.260, 1.326], [6.588, 2.974, 5.552, 2.026]])
STD = np.array([[0.352, 0.379, 0.174, 0.105], [0.516, 0.314, 0.470, 0.198], [0.636, 0.322, 0.552, 0.275]])
CHUNK = 1_000_000
STAGES = ["load_a", "load_b", "merge", "process", "train"]
DATA_STAGES = STAGES[:4]


# ------------------------------------------------------------------ the sources


def _decimal_strings(low: int, high: int, places: int) -> pa.Array:
    """Every decimal with `places` digits after the point from low to high (in units of the last digit)."""
    scale = 10 ** places
    return pa.array([f"{'-' if v < 0 else ''}{abs(v) // scale}.{abs(v) % scale:0{places}d}" for v in range(low, high + 1)])


def generate(path: Path, rows: int, first_id: int, seed: int, id_step: int = 1) -> None:
    """Write an iris-shaped CSV, a chunk at a time (bounded memory at any size).

    Numbers are written through dictionaries of their decimal strings: formatting floats is what makes
    a CSV writer slow, and a one-decimal feature has only about a hundred distinct values.
    """
    rng = np.random.default_rng(seed)
    features, noise, labels = _decimal_strings(0, 99, 1), _decimal_strings(-40000, 40000, 4), pa.array(SPECIES)
    with open(path, "wb") as handle:
        handle.write((",".join(COLUMNS) + "\n").encode())
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            species = rng.integers(0, 3, n, dtype=np.int8)
            tenths = np.clip(np.rint(rng.normal(MEAN[species], STD[species]) * 10), 1, 99).astype(np.int8)
            noise_index = np.clip(np.rint(rng.normal(0, 1, n) * 10_000), -40000, 40000).astype(np.int32) + 40000
            columns = {
                "Id": pa.array(first_id + id_step * np.arange(start, start + n, dtype=np.int64)),
                **{name: pa.DictionaryArray.from_arrays(pa.array(tenths[:, i]), features)
                   for i, name in enumerate(("SepalLengthCm", "SepalWidthCm", "PetalLengthCm", "PetalWidthCm"))},
                "RandomColumn": pa.DictionaryArray.from_arrays(pa.array(noise_index), noise),
                "Species": pa.DictionaryArray.from_arrays(pa.array(species), labels),
            }
            pcsv.write_csv(pa.table({name: columns[name] for name in COLUMNS}), handle,
                           pcsv.WriteOptions(include_header=False, quoting_style="none"))


# ------------------------------------------------------------------ measuring


@dataclasses.dataclass
class Measure:
    seconds: float | None = None  # wall
    rss_mb: float | None = None  # peak resident set
    cpu: float | None = None  # user + system seconds: steadier than wall on a busy machine


class PeakRss:
    """A seed-style child's own peak resident set: VmHWM, polled from /proc until it exits (as the runner
    does for a stage). Not wait4's ru_maxrss, which counts the parent's memory shared before exec."""

    INTERVAL = 0.01

    def __init__(self, pid: int):
        self.path, self.mb, self.done = Path(f"/proc/{pid}/status"), None, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.is_set():
            try:
                text = self.path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.mb = int(line.split()[1]) / 1024
            self.done.wait(self.INTERVAL)

    def stop(self) -> float | None:
        self.done.set()
        self.thread.join()
        return self.mb


def from_rusage(seconds: float, usage, peak_mb: float | None) -> Measure:
    return Measure(seconds, peak_mb, usage.ru_utime + usage.ru_stime)


def measured(cmd: list[str], log: Path) -> Measure:
    """Run one child to completion; its wall seconds and its own peak RSS (wait4)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = PeakRss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, cmd))} failed ({proc.returncode}); see {log}")
    return from_rusage(seconds, usage, peak.stop())


REAP_LOCK = threading.Lock()


class RusageHandle:
    """The runner's own process handle (which records the stage's peak memory), plus its CPU seconds.

    They come from this process's RUSAGE_CHILDREN just before and after the runner's handle reaps the
    stage: waiting (without reaping) until it has exited, then reaping under a lock, keeps two stages that
    end together (load_a, load_b) from mixing their figures.
    """

    def __init__(self, inner, sink: dict, name: str):
        self.inner, self.sink, self.name = inner, sink, name

    def lines(self):
        return self.inner.lines()

    def kill(self, reason: str = "interrupted") -> None:
        self.inner.kill(reason)

    def wait(self) -> runner.Outcome:
        os.waitid(os.P_PID, self.inner.proc.pid, os.WEXITED | os.WNOWAIT)
        with REAP_LOCK:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            outcome = self.inner.wait()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.sink[self.name] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return outcome


class RusageHostBackend(runner.HostBackend):
    """The process backend, keeping each stage's CPU seconds."""

    def __init__(self):
        self.usage: dict[str, float] = {}

    def start(self, node, tree, *args, **kwargs):
        return RusageHandle(super().start(node, tree, *args, **kwargs), self.usage, node.name)


# ------------------------------------------------------------------ the three contenders


def run_baseline(work: Path, a: Path, b: Path, epochs: int, batch_size: int) -> dict[str, Measure]:
    seed = [sys.executable, str(ROOT / "scripts" / "bench_seed.py")]
    d = work / "seed"
    d.mkdir()
    steps = {
        "load_a": ["load", a, d / "datasetA.csv"],
        "load_b": ["load", b, d / "datasetB.csv"],
        "merge": ["merge", d / "datasetA.csv", d / "datasetB.csv", d / "merged.csv"],
        "process": ["process", d / "merged.csv", d / "processed.csv"],
        "train": ["train", d / "processed.csv", epochs, batch_size, d / "model.pkl"],
    }
    results = {}
    for name, args in steps.items():
        print(f"  seed-style {name} ...", flush=True)
        results[name] = measured([*seed, *map(str, args)], d / f"{name}.log")
    return results


def run_flow(work: Path, dag, backend, a: Path, b: Path, epochs: int, batch_size: int,
             timeout: float) -> tuple[dict[str, Measure], float, runner.Run]:
    run_dir = work / f"run-{backend.name}"
    params = {"data_path_a": str(a), "data_path_b": str(b), "epochs": epochs, "batch_size": batch_size}
    run = runner.Run(dag, run_dir, backend, params, timeout=timeout, echo=False)
    started = time.perf_counter()
    ok = run.execute()
    wall = time.perf_counter() - started
    if not ok:
        failed = next(n for n, r in run.results.items() if r.status == "failed")
        raise RuntimeError(f"stage {failed} failed: {run.results[failed].error} (log {run.results[failed].log})")
    record = json.loads((run_dir / "run.json").read_text())["stages"]
    own = getattr(backend, "usage", {})
    results = {name: Measure(r.seconds, record[name].get("peak_rss_mb"), own.get(name))
               for name, r in run.results.items()}
    return results, wall, run


def run_bare(run: runner.Run, epochs: int, batch_size: int) -> Measure:
    """The estimator's fit on the same arrays the train stage built (same split, epochs, batch size), in a
    fresh process; only the fit loop is timed."""
    processed = run.tree("process") / "outputs" / "processed_data"
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_seed.py"), "bare", str(processed),
                          str(epochs), str(batch_size)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench: the bare fit failed ({out.returncode}):\n{out.stderr[-2000:]}")
    timed = json.loads(out.stdout.splitlines()[-1])
    return Measure(timed["seconds"], None, timed["cpu"])


def docker_backend(dag):
    """The runner's docker backend if it exists, a daemon answers and the images are built; else (None, why)."""
    try:
        from stageflow.containers import DockerBackend
    except ImportError:
        return None, "this checkout has no docker backend (stageflow.containers)"
    try:
        backend = DockerBackend()
        backend.check(dag)
    except Exception as err:  # noqa: BLE001 - any reason the backend cannot run is a reason to skip it
        return None, contract.one_line(err)
    return backend, None


# ------------------------------------------------------------------ the report


def stage_rows(n: int) -> dict[str, int]:
    """Rows each stage reads: a source for a load, both for the rest."""
    return {"load_a": n, "load_b": n, "merge": 2 * n, "process": 2 * n, "train": 2 * n}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


TITLES = {"seed": "seed-style (pandas, CSV)", "process": "stageflow, process backend",
          "docker": "stageflow, docker backend"}
UNITS = ("wall s", "cpu s", "peak MiB", "rows/s")


def table(columns: dict[str, dict[str, Measure]], rows: dict[str, int]) -> str:
    """One group of columns per contender, one row per stage, then the totals (sums; peak is the max)."""
    lines = [["stage", "rows"] + [unit for _ in columns for unit in UNITS]]
    for name in STAGES:
        line = [name, f"{rows[name]:,}"]
        for results in columns.values():
            m = results.get(name, Measure())
            line += [fmt(m.seconds, ".2f"), fmt(m.cpu, ".2f"), fmt(m.rss_mb, ".0f"),
                     fmt(rows[name] / m.seconds if m.seconds else None, ",.0f")]
        lines.append(line)
    for label, names in (("4 data stages", DATA_STAGES), ("whole flow", STAGES)):
        line = [label, ""]
        for results in columns.values():
            def summed(attr):
                values = [getattr(results[n], attr) for n in names if n in results]
                return fmt(sum(values), ".2f") if len(values) == len(names) and None not in values else "-"
            rss = [results[n].rss_mb for n in names if n in results and results[n].rss_mb is not None]
            line += [summed("seconds"), summed("cpu"), fmt(max(rss), ".0f") if rss else "-", ""]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    render = lambda row: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    out = [render(row).rstrip() for row in lines]
    group = sum(widths[2:6]) + 2 * 3
    titles = " " * (widths[0] + widths[1] + 4) + "  ".join(TITLES[k].center(group) for k in columns)
    rule = "-" * len(out[0])
    return "\n".join([titles.rstrip(), out[0], rule, *out[1:len(STAGES) + 1], rule, *out[len(STAGES) + 1:]])


def total(results: dict[str, Measure], names: list[str], attr: str = "seconds") -> float:
    return sum(getattr(results[n], attr) for n in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per source (default 1000000)")
    # The flow's 10 epochs; batches of 1024 rather than its 32, which at 1.6M training rows would take an hour.
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=1024, help="training batch size (default 1024)")
    parser.add_argument("--work-dir", help="where sources and runs go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (default: delete it)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare estimator fit")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker backend")
    parser.add_argument("--interleave", action="store_true",
                        help="odd Ids in A, even in B (merge cannot stream; default: A 1..N, B N+1..2N)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds before a stage is killed")
    args = parser.parse_args(argv)
    if args.rows < 50:
        parser.error("--rows must be at least 50 (the train stage needs a stratified split)")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="stageflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return bench(args, work.resolve())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path) -> int:
    n = args.rows
    a, b = work / "source_a.csv", work / "source_b.csv"
    started = time.perf_counter()
    if args.interleave:
        generate(a, n, 1, seed=1, id_step=2)
        generate(b, n, 2, seed=2, id_step=2)
    else:
        generate(a, n, 1, seed=1)
        generate(b, n, n + 1, seed=2)
    size = (a.stat().st_size + b.stat().st_size) / 1e6
    print(f"generated 2 x {n:,} rows ({size:,.0f} MB of CSV) in {time.perf_counter() - started:.1f} s in {work}",
          flush=True)
    print(f"training: epochs {args.epochs}, batch size {args.batch_size}", flush=True)

    columns: dict[str, dict[str, Measure]] = {}
    if not args.no_baseline:
        print("seed-style baseline (pandas, CSV between stages, one process per stage)", flush=True)
        columns["seed"] = run_baseline(work, a, b, args.epochs, args.batch_size)

    print("stageflow, process backend", flush=True)
    backend = RusageHostBackend()
    dag = dag_module.load()
    ours, wall, run = run_flow(work, dag, backend, a, b, args.epochs, args.batch_size, args.timeout)
    columns["process"] = ours

    docker_note = None
    if args.no_docker:
        docker_note = "docker backend: skipped (--no-docker)"
    else:
        docker, why_not = docker_backend(dag)
        if docker is None:
            docker_note = f"docker backend: skipped ({why_not})"
        else:
            print("stageflow, docker backend", flush=True)
            try:
                columns["docker"], _, _ = run_flow(work, dag, docker, a, b, args.epochs, args.batch_size,
                                                     args.timeout)
            except RuntimeError as err:
                docker_note = f"docker backend: skipped ({err})"

    bare = None
    if not args.no_bare:
        print("bare estimator fit, in its own process", flush=True)
        bare = run_bare(run, args.epochs, args.batch_size)

    rows = stage_rows(n)
    print(f"\n{n:,} rows per source{' (Ids interleaved)' if args.interleave else ''}: per stage, wall and CPU "
          f"seconds, peak memory and input rows per second\n")
    print(table(columns, rows))
    path = max(ours["load_a"].seconds, ours["load_b"].seconds) + ours["merge"].seconds + ours["process"].seconds
    print(f"\nprocess backend: load_a and load_b run in parallel; data stages' critical path {path:.2f} s, "
          f"whole flow wall clock {wall:.2f} s")
    if "seed" in columns:
        seed = columns["seed"]
        for label, names in (("data stages", DATA_STAGES), ("whole flow ", STAGES)):
            faster = total(seed, names, "seconds") / total(ours, names, "seconds")
            cpu = total(seed, names, "cpu") / total(ours, names, "cpu")
            print(f"{label}, seed-style / ours: wall {total(seed, names, 'seconds'):.2f} s / "
                  f"{total(ours, names, 'seconds'):.2f} s = {faster:.1f}x faster; cpu {cpu:.1f}x less")
    if bare is not None:
        train = ours["train"]
        print(f"train, ours / bare estimator fit: wall {train.seconds:.2f} s / {bare.seconds:.2f} s = "
              f"{train.seconds / bare.seconds:.2f}x (stage overhead {train.seconds - bare.seconds:.2f} s); "
              f"cpu {train.cpu:.2f} s / {bare.cpu:.2f} s = {train.cpu / bare.cpu:.2f}x")
    if "docker" in columns:
        extra = {name: columns["docker"][name].seconds - ours[name].seconds for name in STAGES}
        print("docker - process, per stage: " + ", ".join(f"{k} {v:+.2f} s" for k, v in extra.items()))
    if docker_note:
        print(docker_note)
    worst = max((ours[name].rss_mb or 0, name) for name in DATA_STAGES)
    print(f"process backend, largest data stage peak: {worst[1]} {worst[0]:.0f} MiB; "
          f"train {fmt(ours['train'].rss_mb, '.0f')} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
