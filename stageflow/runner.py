"""The local runner: the whole flow on this machine, each stage in its own fake /workflow tree.

It does what Domino (copilot plus the Flyte engine) does for a run and what flytekit's local execution of
raw containers gets wrong: every input materialised as the contract says (primitives as text, files as
files), every exit status and declared output checked, downstream stages stopped after a failure, and a
record of the run (run.json) with the hash of every input and output.

Layout of a run directory (what may be one: stageflow/rundir.py):
    .stageflow-run           the mark of a directory a run made, and its lock
    run.json                 what ran, how it ended (or "running"), hashes, where the flow's outputs are
    logs/<stage>.log         each stage's stdout and stderr
    <stage>/inputs/<name>    the stage's /workflow tree (mounted at /workflow in a container)
    <stage>/outputs/<name>
    outputs/<name>.<format>  a read-only copy of each flow output, named by its declared format (model.pkl)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stageflow import files
from stageflow.backends import Handle, Outcome
from stageflow.cache import Cache, Sources, key as cache_key
from stageflow.dag import Dag, Node, Source
from stageflow.rundir import RunDir, RunError, os_error, write_atomic
from stageflow.runtime import contract

LOG_TAIL = 20


def check_timeout(value: float | str) -> float:
    """A stage's time limit: a positive, finite number of seconds (nan or a negative one would kill every
    stage at once, inf none)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise RunError(f"timeout: expected a positive number of seconds, found {value!r}")
    return seconds


class Stopped(Exception):
    """The runner's own work for a stage (hashing, copying) ran out of the stage's time, or Ctrl-C came."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    counts = [rows for rows in map(footer_rows, paths) if rows is not None]
    return sum(counts) if counts else None


def footer_rows(path: Path) -> int | None:
    """A Parquet file's row count from its footer; None for any other file, or a footer that does not parse."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with files.opened(path) as handle:
        if handle.read(4) != b"PAR1":
            return None
        handle.seek(0)
        try:
            return pq.read_metadata(handle).num_rows
        except (pa.ArrowException, OSError):
            return None


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    """The last lines of a log, read without following a link and at most its last 64 KiB."""
    return "".join(deque(files.read_tail(path, "log").splitlines(keepends=True), maxlen=lines))


def check_params(dag: Dag, params: dict[str, Any]) -> dict[str, Any]:
    """Flow inputs are checked against flow.py's types before anything runs, as Flyte would."""
    merged = {**dag.defaults, **{k: v for k, v in params.items() if v is not None}}
    unknown = sorted(set(merged) - set(dag.inputs))
    if unknown:
        raise RunError(f"flow input {', '.join(unknown)}: not an input of the flow")
    missing = sorted(set(dag.inputs) - set(merged))
    if missing:
        raise RunError(f"flow input {', '.join(missing)}: required but not given")
    return {name: checked_value(name, value, dag.inputs[name]) for name, value in merged.items()}


def checked_value(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, str) and kind is not str:
        try:
            value = contract.parse_value(value, kind)
        except ValueError as err:
            raise RunError(f"flow input {name}: {err}, found {value!r}") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RunError(f"flow input {name}: expected {kind.__name__}, found {value!r}")
    return value


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """What a run did, as run.json tells it: each stage's result, then the flow's outputs."""

    def __init__(self, flow: str, backend: str, params: dict[str, Any], stages: list[str]):
        self.flow, self.backend, self.params = flow, backend, params
        self.stages = {name: StageResult() for name in stages}
        self.outputs: dict[str, dict[str, str]] = {}
        self.started_at = now()
        self.finished_at: str | None = None
        self.interrupted = False
        self.error: str | None = None  # what failed the run itself, outside any stage

    @property
    def succeeded(self) -> bool:
        return self.error is None and all(result.status == "succeeded" for result in self.stages.values())

    @property
    def status(self) -> str:
        if self.finished_at is None:
            return "running"
        return "interrupted" if self.interrupted else ("succeeded" if self.succeeded else "failed")

    def as_json(self) -> dict:
        return {
            "flow": self.flow,
            "backend": self.backend,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "params": {k: contract.format_value(v) for k, v in self.params.items()},
            "stages": {name: vars(result) for name, result in self.stages.items()},
            "outputs": self.outputs if self.succeeded else {},
            **({"error": self.error} if self.error else {}),
        }

    def write(self, path: Path) -> None:
        """Replace run.json whole. Where that fails (a full disk) the old one goes too: run.json may say
        nothing, but never describe an earlier run as this one."""
        try:
            write_atomic(path, json.dumps(self.as_json(), indent=2) + "\n")
        except OSError as err:
            path.unlink(missing_ok=True)
            raise RunError(f"run record {path}: {os_error(err)}") from None

    def failures(self) -> list[str]:
        """One report per failed stage: its one-line error, then the tail of its log."""
        reports = []
        for name, result in self.stages.items():
            if result.status == "failed":
                text = f"stage {name} failed: {result.error}"
                try:
                    text += f"\n--- last {LOG_TAIL} lines of {result.log} ---\n{tail(Path(result.log)).rstrip()}"
                except (OSError, TypeError, files.UnsafeFile):
                    pass  # no log (the stage never started), or not one the runner wrote
                reports.append(text)
        return reports


