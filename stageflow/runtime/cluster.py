"""The Dask cluster a stage's job may have: finding it, the storage its workers share with the job, running a
stage's work on it a partition at a time, and taking the partitions' rows back in order.

A job has a cluster when Domino gave it one (an on-demand Dask cluster: Domino sets DASK_SCHEDULER_SERVICE_HOST
and DASK_SCHEDULER_SERVICE_PORT in the job, as Domino's own Dask test scripts read them) or when the local runner
started one for the run (`stageflow run --dask N`, which sets the same two variables). Without them a stage runs
as it always has, on one machine.

The workers run beside the job, not inside it: they see neither its /workflow/inputs nor its /workflow/outputs.
What they do see is storage shared with the job (docs/performance.md, "Past one machine"): STAGEFLOW_SHARED_DIR
when set (the local runner sets it), else the project's own dataset, /mnt/data/<project> (unverified on Domino:
see the docs). So a cluster stage copies each input file there, its workers read their partitions from there
and write what they make there, each partition a Parquet file of its own (written under a temporary name and
renamed, so a task that a dead worker's retry runs again ends the same), and the job then writes the one output
file the contract declares from those parts, in order, through the same snapshot writer as the one-machine path.
So the output holds the same rows in the same order, and the same bytes: nothing downstream can tell.

The rows stay Arrow end to end. The partitions are a dask.dataframe (`dd.from_map`) whose rows are what each
partition reports (its part file, its counts): a pandas partition holding the data itself would convert every
value twice and lose the types the snapshots keep (integer keys with nulls, dictionary labels).

A partition whose rows the schema refuses reports it rather than raising: the stage then runs the one-machine
path, which names the first bad value exactly as it always has (where a value is first refused depends on how
the rows are batched, so only the same batching gives the same words). Errors cost that second pass; a run
that succeeds does not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from stageflow.runtime import schema as schemas
from stageflow.runtime.contract import StageError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("stageflow")

HOST_ENV, PORT_ENV = "DASK_SCHEDULER_SERVICE_HOST", "DASK_SCHEDULER_SERVICE_PORT"
SHARED_ENV = "STAGEFLOW_SHARED_DIR"
CONNECT_SECONDS = 60  # to reach the scheduler
WORKER_SECONDS = 600  # for a first worker to join it: an on-demand cluster's workers may start after the job
PARTS_PER_WORKER = 2  # partitions per worker at least, when the data has fewer row groups


def scheduler_address(environ=os.environ) -> str | None:
    """The scheduler the job was given, as host:port; None when it has none."""
    host, port = environ.get(HOST_ENV, "").strip(), environ.get(PORT_ENV, "").strip()
    if not host and not port:
        return None
    if not host or not port.isdigit():
        raise StageError(f"cluster: {HOST_ENV}={host!r} and {PORT_ENV}={port!r} do not name a scheduler; set both "
                         f"(host and port number) or neither")
    return f"{host.removeprefix('tcp://')}:{port}"


def shared_root(environ=os.environ) -> Path:
    """Where the job and its workers both see the same files."""
    if environ.get(SHARED_ENV):
        return Path(environ[SHARED_ENV])
    project = environ.get("DOMINO_PROJECT_NAME")
    if not project:
        raise StageError(f"cluster: no storage the workers share with the job; set {SHARED_ENV} to a directory "
                         f"that both see")
    return Path(environ.get("DOMINO_DATASETS_DIR", "/mnt/data")) / project


def keep_pandas_out(environ=os.environ) -> None:
    """In a data stage's own process (dataset.own_process), when its job has no cluster: pandas as absent.

    One machine's path is Arrow alone, but pyarrow imports pandas, where it is installed (every image has it:
    Dask needs it), the first time it is handed a Python value (a list to `pa.array`, a scalar to a compute
    function), only to ask whether that is a pandas object: 0.2-0.4 s, a third of a small stage's time
    (docs/performance.md). Answered "not installed", it asks no more. Never in a process that imports the
    stage's logic (a test's), where it would hide pandas from everything else; and not with a cluster, where
    Dask works on pandas frames."""
    if not (environ.get(HOST_ENV, "").strip() or environ.get(PORT_ENV, "").strip()) and "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())


class _NoPandas:
    """An import finder that answers "not installed" for pandas. (A None in sys.modules would not do: pyarrow's
    compiled import takes whatever sys.modules holds.)"""

    def find_spec(self, name: str, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of this stage's process: "
                                      f"stageflow.runtime.cluster.keep_pandas_out)", name=name)
        return None


class ClusterFailed(StageError):
    """The cluster could not do the work (a worker died too often, the scheduler went away): one line."""


@dataclass
class Cluster:
    client: Any
    shared: Path  # this stage's own folder in the shared storage, removed when the stage ends

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def share(self, path: Path, name: str) -> Path:
        """A copy of a job's file where the workers can read it (they cannot see /workflow)."""
        target = self.shared / "inputs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return target

    def part(self, name: str) -> Path:
        """Where a partition writes what it makes."""
        return self.shared / "parts" / f"{name}.parquet"

    def run(self, work: Callable, units: list, *args) -> list[dict]:
        """`work(unit, *args)` on the workers for every unit, as the partitions of a dask.dataframe; what each
        returns (a dict of plain values), in the units' order."""
        import cloudpickle
        import dask.dataframe as dd
        import pandas as pd

        # A stage's own main.py cannot be imported by the workers (nor the scheduler, which unpickles the graph):
        # its work travels by value, as bytes only a worker opens.
        module = sys.modules.get(work.__module__)
        if module is not None and module.__name__ != "__main__" and not module.__name__.startswith("stageflow."):
            cloudpickle.register_pickle_by_value(module)
        frame = dd.from_map(_partition, units,
                            args=(cloudpickle.dumps(work), str(self.shared), schemas.active(), args),
                            meta=pd.DataFrame({"report": pd.Series([], dtype=object)}), enforce_metadata=False)
        try:
            reports = frame.compute(scheduler=self.client)
        except StageError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the cluster raises ends the stage in one line
            raise ClusterFailed(cluster_failure(err)) from None
        return [json.loads(text) for text in reports["report"]]


