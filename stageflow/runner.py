"""The local runner: a whole flow on this machine, each task as the Domino job it declares, in its own fake
/workflow tree.

It does what Domino (copilot plus the Flyte engine) does for a run and what flytekit's local execution of
raw containers gets wrong: every input materialised as the contract says (primitives as text, files as
files, directories as directories), every exit status and declared output checked against its type,
downstream tasks stopped after a failure, and a record of the run (run.json) with the hash of every input and
output. Which process or container runs a task is the backend's business (stageflow/backends.py); what the
job is given (image, tier, code, datasets, variables) is stageflow/jobs.py's.

Layout of a run directory (what may be one: stageflow/rundir.py):
    .stageflow-run           the mark of a directory a run made, and its lock
    run.json                 what ran, how it ended (or "running"), hashes, the flow's outputs (records.py)
    logs/<folder>.log        each task's stdout and stderr
    <folder>/inputs/<name>   the task's /workflow tree (mounted at /workflow in a container)
    <folder>/outputs/<name>
    <folder>/code/           what the task sees at /mnt/code (a copy: nothing it writes reaches the checkout)
    outputs/<name>.<format>  a read-only copy of each file the flow returns, named by its declared format
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from stageflow import files, jobs
from stageflow.backends import Handle, Outcome
from stageflow.cache import Cache, Sources, key as cache_key
from stageflow.dag import Dag, Node, Source, check_params
from stageflow.records import RunRecord, json_value, now
from stageflow.registry import ROOT
from stageflow import rundir
from stageflow.rundir import RunDir, RunError, new_run_dir, os_error
from stageflow.runtime import contract, inputs

LOG_TAIL = 20


def check_timeout(value: float | str) -> float:
    """A task's time limit: a positive, finite number of seconds (nan or a negative one would kill every
    task at once, inf none)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise RunError(f"timeout: expected a positive number of seconds, found {value!r}")
    return seconds


class Stopped(Exception):
    """The runner's own work for a task (hashing, copying) ran out of the task's time, or Ctrl-C came."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parquet_rows(paths: list[Path]) -> int | None:
    """Rows across the Parquet files among `paths` (from their footers, no data read); None if none is."""
    counts = [rows for rows in map(footer_rows, paths) if rows is not None]
    return sum(counts) if counts else None


def footer_rows(path: Path) -> int | None:
    """A Parquet file's row count from its footer; None for any other file, or a footer that does not parse."""
    if not path.is_file() or path.is_symlink():
        return None
    with files.opened(path) as handle:
        if handle.read(4) != b"PAR1":
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        handle.seek(0)
        try:
            return pq.read_metadata(handle).num_rows
        except (pa.ArrowException, OSError):
            return None


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    """The last lines of a log, read without following a link and at most its last 64 KiB."""
    return "".join(deque(files.read_tail(path, "log").splitlines(keepends=True), maxlen=lines))


def failures(record: RunRecord, run_dir: Path) -> list[str]:
    """One report per failed task: its one-line error, then the tail of its log; then what failed the run
    itself (publishing its outputs on a full disk)."""
    reports = [f"the run failed: {record.error}"] if record.error else []
    for name, result in record.stages.items():
        if result.status == "failed":
            text = f"task {name} failed: {result.error}"
            log = run_dir / "logs" / f"{result.folder}.log"
            try:
                text += f"\n--- last {LOG_TAIL} lines of {log} ---\n{contract.printable(tail(log).rstrip())}"
            except (OSError, files.UnsafeFile):
                pass  # no log (the task never started), or not one the runner wrote
            reports.append(text)
    return reports