class StageRun:
    """One stage of a run: its inputs materialised, its outputs taken from the cache or made by starting it
    on the backend, its log streamed, its outcome judged, its outputs checked and offered to the cache."""

    def __init__(self, run: "Run", node: Node):
        self.run, self.node = run, node
        self.result = run.results[node.name]
        self.tree = run.tree(node.name)
        self.log_path = run.run_dir / "logs" / f"{node.name}.log"

    def __call__(self) -> None:
        self.result.log = str(self.log_path)
        started = time.perf_counter()
        self.deadline = time.monotonic() + self.run.timeout
        try:
            self.result.error = self._produce_outputs()
            if self.result.error is None and not self.result.cached:
                self._keep_outputs()
        except Stopped as stop:
            self.result.error = self._failure(Outcome(None, stop.reason))
        except OSError as err:  # a full disk, an unreadable file: which, where
            self.result.error = os_error(err)
        except Exception as err:  # noqa: BLE001 - a backend failure fails this stage, not the runner
            self.result.error = contract.one_line(err)
        if self.result.error:
            self._discard_outputs()
        self.result.seconds = round(time.perf_counter() - started, 3)
        self.result.status = "failed" if self.result.error else "succeeded"

    def _discard_outputs(self) -> None:
        """A failed stage (a signal, a timeout, a bad output) leaves nothing that looks like a result, as on
        Domino, where a failed task uploads nothing: only its _ERROR stays to read."""
        self.result.outputs = {}
        with contextlib.suppress(OSError):
            files.empty(self.tree / "outputs", keep=contract.ERROR_FILE)

    def _produce_outputs(self) -> str | None:
        """Fill the stage's outputs, from the cache or by running it; why it failed, or None."""
        (self.tree / "inputs").mkdir(parents=True)
        (self.tree / "outputs").mkdir()
        self.result.inputs = self._materialise()
        self.host_files = self._host_files()
        if self.run.cache:
            self.sources = Sources([path for path in self.host_files if path.is_file()], self._check)
            self.entry = cache_key(self.node.name, self.node.stage.version, self.result.inputs, self.sources.hashes)
            if self._reuse():
                return None
        self._check()
        return self._failure(self._execute())

    def _check(self) -> None:
        """Between steps of the runner's own work for the stage: the stage's clock runs during it too."""
        if self.run.interrupted:
            raise Stopped("interrupted")
        if time.monotonic() > self.deadline:
            raise Stopped("timeout")

    def _materialise(self) -> dict[str, str]:
        """Write each input where the contract says (files as files, primitives as text); their sha256.

        A file input is a copy (a reflink where the file system has them), not a link: a stage that writes
        into its input must not change the upstream output, the cache, or the user's file it came from."""
        inputs = self.tree / "inputs"
        for name, (kind, src) in self.node.inputs.items():
            target = inputs / name
            if src.stage:
                files.place(self.run.tree(src.stage) / "outputs" / src.output, target,
                            f"output {src.output} of stage {src.stage}")
                continue
            value = self.run.value_of(src)
            if kind is contract.File:  # a file given as a value (one stage run from pyflyte): the file itself
                files.place(Path(value).resolve(), target, f"input {name}")
            else:
                target.write_text(contract.format_value(value))
        return {name: contract.sha256_file(inputs / name, self._check) for name in self.node.inputs}

    def _host_files(self) -> list[Path]:
        """Host files a stage names in a str input (a source's data_path): a container must see them."""
        values = [self.run.value_of(src) for kind, src in self.node.inputs.values() if kind is str and not src.stage]
        return [Path(v) for v in values if isinstance(v, str) and os.path.isabs(v) and Path(v).exists()]

    def _reuse(self) -> bool:
        """Take the stage's outputs from the cache when an entry for exactly these inputs is intact."""
        manifest = self.run.cache.restore(self.entry, list(self.node.outputs), self.tree / "outputs", self._check)
        if manifest is None:
            return False
        self.result.outputs, self.result.cached = manifest["outputs"], True
        self.result.rows_in, self.result.rows_out = manifest.get("rows_in"), manifest.get("rows_out")
        self.log_path.write_text(f"cached: outputs reused from cache entry {self.entry}\n")
        self.run.echo_line(self.node.name, f"cached (entry {self.entry[:12]})")
        return True

    def _execute(self) -> Outcome:
        """Start the stage on the backend and stream its log until it ends."""
        handle = self.run.backend.start(self.node, self.tree, self.deadline - time.monotonic(), self.host_files)
        self.run.handles[self.node.name] = handle
        try:
            if self.run.interrupted:  # Ctrl-C came while this stage was starting
                handle.kill()
            with open(self.log_path, "w") as log:
                for line in handle.lines():
                    log.write(line)
                    log.flush()
                    self.run.echo_line(self.node.name, line)
            outcome = handle.wait()
        except BaseException:  # the log could not be written (a full disk): never leave the stage unwatched
            handle.kill()
            handle.wait()
            raise
        finally:
            self.run.handles.pop(self.node.name, None)
        self.result.exit_code, self.result.peak_rss_mb = outcome.exit_code, outcome.peak_rss_mb
        return outcome

    def _failure(self, outcome: Outcome) -> str | None:
        """Why the stage failed, in one line, or None when it did what it declared."""
        if outcome.reason == "timeout":
            return f"timed out after {self.run.timeout:g} s"
        if outcome.reason == "oom":
            return "killed: out of memory (the hardware tier's memory limit)"
        if outcome.reason == "interrupted":
            return "interrupted"
        outputs = self.tree / "outputs"
        message = self._error_text(outputs / contract.ERROR_FILE)
        if outcome.exit_code != 0:
            return f"exit status {outcome.exit_code}" + (f": {message}" if message else "")
        missing = [name for name in self.node.outputs if not os.path.lexists(outputs / name)]
        if missing:
            return f"exited 0 but did not write declared output {', '.join(missing)}"
        if message is not None:
            return f"exited 0 but wrote {contract.ERROR_FILE}: {message}"
        return None

    def _error_text(self, path: Path) -> str | None:
        """What the stage wrote in _ERROR, as copilot reads it (its first MiB), in one line; None if none.
        A link or a FIFO there is said, never followed."""
        try:
            text = files.read_text(path, limit=contract.MAX_ERROR_BYTES, cut=True)
        except FileNotFoundError:
            return None
        except files.UnsafeFile as err:
            return f"({err})"
        return contract.one_line(contract.StageError(text.strip())) if text.strip() else ""

    def _keep_outputs(self) -> None:
        """Record the outputs' hashes and rows, freeze them, and offer them to the cache. Each output is
        checked on its open descriptor first (files.opened): what a stage writes is untrusted."""
        outputs, result = self.tree / "outputs", self.result
        for name in self.node.outputs:
            with files.opened(outputs / name, f"output {name}") as handle:
                result.outputs[name] = contract.sha256_of(handle, self._check)
                os.fchmod(handle.fileno(), 0o444)  # recorded: an edit would make run.json wrong
        result.rows_in = parquet_rows([self.tree / "inputs" / name for name in self.node.inputs])
        result.rows_out = parquet_rows([outputs / name for name in self.node.outputs])
        if self.run.cache:
            self._offer_to_cache()

    def _offer_to_cache(self) -> None:
        """Store the outputs under the key, unless a source changed while the stage ran: the key would then
        name content the stage may not have read."""
        if not self.sources.unchanged():
            self.note("warning: a source file changed while the stage ran; its outputs are not cached")
            return
        try:
            self.run.cache.store(self.entry, self.tree / "outputs", self.result.outputs,
                                 rows_in=self.result.rows_in, rows_out=self.result.rows_out)
        except OSError as err:  # the run's outputs are fine; only the shortcut for next time is lost
            self.note(f"warning: could not add outputs to the cache ({contract.one_line(err)})")

    def note(self, text: str) -> None:
        """A line of the runner's own about this stage, in its log and on the console."""
        with open(self.log_path, "a") as log:
            log.write(text + "\n")
        self.run.echo_line(self.node.name, text)