def cluster_failure(err: BaseException) -> str:
    name = type(err).__name__
    if name == "KilledWorker":
        return (f"cluster: a partition's worker died each time it ran it ({' '.join(str(err).split())[:200]}); "
                f"give the workers more memory (a larger worker tier) or more workers")
    return f"cluster: the work could not finish ({name}: {' '.join(str(err).split())[:200]})"


def _partition(unit, work: bytes, shared: str, schema: schemas.Schema, args: tuple):
    """One partition, on a worker: the stage's work under the job's schema (the one its input `schema` gave the
    job, which travels with the work), its report as a one-row frame."""
    import cloudpickle
    import pandas as pd

    if not (Path(shared) / "parts").is_dir():  # the job made it; a worker on other storage would not see it
        raise ClusterFailed(f"cluster: a worker does not see the shared storage {shared}; the job and its workers "
                            f"must share it ({SHARED_ENV})")
    # Set for the worker process and left set: its threads may run other partitions at the same moment, all
    # of one run, whose stages share one schema. (Two runs with different schemas on one cluster would not.)
    schemas.use(schema)
    try:
        report = cloudpickle.loads(work)(unit, *args)
    except StageError:  # the rows are refused: the job names the problem on the one-machine path
        report = {"refused": True}
    return pd.DataFrame({"report": [json.dumps(report)]})


@contextlib.contextmanager
def attached() -> Iterator[Cluster | None]:
    """The job's cluster, connected, with a folder of its own in the shared storage (removed afterwards,
    however the stage ends); None when the job has none."""
    address = scheduler_address()
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise StageError(f"cluster: the job has a Dask scheduler ({address}) but this image has no dask.distributed; "
                         f"build the stage images again (`make images`)") from None
    root = shared_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        shared = Path(tempfile.mkdtemp(prefix=f".stageflow-{uuid.uuid4().hex[:8]}-", dir=root))
    except OSError as err:
        raise StageError(f"cluster: cannot use the shared storage {root} ({err.strerror})") from None
    client = None
    try:
        (shared / "parts").mkdir()
        try:
            client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
        except Exception as err:  # noqa: BLE001 - an unreachable scheduler is one line
            raise ClusterFailed(f"cluster: no scheduler answers at {address} within {CONNECT_SECONDS} s "
                                f"({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None
        try:
            client.wait_for_workers(1, timeout=WORKER_SECONDS)
        except Exception:  # noqa: BLE001 - (a TimeoutError)
            raise ClusterFailed(f"cluster: the scheduler at {address} has had no worker for {WORKER_SECONDS} s") from None
        cluster = Cluster(client, shared)
        log.info("on the Dask cluster at %s: %d worker(s), shared storage %s", address, cluster.workers, shared)
        yield cluster
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
        shutil.rmtree(shared, ignore_errors=True)


def slices(row_groups: list[int], workers: int) -> list[tuple[int, int, int]]:
    """(row group, first row, rows) units: a row group each, cut smaller when there are too few of them for
    every worker to have PARTS_PER_WORKER (small data: the partitions then read their row group whole)."""
    total = sum(row_groups)
    size = max(1, min(max(row_groups, default=1), -(-total // (PARTS_PER_WORKER * workers))))
    return [(group, start, min(size, rows - start)) for group, rows in enumerate(row_groups)
            for start in range(0, rows, size)]


def write_part(table: pa.Table, path: Path) -> None:
    """A partition's rows, written where the job will read them; under a temporary name first, so that a retry
    after a worker died mid-write replaces a whole file, never a prefix. The folder is the job's: a partition
    still running after its stage ended (killed, say) finds it gone and writes nothing."""
    import pyarrow.parquet as pq  # here, not above: the runner reads this module's names, and needs no pyarrow

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="none")
    os.replace(tmp, path)


def read_parts(paths: list[Path]) -> Iterator[pa.Table]:
    """The parts' rows in order, a row group at a time: the job holds one at a time."""
    import pyarrow.parquet as pq

    for path in paths:
        handle = pq.ParquetFile(path)
        for group in range(handle.num_row_groups):
            yield handle.read_row_group(group).replace_schema_metadata(None)
