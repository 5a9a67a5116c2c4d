"""The local runner: the whole flow on this machine, each stage in its own fake /workflow tree.

It does what Domino (copilot plus the Flyte engine) does for a run and what flytekit's local execution of
raw containers gets wrong: every input materialised as the contract says (primitives as text, files as
files), every exit status and declared output checked, downstream stages stopped after a failure, and a
record of the run (run.json) with the hash of every input and output.

Layout of a run directory:
    run.json                 what ran, how it ended, hashes, where the flow's outputs are
    logs/<stage>.log         each stage's stdout and stderr
    <stage>/inputs/<name>    the stage's /workflow tree (mounted at /workflow in a container)
    <stage>/outputs/<name>
    outputs/<name>.<format>  a read-only copy of each flow output, named by its declared format (model.pkl)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from stageflow.runtime import contract
from stageflow.cache import Cache, key as cache_key, link_or_copy
from stageflow.dag import Dag, Node
from stageflow.registry import ROOT

LOG_TAIL = 20
PEAK_SAMPLE_SECONDS = 0.02


class RunError(Exception):
    """A problem with the run itself (its inputs or run directory), reported before any stage starts."""


@dataclass
class Outcome:
    exit_code: int | None
    reason: str | None = None  # "timeout", "oom" or "interrupted" when the exit code alone would mislead
    peak_rss_mb: float | None = None


class Handle(Protocol):
    def lines(self) -> Iterator[str]: ...
    def wait(self) -> Outcome: ...
    def kill(self, reason: str = "interrupted") -> None: ...


def kill_after(timeout: float, kill: Callable[[str], None]) -> threading.Timer:
    """Start the stage's timeout clock now, not when we begin waiting: a stage that hangs silently must
    time out too. Both backends' handles cancel it once the stage has exited."""
    timer = threading.Timer(timeout, kill, ("timeout",))
    timer.daemon = True
    timer.start()
    return timer


