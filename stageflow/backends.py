"""What the runner asks of a backend, the backends by name, and the host backend: each of this project's
stages as a process on this machine.

A backend starts one task's job in its /workflow tree and hands back a Handle: its output lines, its Outcome,
a way to kill it. The backends differ in that one hook (and in what they check first), as kedro's runners
differ in their executor: the runner schedules, a backend starts. The container backends
(stageflow/containers.py) reuse the clock, the runner's identity and, for compose, the process handle from
here, so a task is timed out, killed and watched the same way whatever runs it.
"""

from __future__ import annotations

import ast
import compileall
import contextlib
import ctypes
import functools
import importlib
import io
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from stageflow.jobs import Job
from stageflow.registry import PACKAGE, ROOT
from stageflow.runtime import contract, schema as schemas
from stageflow.runtime.contract import StageError

PEAK_SAMPLE_SECONDS = 0.02
# The tree of a process started before it is given one: no file can be made there, not even by root (/dev/null
# is no directory), so a stage that does not wait for its tree fails at once without touching anything.
NOWHERE = Path(os.devnull) / "stageflow-tree-not-given-yet"
# Stage processes waiting for their trees at once, at most: each holds its libraries (100-200 MB), and a wide
# flow's every stage started at once would also slow the stages that are running.
MOST_WAITING = 8


@dataclass
class Outcome:
    exit_code: int | None
    reason: str | None = None  # "timeout", "oom" or "interrupted" when the exit code alone would mislead
    peak_rss_mb: float | None = None


class Handle(Protocol):
    def lines(self) -> Iterator[str]: ...
    def wait(self) -> Outcome: ...
    def kill(self, reason: str = "interrupted") -> None: ...


class Backend(Protocol):
    name: str

    def check(self, jobs: list[Job]) -> None:
        """Before anything runs: refuse, in one line, a job this backend cannot start."""

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        """Before the first task of a run in `run_dir`."""

    def finish_run(self) -> None:
        """After the last task of the run, whatever became of it."""

    def warm(self, job: Job, tree: Path) -> None:
        """A hint: `job` will probably start soon, in `tree`. A backend may get it ready (the host backend starts
        its process early); `start` is called all the same, or never (the job was cached or skipped)."""

    def start(self, job: Job, tree: Path, timeout: float, files: list[Path]) -> Handle:
        """Start `job` in its tree, with the host `files` its inputs name, killed after `timeout` seconds."""

    def owner(self) -> int | None:
        """The uid the job's files must belong to for it to write them (None: the runner's own)."""

    def image_id(self, image: str) -> str:
        """What an image is, for the cache key: its content's id where the backend can tell."""


BACKENDS = {"host": "stageflow.backends:HostBackend", "docker": "stageflow.containers:DockerBackend",
            "compose": "stageflow.containers:ComposeBackend"}


def backend_named(name: str) -> Backend:
    """The backend called `name`, built; imported only when asked for (the Docker SDK only for containers)."""
    name = "host" if name == "process" else name  # its name before 0.2
    if name not in BACKENDS:
        raise StageError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    module, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)()


def kill_after(timeout: float, kill: Callable[[str], None]) -> threading.Timer:
    """Start the stage's timeout clock now, not when we begin waiting: a stage that hangs silently must
    time out too. Both backends' handles cancel it once the stage has exited."""
    timer = threading.Timer(min(timeout, threading.TIMEOUT_MAX), kill, ("timeout",))
    timer.daemon = True
    timer.start()
    return timer


LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load libraries
PR_SET_PDEATHSIG = 1


