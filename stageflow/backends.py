"""What the runner asks of a backend, the backends by name, and the host backend: each of this project's
stages as a process on this machine.

A backend starts one task's job in its /workflow tree and hands back a Handle: its output lines, its Outcome,
a way to kill it. The backends differ in that one hook (and in what they check first), as kedro's runners
differ in their executor: the runner schedules, a backend starts. The container backends
(stageflow/containers.py) reuse the clock, the runner's identity and, for compose, the process handle from
here, so a task is timed out, killed and watched the same way whatever runs it.
"""

from __future__ import annotations

import compileall
import ctypes
import functools
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from stageflow.jobs import Job
from stageflow.registry import PACKAGE, ROOT
from stageflow.runtime import schema as schemas
from stageflow.runtime.contract import StageError

PEAK_SAMPLE_SECONDS = 0.02


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
    iterate. Any other task needs its environment's image, so containers."""

    name = "host"
    lock_fd: int | None = None

    def check(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.stage is None:
                raise StageError(f"task {job.node.name} runs `{job.node.task.command}` in environment "
                                 f"{job.node.task.environment!r}, not one of this project's stages, so it needs "
                                 f"containers: use --backend docker")

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        """Before the first stage: every stage process will inherit the run directory's lock, so the lock
        is held for as long as any of them lives, even one that outlived the runner for a moment. And the
        package's bytecode, as an install (pip) and the images (compileall in stages/Dockerfile) have it:
        each stage is a fresh interpreter, which under PYTHONDONTWRITEBYTECODE=1 would otherwise compile the
        runtime from source every time (0.1-0.3 s a stage here, docs/performance.md). Reading bytecode is
        what that setting leaves on. Up to date, this costs a stat a file; a package it cannot write (an
        install of someone else's) is left as it is."""
        self.lock_fd = lock_fd
        compileall.compile_dir(PACKAGE, quiet=2)

    def finish_run(self) -> None:
        self.lock_fd = None

    def owner(self) -> int | None:
        return None

    def image_id(self, image: str) -> str:
        return image

    def command(self, job: Job) -> list[str]:
        return [sys.executable, str(ROOT / job.stage.script)]

    def start(self, job: Job, tree: Path, timeout: float, mounts: list[Path]) -> "ProcessHandle":
        # The active schema by its absolute path: the stage runs from ROOT, wherever this process runs from.
        env = {**os.environ, **job.environment, "HOME": os.environ.get("HOME", "/"), "WORKFLOW_ROOT": str(tree),
               "PYTHONUNBUFFERED": "1", schemas.ENV: str(schemas.path()),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(self.command(job), cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True,
                                preexec_fn=functools.partial(die_with, os.getpid()),
                                pass_fds=() if self.lock_fd is None else (self.lock_fd,))
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