class HostBackend:
    """Each stage as a Python process on this host: no Docker needed, the fastest way to iterate."""

    name = "host"

    def check(self, dag: Dag) -> None:
        """Nothing to prepare: the stages run from this checkout with this Python."""

    def start(self, node: Node, tree: Path, timeout: float, mounts: list[Path]) -> "ProcessHandle":
        env = {**os.environ, "WORKFLOW_ROOT": str(tree), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen([sys.executable, str(ROOT / node.stage.script)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        return ProcessHandle(proc, timeout)


class ProcessHandle:
    def __init__(self, proc: subprocess.Popen, timeout: float):
        self.proc = proc
        self.killed_for: str | None = None
        self.peak_mb: float | None = None
        self.exited = threading.Event()
        self.timer = kill_after(timeout, self.kill)
        threading.Thread(target=self._watch_memory, daemon=True).start()

    def _watch_memory(self) -> None:
        """Sample the process's own high-water mark (VmHWM). wait4's ru_maxrss would not do: it also
        counts the runner's memory, which the child shared between fork and exec."""
        status = Path(f"/proc/{self.proc.pid}/status")
        while not self.exited.wait(PEAK_SAMPLE_SECONDS):
            try:
                found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M)
            except OSError:
                return
            if not found:  # exited, not yet reaped
                return
            # VmHWM only grows, so the last sample is the peak; an early one may still be the
            # runner's own, read between fork and exec.
            self.peak_mb = round(int(found[1]) / 1024, 1)

    def lines(self) -> Iterator[str]:
        yield from self.proc.stdout

    def wait(self) -> Outcome:
        try:
            _, status = os.waitpid(self.proc.pid, 0)
        finally:
            self.timer.cancel()
            self.exited.set()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return Outcome(self.proc.returncode, self.killed_for, self.peak_mb)

    def kill(self, reason: str = "interrupted") -> None:
        """Kill the stage's whole process group, so no grandchild outlives the run."""
        self.killed_for = self.killed_for or reason
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class StageResult:
    status: str = "pending"  # pending, running, succeeded, failed, skipped
    seconds: float = 0.0
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    error: str | None = None
    log: str | None = None
    peak_rss_mb: float | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    cached: bool = False


def parquet_rows(paths: list[Path]) -> int | None:
    """Rows across the Parquet files among `paths` (from their footers, no data read); None if none is."""
    import pyarrow.parquet as pq

    counts = []
    for path in paths:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PAR1":
                continue
        counts.append(pq.read_metadata(path).num_rows)
    return sum(counts) if counts else None


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    with open(path, errors="replace") as handle:
        return "".join(deque(handle, maxlen=lines))


class Run:
    """One execution of the DAG in one run directory."""

    def __init__(self, dag: Dag, run_dir: Path, backend, params: dict[str, Any], timeout: float = 3600.0,
                 echo: bool = True, cache: Cache | None = None):
        self.dag, self.run_dir, self.backend, self.timeout, self.echo = dag, Path(run_dir), backend, timeout, echo
        self.cache = cache
        self.params = self._check_params(params)
        self.results = {node.name: StageResult() for node in dag.nodes}
        self.handles: dict[str, Handle] = {}
        self.print_lock = threading.Lock()
        self.started_at = dt.datetime.now(dt.timezone.utc)
        self.interrupted = False
        self.published: dict[str, dict[str, str]] = {}

    def _check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Flow inputs are checked against flow.py's types before anything runs, as Flyte would."""
        merged = {**self.dag.defaults, **{k: v for k, v in params.items() if v is not None}}
        unknown = sorted(set(merged) - set(self.dag.inputs))
        if unknown:
            raise RunError(f"flow input {', '.join(unknown)}: not an input of the flow")
        missing = sorted(set(self.dag.inputs) - set(merged))
        if missing:
            raise RunError(f"flow input {', '.join(missing)}: required but not given")
        checked = {}
        for name, value in merged.items():
            kind = self.dag.inputs[name]
            if isinstance(value, str) and kind is not str:
                try:
                    value = contract.parse_value(value, kind)
                except ValueError as err:
                    raise RunError(f"flow input {name}: {err}, found {value!r}") from None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise RunError(f"flow input {name}: expected {kind.__name__}, found {value!r}")
            checked[name] = value
        return checked

    # ------------------------------------------------------------ one stage

    def tree(self, name: str) -> Path:
        return self.run_dir / name

    def _materialise(self, node: Node) -> dict[str, str]:
        inputs = self.tree(node.name) / "inputs"
        for name, (kind, src) in node.inputs.items():
            target = inputs / name
            if src.stage:
                link_or_copy(self.tree(src.stage) / "outputs" / src.output, target)
                continue
            value = self.params[src.flow_input] if src.flow_input else src.value
            if kind is contract.File:  # a file given as a value (one stage run from pyflyte): the file itself
                link_or_copy(Path(value), target)
            else:
                target.write_text(contract.format_value(value))
        return {name: contract.sha256_file(inputs / name) for name in node.inputs}

    def _host_files(self, node: Node) -> list[Path]:
        """Host files a stage names in a str input (a source's data_path): a container must see them."""
        values = [self.params.get(src.flow_input) if src.flow_input else src.value
                  for kind, src in node.inputs.values() if kind is str and not src.stage]
        return [Path(v) for v in values if isinstance(v, str) and os.path.isabs(v) and Path(v).exists()]

    def _echo(self, name: str, line: str) -> None:
        if self.echo:
            with self.print_lock:
                print(f"[{name}] {line.rstrip()}", flush=True)

    def _run_stage(self, node: Node) -> None:
        result = self.results[node.name]
        tree = self.tree(node.name)
        (tree / "inputs").mkdir(parents=True)
        (tree / "outputs").mkdir()
        log_path = self.run_dir / "logs" / f"{node.name}.log"
        result.log = str(log_path)
        started = time.perf_counter()
        try:
            result.inputs = self._materialise(node)
            host_files = self._host_files(node)
            entry = cache_key(node.name, node.stage.version, result.inputs,
                              {str(path): contract.sha256_file(path) for path in host_files if path.is_file()})
            if self.cache and self._reuse(node, entry, log_path):
                result.seconds = round(time.perf_counter() - started, 3)
                result.status = "succeeded"
                return
            handle = self.backend.start(node, tree, self.timeout, host_files)
            self.handles[node.name] = handle
            if self.interrupted:  # Ctrl-C came while this stage was starting
                handle.kill()
            with open(log_path, "w") as log:
                for line in handle.lines():
                    log.write(line)
                    log.flush()
                    self._echo(node.name, line)
            outcome = handle.wait()
            result.exit_code, result.peak_rss_mb = outcome.exit_code, outcome.peak_rss_mb
            result.error = self._failure(node, outcome)
        except Exception as err:  # noqa: BLE001 - a backend failure fails this stage, not the runner
            result.error = contract.one_line(err)
        finally:
            self.handles.pop(node.name, None)
        result.seconds = round(time.perf_counter() - started, 3)
        if result.error is None:
            outputs = tree / "outputs"
            result.outputs = {name: contract.sha256_file(outputs / name) for name in node.outputs}
            for name in node.outputs:
                os.chmod(outputs / name, 0o444)  # hard-linked downstream: nothing may change it now
            self._count_rows(node)
            if self.cache:
                try:
                    self.cache.store(entry, outputs, result.outputs, rows_in=result.rows_in,
                                     rows_out=result.rows_out)
                except OSError as err:  # the run's outputs are fine; only the shortcut for next time is lost
                    self._echo(node.name, f"warning: could not add outputs to the cache ({err})")
        result.status = "failed" if result.error else "succeeded"

    def _count_rows(self, node: Node) -> None:
        tree, result = self.tree(node.name), self.results[node.name]
        result.rows_in = parquet_rows([tree / "inputs" / name for name in node.inputs])
        result.rows_out = parquet_rows([tree / "outputs" / name for name in node.outputs])

    def _reuse(self, node: Node, entry: str, log_path: Path) -> bool:
        """Take a stage's outputs from the cache when an entry for exactly these inputs is intact."""
        result = self.results[node.name]
        manifest = self.cache.restore(entry, list(node.outputs), self.tree(node.name) / "outputs")
        if manifest is None:
            return False
        result.outputs, result.cached = manifest["outputs"], True
        result.rows_in, result.rows_out = manifest.get("rows_in"), manifest.get("rows_out")
        log_path.write_text(f"cached: outputs reused from cache entry {entry}\n")
        self._echo(node.name, f"cached (entry {entry[:12]})")
        return True

    def _failure(self, node: Node, outcome: Outcome) -> str | None:
        """Why the stage failed, in one line, or None when it did what it declared."""
        if outcome.reason == "timeout":
            return f"timed out after {self.timeout:g} s"
        if outcome.reason == "oom":
            return "killed: out of memory (the hardware tier's memory limit)"
        if outcome.reason == "interrupted":
            return "interrupted"
        error_file = self.tree(node.name) / "outputs" / contract.ERROR_FILE
        if outcome.exit_code != 0:
            message = error_file.read_text(errors="replace").strip() if error_file.is_file() else ""
            return f"exit status {outcome.exit_code}" + (f": {message}" if message else "")
        missing = [name for name in node.outputs if not (self.tree(node.name) / "outputs" / name).is_file()]
        if missing:
            return f"exited 0 but did not write declared output {', '.join(missing)}"
        if error_file.exists():
            return f"exited 0 but wrote {contract.ERROR_FILE}: {error_file.read_text(errors='replace').strip()}"
        return None

    # ------------------------------------------------------------ the whole flow

    def execute(self) -> bool:
        """Run every stage whose upstream succeeded, in parallel where the DAG allows; True if all did."""
        self.backend.check(self.dag)
        for stale in [self.run_dir / "logs", self.run_dir / "outputs", *(self.tree(node.name) for node in self.dag.nodes)]:
            shutil.rmtree(stale, ignore_errors=True)  # a reused run directory starts clean
        (self.run_dir / "logs").mkdir(parents=True)
        done: queue.Queue[str] = queue.Queue()
        pending = {node.name: node for node in self.dag.nodes}
        running: dict[str, threading.Thread] = {}

        def worker(node: Node) -> None:
            # Ctrl-C must reach the main thread: a signal taken by this thread (blocked in a read) would
            # not wake the main thread's wait, and the stages would run on until one of them finished.
            # Threads this one starts (timers, watchers) inherit the mask.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                self._run_stage(node)
            finally:
                done.put(node.name)

        try:
            while pending or running:
                for name, node in list(pending.items()):
                    states = {self.results[up].status for up in node.upstream}
                    if states & {"failed", "skipped"}:
                        self.results[name].status = "skipped"
                        del pending[name]
                    elif states <= {"succeeded"}:
                        self.results[name].status = "running"
                        running[name] = threading.Thread(target=worker, args=(node,), daemon=True)
                        running[name].start()
                        del pending[name]
                if not running:
                    break
                finished = done.get()
                running.pop(finished).join()
        except KeyboardInterrupt:
            self.interrupted = True
            for handle in list(self.handles.values()):
                handle.kill()
            for thread in running.values():
                thread.join()
            for name in pending:
                self.results[name].status = "skipped"
        else:
            if all(r.status == "succeeded" for r in self.results.values()):
                self.publish_outputs()
        finally:
            self.write_record()
        return all(r.status == "succeeded" for r in self.results.values())

    def output_path(self, name: str) -> Path:
        """Where flow output `name` is published: outputs/<name>.<its declared format>."""
        extension = self.dag.formats.get(name)
        return self.run_dir / "outputs" / (f"{name}.{extension}" if extension else name)

    def publish_outputs(self) -> None:
        """Copy each flow output to outputs/<name>.<format>, read-only: a name a browser or a user can open,
        and a copy, so nothing done to it reaches the stage's output or the cache."""
        (self.run_dir / "outputs").mkdir()
        for name, src in self.dag.outputs.items():
            target = self.output_path(name)
            if src.stage:
                shutil.copyfile(self.tree(src.stage) / "outputs" / src.output, target)
            else:  # the workflow returns one of its inputs or a constant
                value = self.params[src.flow_input] if src.flow_input else src.value
                target.write_text(contract.format_value(value))
            os.chmod(target, 0o444)
            self.published[name] = {"path": str(target), "sha256": contract.sha256_file(target)}

    def record(self) -> dict:
        ok = all(r.status == "succeeded" for r in self.results.values())
        return {
            "flow": self.dag.name,
            "backend": self.backend.name,
            "status": "interrupted" if self.interrupted else ("succeeded" if ok else "failed"),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {k: contract.format_value(v) for k, v in self.params.items()},
            "stages": {name: vars(result) for name, result in self.results.items()},
            "outputs": self.published if ok else {},
        }

    def write_record(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".run.json.", dir=self.run_dir)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.record(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, self.run_dir / "run.json")

    def failures(self) -> list[str]:
        """One report per failed stage: its one-line error, then the tail of its log."""
        reports = []
        for name, result in self.results.items():
            if result.status == "failed":
                text = f"stage {name} failed: {result.error}"
                if result.log and Path(result.log).is_file():
                    text += f"\n--- last {LOG_TAIL} lines of {result.log} ---\n{tail(Path(result.log)).rstrip()}"
                reports.append(text)
        return reports


class RunDirLock:
    """Two runs writing one run directory would corrupt each other's trees: the second one stops at once."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            raise RunError(f"run directory {self.path.parent} is in use by another run ({owner})") from None
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()