class Run:
    """One execution of the DAG in one run directory: which stage runs when (in parallel where the DAG
    allows, none after an upstream failure, all stopped on Ctrl-C), then the flow's outputs published."""

    def __init__(self, dag: Dag, run_dir: Path, backend, params: dict[str, Any], timeout: float = 3600.0,
                 echo: bool = True, cache: Cache | None = None):
        self.dag, self.backend, self.echo, self.cache = dag, backend, echo, cache
        self.timeout = check_timeout(timeout)
        self.params = check_params(dag, params)
        self.dir = RunDir(Path(run_dir), [node.name for node in dag.nodes])
        self.run_dir = self.dir.path
        self.dir.check()
        self._refuse_inputs_inside()
        if cache:
            cache.check()
        self.record = RunRecord(dag.name, backend.name, self.params, [node.name for node in dag.nodes])
        self.results = self.record.stages
        self.handles: dict[str, Handle] = {}
        self.print_lock = threading.Lock()

    def value_of(self, src: Source) -> Any:
        """The value of an input that is not a stage's output: a flow input's, or a constant."""
        return self.params[src.flow_input] if src.flow_input else src.value

    def _refuse_inputs_inside(self) -> None:
        """A source inside the run directory would be cleared or rewritten by the run that reads it."""
        inside = self.run_dir.resolve()
        for node in self.dag.nodes:
            for name, (_, src) in node.inputs.items():
                value = None if src.stage else self.value_of(src)
                if isinstance(value, (str, Path)) and os.path.isabs(value) and \
                        Path(value).resolve().is_relative_to(inside):
                    what = f"flow input {src.flow_input}" if src.flow_input else f"input {name} of stage {node.name}"
                    raise RunError(f"{what}: {value} is inside the run directory {self.run_dir}, which a run "
                                   f"clears; move it out")

    @property
    def interrupted(self) -> bool:
        return self.record.interrupted

    def tree(self, name: str) -> Path:
        return self.run_dir / name

    def output_path(self, name: str) -> Path:
        """Where flow output `name` is published: outputs/<name>.<its declared format>."""
        extension = self.dag.formats.get(name)
        return self.run_dir / "outputs" / (f"{name}.{extension}" if extension else name)

    def echo_line(self, name: str, line: str) -> None:
        if self.echo:
            with self.print_lock:
                print(f"[{name}] {line.rstrip()}", flush=True)

    def execute(self) -> bool:
        """Run every stage whose upstream succeeded, then publish the flow's outputs; True if all succeeded."""
        self.backend.check(self.dag)
        with self.dir:
            self.backend.prepare_run(self.run_dir, self.dir.lock_fd)
            self.record.write(self.run_dir / "run.json")  # at once: an earlier run's record must not stand
            try:
                self.dir.clear()
                self._schedule()
                if self.record.succeeded:
                    self._publish_outputs()
            except OSError as err:  # clearing the directory or publishing the outputs (a full disk)
                self.record.error = os_error(err)
            finally:
                self.record.finished_at = now()
                self.record.write(self.run_dir / "run.json")
        if self.record.error:
            raise RunError(self.record.error)
        return self.record.succeeded

    def _schedule(self) -> None:
        """Start each stage once its upstream has succeeded; skip it once one has not."""
        done: queue.Queue[str] = queue.Queue()
        pending = {node.name: node for node in self.dag.nodes}
        running: dict[str, threading.Thread] = {}
        try:
            while pending or running:
                self._start_ready(pending, running, done)
                if not running:
                    break
                running.pop(done.get()).join()
        except KeyboardInterrupt:
            self._stop(running, pending)

    def _start_ready(self, pending: dict[str, Node], running: dict[str, threading.Thread], done: queue.Queue) -> None:
        for name, node in list(pending.items()):
            states = {self.results[up].status for up in node.upstream}
            if states & {"failed", "skipped"}:
                self.results[name].status = "skipped"
            elif states <= {"succeeded"}:
                self.results[name].status = "running"
                running[name] = threading.Thread(target=self._worker, args=(node, done), daemon=True)
                running[name].start()
            else:
                continue
            del pending[name]

    def _worker(self, node: Node, done: queue.Queue) -> None:
        # Ctrl-C must reach the main thread: a signal taken by this thread (blocked in a read) would not
        # wake the main thread's wait, and the stages would run on until one of them finished. Threads
        # this one starts (timers, watchers) inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            StageRun(self, node)()
        finally:
            done.put(node.name)

    def _stop(self, running: dict[str, threading.Thread], pending: dict[str, Node]) -> None:
        """Ctrl-C: kill every running stage, wait for their threads to record it, skip the rest."""
        self.record.interrupted = True
        for handle in list(self.handles.values()):
            handle.kill()
        for thread in running.values():
            thread.join()
        for name in pending:
            self.results[name].status = "skipped"

    def _publish_outputs(self) -> None:
        """Copy each flow output to outputs/<name>.<format>, read-only: a name a browser or a user can open,
        and a copy, so nothing done to it reaches the stage's output or the cache."""
        (self.run_dir / "outputs").mkdir()
        for name, src in self.dag.outputs.items():
            target = self.output_path(name)
            if src.stage:
                files.place(self.tree(src.stage) / "outputs" / src.output, target, f"flow output {name}")
            else:  # the workflow returns one of its inputs or a constant
                target.write_text(contract.format_value(self.value_of(src)))
                os.chmod(target, 0o444)
            self.record.outputs[name] = {"path": str(target), "sha256": contract.sha256_file(target)}

    def failures(self) -> list[str]:
        return self.record.failures()