class StageRun:
    """One node of a run: its inputs materialised, its outputs taken from the cache or made by starting its
    job on the backend, its log streamed, its outcome judged, its outputs checked and offered to the cache."""

    def __init__(self, run: "Run", node: Node):
        self.run, self.node, self.job = run, node, run.jobs[node.name]
        self.result = run.results[node.name]
        self.tree = run.tree(node.name)
        self.log_path = run.run_dir / "logs" / f"{self.result.folder}.log"

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
        except Exception as err:  # noqa: BLE001 - a backend failure fails this task, not the runner
            self.result.error = contract.one_line(err)
        if self.result.error:
            self._discard_outputs()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tree / "code")  # the task's own copy of the code: nothing to keep
        self.result.seconds = round(time.perf_counter() - started, 3)
        self.result.status = "failed" if self.result.error else "succeeded"

    def _discard_outputs(self) -> None:
        """A failed task (a signal, a timeout, a bad output) leaves nothing that looks like a result, as on
        Domino, where a failed task uploads nothing: only its _ERROR stays to read."""
        self.result.outputs, self.result.values = {}, {}
        with contextlib.suppress(OSError):
            files.empty(self.tree / "outputs", keep=contract.ERROR_FILE)

    @property
    def cached_locally(self) -> bool:
        """This project's stages whenever the cache is on (their sources are hashed into the key); any other
        task as Domino caches it: only when it asks to (cache=True)."""
        return self.run.cache is not None and (self.job.stage is not None or self.node.task.cache)

    def _produce_outputs(self) -> str | None:
        """Fill the task's outputs, from the cache or by running it; why it failed, or None."""
        (self.tree / "inputs").mkdir(parents=True)
        (self.tree / "outputs").mkdir()
        self.result.inputs = self._materialise()
        self.host_files = self._host_files()
        if self.cached_locally:
            self.sources = Sources([path for path in self.host_files if path.is_file()], self._check)
            self.entry = cache_key(self._key_material())
            if self._reuse():
                return None
        self._check()
        self.run.warm_downstream(self.node.name)
        if self.job.sees_code:
            jobs.copy_code(self.run.setup.code, self.tree / "code", self.run.backend.owner(), self.run.setup.exclude)
        return self._failure(self._execute())

    def _key_material(self) -> dict:
        """What the outputs depend on: the task, its image (its code, for this project's stages), its
        command, its inputs and the source files they name, and what it sees at /mnt/code and /mnt/data."""
        material = {"task": self.node.task.name, "command": self.node.task.command,
                    "image": self.job.stage.version if self.job.stage else self.run.backend.image_id(self.job.image),
                    "cache_version": self.node.task.cache_version, "inputs": self.result.inputs,
                    "files": self.sources.hashes}
        if self.job.sees_code:
            material["code"] = self.run.setup.code_digest
        if self.job.datasets:
            material["datasets"] = self.run.setup.dataset_digest(list(self.run.setup.datasets))
        return material

    def _check(self) -> None:
        """Between steps of the runner's own work for the task: the task's clock runs during it too."""
        if self.run.interrupted:
            raise Stopped("interrupted")
        if time.monotonic() > self.deadline:
            raise Stopped("timeout")

    def _materialise(self) -> dict[str, str]:
        """Write each input where the contract says (files as files, directories as directories, primitives
        as text); their sha256.

        A file input is a copy (a reflink where the file system has them), not a link: a task that writes
        into its input must not change the upstream output, the cache, or the user's file it came from."""
        inputs, hashes = self.tree / "inputs", {}
        for name, (kind, src) in self.node.inputs.items():
            target = inputs / name
            if src.stage:
                upstream = self.run.results[src.stage]
                source = self.run.tree(src.stage) / "outputs" / src.output
                what = f"output {src.output} of task {src.stage}"
                if src.output in upstream.values:  # a primitive: as copilot passes it on, in its own format
                    target.write_text(contract.format_value(self.run.typed_value(src)))
                elif self.run.dag.node(src.stage).outputs[src.output] is contract.Directory:
                    files.place_tree(source, target, what)
                else:
                    files.place(source, target, what)
            else:
                value = self.run.value_of(src)
                if kind is contract.Directory:
                    files.place_tree(Path(value).resolve(), target, f"input {name}")
                elif kind is contract.File:  # a file given as a value (pyflyte, compose-stage): the file itself
                    files.place(Path(value).resolve(), target, f"input {name}")
                else:
                    target.write_text(contract.format_value(value))
            hashes[name] = (files.tree_sha256(target, check=self._check) if target.is_dir()
                            else contract.sha256_file(target, self._check))
        return hashes

    def _host_files(self) -> list[Path]:
        """Host files a task names in a str input (a source's data_path): a container must see them."""
        values = [self.run.value_of(src) for kind, src in self.node.inputs.values() if kind is str and not src.stage]
        return [Path(v) for v in values if isinstance(v, str) and os.path.isabs(v) and Path(v).exists()]

    def _reuse(self) -> bool:
        """Take the task's outputs from the cache when an entry for exactly these inputs is intact."""
        if any(kind is contract.Directory for kind in self.node.outputs.values()):
            return False  # the cache holds files: a directory output is made again
        manifest = self.run.cache.restore(self.entry, list(self.node.outputs), self.tree / "outputs", self._check)
        if manifest is None:
            return False
        self.result.outputs, self.result.cached = manifest["outputs"], True
        self.result.rows_in, self.result.rows_out = manifest.get("rows_in"), manifest.get("rows_out")
        self._read_values()
        self.log_path.write_text(f"cached: outputs reused from cache entry {self.entry}\n")
        self.run.echo_line(self.node.name, f"cached (entry {self.entry[:12]})")
        return True

    def _execute(self) -> Outcome:
        """Start the task's job on the backend and stream its log until it ends."""
        handle = self.run.backend.start(self.job, self.tree, self.deadline - time.monotonic(), self.host_files)
        self.run.handles[self.node.name] = handle
        try:
            if self.run.interrupted:  # Ctrl-C came while this task was starting
                handle.kill()
            with open(self.log_path, "w") as log:
                for line in handle.lines():
                    log.write(line)
                    log.flush()
                    self.run.echo_line(self.node.name, line)
            outcome = handle.wait()
        except BaseException:  # the log could not be written (a full disk): never leave the task unwatched
            handle.kill()
            handle.wait()
            raise
        finally:
            self.run.handles.pop(self.node.name, None)
        self.result.exit_code, self.result.peak_rss_mb = outcome.exit_code, outcome.peak_rss_mb
        return outcome

    def _failure(self, outcome: Outcome) -> str | None:
        """Why the task failed, in one line, or None when it did what it declared."""
        if outcome.reason == "timeout":
            return f"timed out after {self.run.timeout:g} s"
        if outcome.reason == "oom":
            return f"killed: out of memory (the hardware tier's memory limit, {self.job.tier.memory})"
        if outcome.reason == "interrupted":
            return "interrupted"
        outputs = self.tree / "outputs"
        message = self._error_text(outputs / contract.ERROR_FILE)
        if outcome.exit_code != 0:
            return f"exit status {outcome.exit_code}" + (f": {message}" if message else "")
        missing = [name for name in self.node.outputs if not os.path.lexists(outputs / name)]
        if missing:
            return f"exited 0 but did not write declared output {', '.join(missing)}" + self._near_misses(missing)
        if message is not None:
            return f"exited 0 but wrote {contract.ERROR_FILE}: {message}"
        return None

    def _near_misses(self, missing: list[str]) -> str:
        """What the task wrote instead, when it looks like a missing output under another name (datasetA.csv
        for datasetA): copilot takes an output by its exact name."""
        try:
            written = sorted(os.listdir(self.tree / "outputs"))
        except OSError:
            return ""
        near = [found for found in written if any(found.split(".")[0] == name for name in missing)]
        return (f" (it wrote {', '.join(near)}: an output is the file /workflow/outputs/<name>, named exactly as "
                f"declared)") if near else ""

    def _error_text(self, path: Path) -> str | None:
        """What the task wrote in _ERROR, as copilot reads it (its first MiB), in one line; None if none.
        A link or a FIFO there is said, never followed."""
        try:
            text = files.read_text(path, limit=contract.MAX_ERROR_BYTES, cut=True)
        except FileNotFoundError:
            return None
        except files.UnsafeFile as err:
            return f"({err})"
        return contract.one_line(contract.StageError(text.strip())) if text.strip() else ""

    def _keep_outputs(self) -> None:
        """Check each output against its declared type, record its hash (and a primitive's value), freeze it,
        and offer the outputs to the cache. What a task writes is untrusted: each is checked on its open
        descriptor first (files.opened)."""
        outputs, result = self.tree / "outputs", self.result
        for name, kind in self.node.outputs.items():
            what = f"output {name}"
            if kind is contract.Directory:
                result.outputs[name] = files.tree_sha256(outputs / name, what, self._check)
                files.freeze_tree(outputs / name, what)
                continue
            with files.opened(outputs / name, what) as handle:
                result.outputs[name] = contract.sha256_of(handle, self._check)
                os.fchmod(handle.fileno(), 0o444)  # recorded: an edit would make run.json wrong
        self._read_values()
        result.rows_in = parquet_rows([self.tree / "inputs" / name for name in self.node.inputs])
        result.rows_out = parquet_rows([outputs / name for name in self.node.outputs])
        if self.cached_locally:
            self._offer_to_cache()

    def _read_values(self) -> None:
        """Each primitive output parsed as copilot parses it (at most 1024 bytes, whitespace stripped), so an
        int output holding `abc` fails the task here, as it fails the job on Domino."""
        for name, kind in self.node.outputs.items():
            if kind in contract.SIMPLE_TYPES:
                data = files.read_bytes(self.tree / "outputs" / name, f"output {name}", contract.MAX_SIMPLE_OUTPUT)
                try:
                    self.result.values[name] = contract.parse_output(data.decode("utf-8"), kind)
                except UnicodeDecodeError:
                    raise contract.StageError(f"output {name}: expected {contract.TYPE_NAMES[kind]} as UTF-8 text, "
                                              f"found binary data") from None
                except ValueError as err:
                    raise contract.StageError(f"output {name}: declared {contract.TYPE_NAMES[kind]}: {err}, found "
                                              f"{data[:60].decode('utf-8', 'replace')!r}") from None

    def _offer_to_cache(self) -> None:
        """Store the outputs under the key, unless a source changed while the task ran: the key would then
        name content the task may not have read."""
        if not self.sources.unchanged():
            self.note("warning: a source file changed while the task ran; its outputs are not cached")
            return
        try:
            self.run.cache.store(self.entry, self.tree / "outputs", self.result.outputs,
                                 rows_in=self.result.rows_in, rows_out=self.result.rows_out)
        except OSError as err:  # the run's outputs are fine; only the shortcut for next time is lost
            self.note(f"warning: could not add outputs to the cache ({contract.one_line(err)})")

    def note(self, text: str) -> None:
        """A line of the runner's own about this task, in its log and on the console."""
        with open(self.log_path, "a") as log:
            log.write(text + "\n")
        self.run.echo_line(self.node.name, text)