def die_with(runner: int) -> None:
    """Between fork and exec of a stage process: have the kernel SIGKILL it when its parent dies, however
    the parent dies (kill -9 included), so no stage outlives the runner to write into its directory.

    The parent, for the kernel, is the thread that forked: stages are started from the thread that then
    waits for them (the stage's worker), which lives exactly as long as the stage does."""
    if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != runner:
        os._exit(127)  # could not arm it, or the runner died before it was armed


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot): tells it from a later process given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def runner_identity() -> str:
    """This runner as host:pid:start, for labels on what it starts outside its own process tree."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def runner_alive(identity: str | None) -> bool:
    """Whether the runner `identity` names still lives; one on another host is taken to (we cannot tell)."""
    host, _, rest = (identity or "").partition(":")
    pid, _, start = rest.partition(":")
    if host and host != socket.gethostname():
        return True
    return pid.isdigit() and process_start(int(pid)) == start


class HostBackend:
    """Each of this project's stages as a Python process on this host: no Docker needed, the fastest way to
    iterate. Any other task needs its environment's image, so containers.

    A stage the registry marks `early` is started early where the runner says it will soon run (`warm`): its
    process does its imports while the stages upstream of it run, then waits to be handed its tree
    (contract.wait_for_inputs). On 2 x 2,000 rows that took train's imports, most of a small run, off its
    critical path (docs/performance.md). Only a script that enters through the contract waits
    (`waits_for_its_tree`); any other starts when its stage does, as it would do work before it could know its
    tree, and would have to do it again."""

    name = "host"
    lock_fd: int | None = None
    warming: dict[str, "Waiting"] | None = None  # by node name: started early, not yet handed their trees

    def check(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.stage is None:
                raise StageError(f"task {job.node.name} runs `{job.node.task.command}` in environment "
                                 f"{job.node.task.environment!r}, not one of this project's stages, so it needs "
                                 f"containers: use --backend docker")

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        """Before the first stage: every stage process will hold the run directory's lock, so the lock is held
        for as long as any of them lives, even one that outlived the runner for a moment. And the package's
        bytecode, as an install (pip) and the images (compileall in stages/Dockerfile) have it: each stage is a
        fresh interpreter, which under PYTHONDONTWRITEBYTECODE=1 would otherwise compile the runtime from source
        every time (0.1-0.3 s a stage here, docs/performance.md). Reading bytecode is what that setting leaves
        on. Up to date, this costs a stat a file; a package it cannot write (an install of someone else's) is
        left as it is."""
        self.lock_fd = lock_fd
        compileall.compile_dir(PACKAGE, quiet=2)
        self.warming, self.claimed, self.eligible = {}, set(), {}
        self.guard = threading.Lock()
        self.requests: queue.Queue[tuple[Job, Path] | None] = queue.Queue()
        self.spawner = threading.Thread(target=self._spawn_waiting, daemon=True)
        self.spawner.start()

    def finish_run(self) -> None:
        """The run is over: a process still waiting was never needed (its stage was cached or skipped)."""
        if self.warming is not None:
            self.requests.put(None)
            self.spawner.join()
            for waiting in self.warming.values():
                waiting.discard()
            self.warming = None
        self.lock_fd = None

    def owner(self) -> int | None:
        return None

    def image_id(self, image: str) -> str:
        return image

    def command(self, job: Job) -> list[str]:
        return [sys.executable, str(ROOT / job.stage.script)]

    def warm(self, job: Job, tree: Path) -> None:
        """`job` will probably run soon: start its process now, to wait for its tree once its imports are done
        (on the spawner thread, which also reads the script: nothing of it on the stage's own way to start)."""
        if self.warming is not None:
            self.requests.put((job, tree))

    def starts_early(self, job: Job) -> bool:
        """A stage the registry marks `early`, whose script waits for its tree."""
        return job.stage.early and waits_for_its_tree(ROOT / job.stage.script)

    def _spawn_waiting(self) -> None:
        """The thread that starts every waiting process: for the kernel, their parent (backends.die_with), and
        it lives until the run ends, so none is killed early by its parent thread's end, none outlives the run."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while (request := self.requests.get()) is not None:
            job, tree = request
            with self.guard:
                if job.node.name in self.claimed or job.node.name in self.warming or len(self.warming) >= MOST_WAITING:
                    continue  # (one beyond the most starts late, or early when a stage nearer to it runs)
                if job.node.name not in self.eligible:  # each stage upstream of it asks again: read its script once
                    self.eligible[job.node.name] = self.starts_early(job)
                if not self.eligible[job.node.name]:
                    continue
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    # Not the lock: a process not yet handed its tree has no business with the run directory.
                    proc = self._popen(job, NOWHERE, {contract.WAIT_ENV: f"{theirs.fileno()}:{os.getpid()}"},
                                       fds=(theirs.fileno(),))
                except OSError:
                    ours.close()
                    continue  # it starts late, as it would have anyway, and says then what is wrong
                finally:
                    theirs.close()
                self.warming[job.node.name] = Waiting(proc, ours)

    def _popen(self, job: Job, tree: Path, extra: dict[str, str], fds: tuple[int, ...] | None = None
               ) -> subprocess.Popen:
        """The stage's process in `tree`, with `extra` variables and the descriptors `fds` (default: the lock)."""
        # The active schema by its absolute path: the stage runs from ROOT, wherever this process runs from.
        env = {**os.environ, **job.environment, "HOME": os.environ.get("HOME", "/"), "WORKFLOW_ROOT": str(tree),
               "PYTHONUNBUFFERED": "1", schemas.ENV: str(schemas.path()),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra}
        if fds is None:
            fds = () if self.lock_fd is None else (self.lock_fd,)
        return subprocess.Popen(self.command(job), cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True,
                                preexec_fn=functools.partial(die_with, os.getpid()), pass_fds=fds)

    def start(self, job: Job, tree: Path, timeout: float, mounts: list[Path]) -> "ProcessHandle":
        waiting = None
        if self.warming is not None:
            with self.guard:
                self.claimed.add(job.node.name)
                waiting = self.warming.pop(job.node.name, None)
        if waiting is not None:
            return StartedEarly(waiting, tree, self.lock_fd, timeout, functools.partial(self._popen, job, tree, {}))
        return ProcessHandle(self._popen(job, tree, {}), timeout)


def waits_for_its_tree(script: Path) -> bool:
    """Whether a stage script enters through the contract (calls contract.main or contract.run), which waits
    for its tree when the stage is started early. Read, not run: a script that does not is never started early."""
    try:
        tree = ast.parse(script.read_bytes(), str(script))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("main", "run")
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "contract" for node in ast.walk(tree))


class Waiting:
    """A stage process started before its inputs: the socket on which it says READY (its imports done, at
    contract.wait_for_inputs) and is handed its tree, and what it printed until then."""

    def __init__(self, proc: subprocess.Popen, handover: socket.socket):
        self.proc, self.handover = proc, handover
        self.printed = tempfile.TemporaryFile()  # read raw, before the process's own reader buffered anything

    def give(self, tree: Path, lock_fd: int | None) -> bool:
        """Once the process is ready, hand it its tree and the run directory's lock; False if it ended first,
        never ready. What it prints meanwhile is kept (for its log): a full pipe would stop it short of ready."""
        out = self.proc.stdout.fileno()
        try:
            while True:
                readable, _, _ = select.select([self.handover, out] if out is not None else [self.handover], [], [], 0.1)
                if self.handover in readable:
                    if self.handover.recv(64) != contract.READY:
                        return False
                    with contextlib.suppress(OSError):  # it died as it was handed the tree: its end is the stage's
                        socket.send_fds(self.handover, [json.dumps(str(tree)).encode()],
                                        [] if lock_fd is None else [lock_fd])
                    return True
                if out in readable:
                    chunk = os.read(out, 1 << 16)
                    self.printed.write(chunk)
                    out = out if chunk else None
                # Ended without a word, the socket still open: a process it started holds it.
                elif os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return False
        finally:
            self.handover.close()

    def lines(self) -> Iterator[str]:
        """Its output: what it printed while it waited, then the rest, read as one stream, as a process started
        late is read (the same decoding and newlines, a line cut at the handover whole)."""
        self.printed.seek(0)
        raw = io.FileIO(self.proc.stdout.fileno(), closefd=False)
        try:
            yield from io.TextIOWrapper(io.BufferedReader(Chained(self.printed, raw)), errors="replace")
        finally:
            self.close()

    def discard(self) -> None:
        """Kill it, with anything it started, and reap it."""
        self.handover.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.close()

    def close(self) -> None:
        self.printed.close()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()


class Chained(io.RawIOBase):
    """Two binary streams read as one."""

    def __init__(self, *parts):
        self.parts = list(parts)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.parts:
            count = self.parts[0].readinto(buffer)
            if count:
                return count
            self.parts.pop(0)
        return 0


class ProcessHandle:
    def __init__(self, proc: subprocess.Popen, timeout: float):
        self.proc = proc
        self.killed_for: str | None = None
        self.peak_mb: float | None = None
        self.exited = threading.Event()
        self.guard = threading.Lock()  # a kill and a process taking the place of another happen one at a time
        self.timeout = timeout
        self.timer = kill_after(timeout, self.kill)
        self._watch(proc)

    def _watch(self, proc: subprocess.Popen) -> None:
        threading.Thread(target=self._watch_memory, args=(proc.pid,), daemon=True).start()

    def _watch_memory(self, pid: int) -> None:
        """Sample the process's own high-water mark (VmHWM). wait4's ru_maxrss would not do: it also
        counts the runner's memory, which the child shared between fork and exec."""
        status = Path(f"/proc/{pid}/status")
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
        with self.guard:
            self.killed_for = self.killed_for or reason
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class StartedEarly(ProcessHandle):
    """A stage whose process was started early (HostBackend.warm): it is handed its tree once it says it is
    ready. One that ends first, never ready (it failed before it could wait: an import), is replaced by a
    process started now, on a clock of its own, as the stage would have been without the early start; a kill
    and the memory watch go to whichever process is the stage's."""

    def __init__(self, waiting: Waiting, tree: Path, lock_fd: int | None, timeout: float,
                 start: Callable[[], subprocess.Popen]):
        super().__init__(waiting.proc, timeout)
        self.waiting, self.tree, self.lock_fd, self.start = waiting, tree, lock_fd, start

    def lines(self) -> Iterator[str]:
        if self.waiting.give(self.tree, self.lock_fd):
            yield from self.waiting.lines()
            return
        with self.guard:
            again = self.killed_for is None  # (a kill ended it: that is the stage's outcome)
            if again:
                self.waiting.discard()
                self.proc = self.start()
                self.timer.cancel()
                self.timer = kill_after(self.timeout, self.kill)
                self._watch(self.proc)
        yield from self.proc.stdout if again else self.waiting.lines()
