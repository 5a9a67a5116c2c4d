"""A Dask cluster for a local run (`stageflow run --dask N`): a scheduler and N workers, each a process of its
own on this machine, started for the run and stopped after it, however it ends (Ctrl-C, a failed stage, the
runner killed: each process is armed to die with the runner). `--dask HOST:PORT` uses a scheduler that is
already running instead, and leaves it running.

The cluster stages (stageflow/registry.py marks them) are then given the variables Domino gives a job that has
an on-demand Dask cluster (DASK_SCHEDULER_SERVICE_HOST and DASK_SCHEDULER_SERVICE_PORT) and the storage their
workers share with them (STAGEFLOW_SHARED_DIR, a folder of the run), so the same stage code finds its cluster
here and on Domino (stageflow/runtime/cluster.py).

The workers are host processes, and so are the stages that use them: the docker backend runs a stage with no
network at all, which could not reach a scheduler, so `--dask` runs with the host backend (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stageflow.backends import die_with
from stageflow.registry import ROOT
from stageflow.runtime import cluster as runtime_cluster
from stageflow.runtime.contract import StageError

START_SECONDS = 60  # for the scheduler to write its address and every worker to join it
WORKER_MEMORY = "4GiB"  # each worker's memory limit (the Medium tier's): past it Dask spills, then restarts it
# A worker whose nanny died is gone for good here (Domino restarts a cluster's dead worker): a stage whose work
# then has no worker left fails after this long, rather than wait for ever.
NO_WORKERS_SECONDS = 60


class ClusterError(StageError):
    """The local cluster could not start, or --dask names no cluster: one line."""


def parse(value: str | None) -> int | str | None:
    """--dask N (workers to start) or --dask HOST:PORT (a running scheduler); None without --dask."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        if not 1 <= int(text) <= 64:
            raise ClusterError(f"--dask {value}: expected 1 to 64 workers, or the HOST:PORT of a scheduler")
        return int(text)
    found = re.fullmatch(r"(?:tcp://)?([^:/\s]+):([0-9]{1,5})", text)
    if not found:
        raise ClusterError(f"--dask {value!r}: expected a number of workers (--dask 2) or the HOST:PORT of a running "
                           f"scheduler (--dask 127.0.0.1:8786)")
    return f"{found[1]}:{found[2]}"


@dataclass
class LocalCluster:
    """The cluster a run uses: started here (`workers`), or a running one (`address`)."""
    spec: int | str
    directory: Path
    no_workers_timeout: float = NO_WORKERS_SECONDS
    address: str | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        """What a cluster stage's job is given: the scheduler, as Domino names it, and the shared storage."""
        host, _, port = self.address.rpartition(":")
        return {runtime_cluster.HOST_ENV: host, runtime_cluster.PORT_ENV: port,
                runtime_cluster.SHARED_ENV: str(self.directory / "shared")}

    def __enter__(self) -> "LocalCluster":
        (self.directory / "shared").mkdir(parents=True, exist_ok=True)
        if isinstance(self.spec, str):
            self.address = self.spec
            return self
        try:
            self._start(self.spec)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1", "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": f"{self.no_workers_timeout}s"}
        log = open(self.directory / f"{log_name}.log", "wb")
        try:
            proc = subprocess.Popen([sys.executable, "-m", *args], cwd=self.directory, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=functools.partial(die_with, os.getpid()))
        finally:
            log.close()
        self.processes.append(proc)
        return proc

    def _start(self, workers: int) -> None:
        address_file = self.directory / "scheduler.json"
        scheduler = self._spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                 "--no-dashboard", "--scheduler-file", str(address_file)], "scheduler")
        deadline = time.monotonic() + START_SECONDS
        while not self.address:
            self._alive(scheduler, "scheduler", deadline)
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.address = json.loads(address_file.read_text())["address"].removeprefix("tcp://")
            time.sleep(0.1)
        for n in range(workers):
            self._spawn(["distributed.cli.dask_worker", f"tcp://{self.address}", "--nworkers", "1", "--nthreads", "1",
                         "--memory-limit", WORKER_MEMORY, "--no-dashboard", "--name", f"worker-{n + 1}",
                         "--local-directory", str(self.directory / f"worker-{n + 1}")], f"worker-{n + 1}")
        from distributed import Client

        with Client(self.address, timeout=START_SECONDS, set_as_default=False) as client:
            while len(client.scheduler_info(n_workers=-1).get("workers", {})) < workers:
                for proc in self.processes:
                    self._alive(proc, "a worker", deadline)
                time.sleep(0.1)

    def _alive(self, proc: subprocess.Popen, what: str, deadline: float) -> None:
        if proc.poll() is not None:
            raise ClusterError(f"--dask: the local cluster's {what} exited with status {proc.returncode} as it "
                               f"started (its log: {self.directory})")
        if time.monotonic() > deadline:
            raise ClusterError(f"--dask: the local cluster did not start within {START_SECONDS} s (logs: "
                               f"{self.directory})")

    def stop(self) -> None:
        """Stop every process this started, workers first; wait for each."""
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()