class Run:
    """One execution of the DAG in one run directory: which task runs when (in parallel where the DAG
    allows, none after an upstream failure, all stopped on Ctrl-C), then the flow's outputs published."""

    def __init__(self, dag: Dag, run_dir: Path, backend, params: dict[str, Any], timeout: float = 3600.0,
                 echo: bool = True, cache: Cache | None = None, setup: jobs.Setup | None = None):
        self.dag, self.backend, self.echo, self.cache = dag, backend, echo, cache
        self.timeout = check_timeout(timeout)
        self.params = check_params(dag, params)
        self.folders = dag.folders()
        self.run_dir = Path(run_dir).absolute() if run_dir else None  # None: a new runs/<time>, made at execute
        if self.run_dir:
            RunDir(self.run_dir, list(self.folders.values())).check()
            self._refuse_inputs_inside()
            if rundir.in_runs(self.run_dir):
                rundir.check_run_dir_name(self.run_dir)
                rundir.check_links(Path(os.path.realpath(self.run_dir)).parent)
        self.link_problem: str | None = None  # why runs/last-succeeded could not be pointed at this run
        self.setup = setup or jobs.Setup().with_flow(ROOT / "flow.py")
        self.jobs = jobs.plan(dag, self.setup, uuid.uuid4().hex, standard_environment)
        if self.setup.dask is not None and backend.name != "host":
            raise RunError(f"--dask: the cluster stages run beside a cluster of host processes, and the {backend.name} "
                           f"backend runs stages in containers with no network, which cannot reach it; use "
                           f"--backend host (docs/performance.md, \"Past one machine\")")
        self._check_inputs()
        backend.check(list(self.jobs.values()))
        if cache:
            cache.check()
        self.record = RunRecord(dag.name, backend.name, self.params, [node.name for node in dag.nodes])
        self.results = self.record.stages
        for name, result in self.results.items():
            job = self.jobs[name]
            result.task, result.folder = job.node.task.name, self.folders[name]
            result.environment, result.image = job.node.task.environment, job.image
            result.formats = dict(job.node.formats)
            result.upstream = sorted(job.node.upstream)
        self.handles: dict[str, Handle] = {}
        self.wake: queue.Queue[str | None] = queue.Queue()  # a task's name once it has ended; None: interrupted
        self.print_lock = threading.Lock()

    def value_of(self, src: Source) -> Any:
        """The value of an input that is not a task's output: a flow input's, or a constant."""
        return self.params[src.flow_input] if src.flow_input else src.value

    def typed_value(self, src: Source) -> Any:
        """The value of a primitive output of an upstream task, or of a flow input or constant."""
        return self.results[src.stage].values[src.output] if src.stage else self.value_of(src)

    def _check_inputs(self) -> None:
        """Before anything runs: each input of this project's stages that the registry names (`checked`) and
        whose value is known now (a flow input, a constant), by the rule the stage itself applies to it."""
        for name, job in self.jobs.items():
            for key in job.stage.checked if job.stage else ():
                _, src = job.node.inputs.get(key, (None, None))
                if src is None or src.stage:
                    continue
                try:
                    inputs.check(key, self.value_of(src))
                except inputs.InputError as err:
                    what = f"flow input {src.flow_input}" if src.flow_input else f"input {key} of task {name}"
                    raise RunError(f"{what}: {err}") from None

    def _refuse_inputs_inside(self) -> None:
        """A source inside the run directory would be cleared or rewritten by the run that reads it."""
        inside = Path(os.path.realpath(self.run_dir))
        for node in self.dag.nodes:
            for name, (_, src) in node.inputs.items():
                value = None if src.stage else self.value_of(src)
                if isinstance(value, (str, Path)) and os.path.isabs(value) and \
                        Path(os.path.realpath(value)).is_relative_to(inside):  # realpath: a link loop is no error
                    what = f"flow input {src.flow_input}" if src.flow_input else f"input {name} of task {node.name}"
                    raise RunError(f"{what}: {value} is inside the run directory {self.run_dir}, which a run "
                                   f"clears; move it out")

    @property
    def interrupted(self) -> bool:
        return self.record.interrupted

    def tree(self, name: str) -> Path:
        return self.run_dir / self.folders[name]

    def output_path(self, name: str) -> Path:
        """Where flow output `name` is published: outputs/<name>.<its declared format>."""
        extension = self.dag.formats.get(name)
        return self.run_dir / "outputs" / (f"{name}.{extension}" if extension else name)

    def echo_line(self, name: str, line: str) -> None:
        """A task's line on the console (its log keeps it as written), with nothing a terminal would act on."""
        if self.echo:
            with self.print_lock:
                print(contract.printable(f"[{name}] {line.rstrip()}"), flush=True)

    def execute(self) -> bool:
        """Run every task whose upstream succeeded, then publish the flow's outputs; True if all succeeded."""
        with self._signals():
            given = self.run_dir is not None
            self.run_dir = self.run_dir or new_run_dir()
            self.dir = RunDir(self.run_dir, list(self.folders.values()))
            self.setup.exclude = [self.run_dir, *([self.cache.root] if self.cache else [])]
            if self.echo:
                print(f"running flow {self.dag.name} ({self.backend.name} backend) in {self.run_dir}", flush=True)
                for notice in self.setup.notices:
                    print(f"notice: {notice}", flush=True)
            with self.dir:
                if given and rundir.in_runs(self.run_dir):  # `--run-dir runs/NAME`: the newest run all the same
                    rundir.point(rundir.LATEST, self.run_dir)
                self.backend.prepare_run(self.run_dir, self.dir.lock_fd)
                self.record.write(self.run_dir / "run.json")  # at once: an earlier run's record must not stand
                try:
                    self.dir.clear()
                    with self._cluster():
                        self._schedule()
                    if self.record.succeeded and not self.interrupted:
                        self._publish_outputs()
                except OSError as err:  # clearing the directory or publishing the outputs (a full disk)
                    self.record.error = os_error(err)
                    self.record.outputs = {}
                    with contextlib.suppress(OSError):  # half the outputs published is none: and room for run.json
                        files.empty(self.run_dir / "outputs")
                finally:
                    self.backend.finish_run()
                    self.record.finished_at = now()
                    self.record.write(self.run_dir / "run.json")
            succeeded = self.record.succeeded and self.record.error is None and not self.interrupted
            if succeeded and rundir.in_runs(self.run_dir):
                try:
                    rundir.point(rundir.SUCCEEDED, self.run_dir)
                except RunError as err:  # (checked before the run: something took the name since)
                    self.link_problem = str(err)
        return self.record.succeeded and self.record.error is None

    @contextlib.contextmanager
    def _cluster(self):
        """With --dask, the cluster the cluster stages use, for as long as the tasks run (started here when
        --dask gives a number of workers; stopped however the run ends), and their jobs told where it is."""
        if self.setup.dask is None:
            yield
            return
        from stageflow.dask_cluster import LocalCluster

        folder = self.run_dir / ".dask"
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)
        try:
            with LocalCluster(self.setup.dask, folder) as cluster:
                if self.echo:
                    started = "started" if isinstance(self.setup.dask, int) else "given"
                    print(f"dask: cluster stages on the scheduler at {cluster.address} ({started})", flush=True)
                for job in self.jobs.values():
                    if job.stage is not None and job.stage.cluster:
                        job.environment.update(cluster.environment())
                yield
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)

    @contextlib.contextmanager
    def _signals(self):
        """While the run lasts, Ctrl-C and SIGTERM (any number of them, at any moment) stop it in order rather
        than raise wherever the main thread happens to be: every task is killed, each records how it ended,
        what had not started is skipped, and run.json and the report are written."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in previous:
            signal.signal(number, self._interrupt)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _interrupt(self, signum=None, frame=None) -> None:
        self.record.interrupted = True
        for handle in list(self.handles.values()):
            handle.kill()
        self.wake.put(None)

    def _schedule(self) -> None:
        """Start each task once its upstream has succeeded; skip it once one has not, or once the run was
        interrupted (the tasks running then are killed, and each is waited for)."""
        pending = {node.name: node for node in self.dag.nodes}
        running: dict[str, threading.Thread] = {}
        while pending or running:
            if self.interrupted:
                for name in pending:
                    self.results[name].status = "skipped"
                pending.clear()
            else:
                self._start_ready(pending, running, self.wake)
            if not running:
                break
            finished = self.wake.get()
            if finished is not None:
                running.pop(finished).join()

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

    def warm_downstream(self, name: str) -> None:
        """Task `name` runs (its outputs were not in the cache), so every task downstream of it will, unless one
        fails: the backend may get them ready now (the host backend starts their processes to do their imports
        while this one runs)."""
        for node in self.dag.downstream(name):
            self.backend.warm(self.jobs[node.name], self.tree(node.name))

    def _worker(self, node: Node, done: queue.Queue) -> None:
        # Ctrl-C must reach the main thread: a signal taken by this thread (blocked in a read) would not
        # wake the main thread's wait, and the tasks would run on until one of them finished. Threads
        # this one starts (timers, watchers) inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            StageRun(self, node)()
        finally:
            done.put(node.name)

    def _publish_outputs(self) -> None:
        """Copy each file the flow returns to outputs/<name>.<format>, read-only: a name a browser or a user
        can open, and a copy, so nothing done to it reaches the task's output or the cache. A primitive is
        recorded by value."""
        (self.run_dir / "outputs").mkdir()
        for name, src in self.dag.outputs.items():
            kind = self.dag.output_types.get(name, contract.File)
            if kind in contract.SIMPLE_TYPES:
                self.record.outputs[name] = {"value": json_value(self.typed_value(src))}
                continue
            target = self.output_path(name)
            source = self.tree(src.stage) / "outputs" / src.output if src.stage else Path(self.value_of(src))
            if kind is contract.Directory:
                files.place_tree(source, target, f"flow output {name}")
                digest = files.tree_sha256(target)
            else:
                files.place(source, target, f"flow output {name}")
                digest = contract.sha256_file(target)
            self.record.outputs[name] = {"path": str(target), "sha256": digest}

    def failures(self) -> list[str]:
        return failures(self.record, self.run_dir)


def standard_environment() -> str:
    from stageflow import images

    return images.standard_environment()
