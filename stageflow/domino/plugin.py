"""`run_domino_job_task`, `Input`, `Output`, `DatasetSnapshot`, `Artifact` and friends for machines without
Domino's flytekit plugin.

Domino ships `flytekitplugins.domino` inside its environments only (it is not on PyPI). flow.py imports the
real one when it is there and this one otherwise; a flow that imports the plugin by name gets this one through
the stand-in package beside this file (stageflow/domino/standin), put on the path only when the real plugin
is absent. Each call becomes a Flyte raw-container task following the same /workflow contract, so a flow
compiles, serialises (and can be registered on an open-source Flyte cluster) with plain flytekit, and carries
the Domino job it declares (`JobTask.job`) for the local runner. A local `pyflyte run FLOW.py WORKFLOW ...`
(no --remote) runs each task through the local runner instead of flytekit's own raw-container execution,
which drops primitive inputs and calls a failed container a success (see DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shlex
import sys
from collections import OrderedDict
from enum import Enum
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from flytekit import ContainerTask
from flytekit.core.base_task import TaskMetadata
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.node_creation import create_node
from flytekit.types.file import FlyteFile

from stageflow import registry
from stageflow.dag import Task
from stageflow.registry import STAGES
from stageflow.runtime import contract
from stageflow.runtime.contract import StageError

CALLS: dict[str, int] = {}  # how often each task ran in this pyflyte process
BACKEND_ENV = "STAGEFLOW_BACKEND"  # host or docker: force the backend of a local pyflyte run
RUN_DIR_ENV = "STAGEFLOW_RUN_DIR"  # where a local pyflyte run keeps its stages (default runs/pyflyte-<time>)


@dataclass(frozen=True)
class Input:
    name: str
    type: Any
    value: Any = None


@dataclass(frozen=True)
class Output:
    name: str
    type: Any


@dataclass(frozen=True)
class DatasetSnapshot:  # noqa: N815 - the plugin's field names (flytekitplugins.domino.task)
    """A dataset snapshot a Domino job mounts: locally, the folder `--dataset NAME=DIR` gives for it."""
    Name: str | None = None
    Version: int | None = None
    Id: str | None = None

    def __post_init__(self):
        if self.Version is not None and self.Version < 1:  # the plugin refuses version 0 (pocheung1/flows)
            raise ValueError("Dataset snapshot version must be greater than 0")
        if not (self.Name or self.Id):
            raise ValueError("Dataset missing id and name")


# Field names as public flows spell them: GitRef(Type=..., Value=...) in dominodatalab/SCE_Flows_Training_Template
# flow_1_prod.py, ExternalDataVolume(Name=...) in pocheung1/flows error_workflow.py; the last two are imported
# (and not used) by Domino's AI training template (dominopetter/Domino-Flows-Simple-Demo mlops_flow.py).
@dataclass(frozen=True)
class GitRef:  # noqa: N815
    Type: str
    Value: str | None = None


@dataclass(frozen=True)
class ExternalDataVolume:  # noqa: N815
    Name: str


@dataclass(frozen=True)
class EnvironmentRevisionSpecification:  # noqa: N815
    EnvironmentRevisionType: str | None = None
    EnvironmentRevisionId: str | None = None


class EnvironmentRevisionType:  # noqa: N801
    ActiveRevision, LatestRevision, SomeRevision = "ActiveRevision", "LatestRevision", "SomeRevision"


class ComputeClusterType(str, Enum):
    Dask, Spark, Ray, MPI = "Dask", "Spark", "Ray", "MPI"


# The shape of Domino's on-demand clusters on a task, from the plugin's public ancestor (python-domino's
# domino/flyte/task.py, 2024: ClusterProperties and DominoJobConfig, the config of a DominoJobTask) and the
# fields python-domino's job_start documents for compute_cluster_properties (README: clusterType, computeEnvironmentId,
# computeEnvironmentRevisionSpec, masterHardwareTierId "required unless clusterType is MPI", workerCount,
# workerHardwareTierId, workerStorage, maxWorkerCount). The worker tier is spelt as its JSON key and that
# file's reader spell it (WorkerHardwareTierId; its first dataclass had WorkerHardareTierId): docs/domino.md says
# what is unverified against the current plugin.
@dataclass(frozen=True)
class ClusterProperties:  # noqa: N815
    ClusterType: ComputeClusterType
    ComputeEnvironmentId: str
    WorkerHardwareTierId: str
    WorkerCount: int
    WorkerStorageGiB: float | None = None
    MaxWorkerCount: int | None = None
    ComputeEnvironmentRevisionSpec: Any = None
    MasterHardwareTierId: str | None = None
    ExtraConfigs: dict[str, str] | None = None

    def __post_init__(self):
        if self.ClusterType not in tuple(ComputeClusterType):
            raise ValueError(f"ClusterType {self.ClusterType!r}: expected one of "
                             f"{', '.join(t.value for t in ComputeClusterType)}")
        if not isinstance(self.WorkerCount, int) or self.WorkerCount < 1:
            raise ValueError(f"WorkerCount {self.WorkerCount!r}: expected a whole number of workers, at least 1")
        if self.MaxWorkerCount is not None and self.MaxWorkerCount < self.WorkerCount:
            raise ValueError(f"MaxWorkerCount {self.MaxWorkerCount} is below WorkerCount {self.WorkerCount}")
        if not self.MasterHardwareTierId and self.ClusterType != ComputeClusterType.MPI:
            raise ValueError(f"a {ComputeClusterType(self.ClusterType).value} cluster needs MasterHardwareTierId (the "
                             f"hardware tier of its scheduler or head)")
        if not self.ComputeEnvironmentId or not self.WorkerHardwareTierId:
            raise ValueError("a cluster needs ComputeEnvironmentId and WorkerHardwareTierId")


@dataclass(frozen=True)
class DominoJobConfig:  # noqa: N815 - the fields of the plugin's public ancestor (see ClusterProperties)
    Command: str | None = None
    ApiKey: str | None = None
    Title: str | None = None
    CommitId: str | None = None
    MainRepoGitRef: GitRef | None = None
    HardwareTierId: str | None = None
    EnvironmentId: str | None = None
    EnvironmentRevisionSpec: EnvironmentRevisionSpecification | None = None
    ComputeClusterProperties: ClusterProperties | None = None
    VolumeSizeGiB: float | None = None
    DatasetSnapshots: list | None = None
    ExternalVolumeMountIds: list | None = None


DATA, MODEL, REPORT = "data", "model", "report"  # Domino's three kinds of Flow Artifact


@dataclass(frozen=True)
class Artifact:
    """A Domino Flow Artifact, where the plugin lacks them: its files are plain FlyteFiles typed by extension,
    so the flow's interface is unchanged and only Domino's grouping of outputs into artifacts is lost."""
    name: str
    type: str

    def File(self, name: str, type: str | None = None) -> Any:  # noqa: N802 - the plugin's spelling
        extension = type or PurePosixPath(name).suffix.lstrip(".")
        return FlyteFile[TypeVar(extension)] if extension else FlyteFile


def cluster_features(cluster: ClusterProperties | None) -> tuple[str, ...]:
    """A cluster no local run starts: Dask is what `stageflow run --dask` gives; Spark, Ray and MPI exist only
    on Domino."""
    if cluster is None or ComputeClusterType(cluster.ClusterType) == ComputeClusterType.Dask:
        return ()
    return (f"asks for an on-demand {ComputeClusterType(cluster.ClusterType).value} cluster, which exists only on Domino "
            f"(a local run starts Dask clusters only: stageflow run --dask N)",)


def domino_job_task(name: str, domino_job_config: DominoJobConfig, use_latest: bool = False,
                    inputs: dict | None = None, outputs: dict | None = None, log_level: int = 20) -> "JobTask":
    """A task declared as Domino's templates declare one by hand (`DominoJobTask(name, DominoJobConfig(...),
    inputs=..., outputs=..., use_latest=True)`), as the raw-container task the local runner runs: the job its
    config declares. Its environment is named by id; a stage's recorded environment id (build/environments.json)
    is taken back to the stage's environment, whose image runs it here."""
    config = domino_job_config
    if not isinstance(config, DominoJobConfig):
        raise StageError(f"task {name}: DominoJobTask(...) takes a DominoJobConfig, not {type(config).__name__}")
    if not config.Command:
        raise StageError(f"task {name}: its DominoJobConfig has no Command")
    environment = environment_named(config.EnvironmentId)
    job = Task(name=name, command=config.Command, environment=environment, tier=config.HardwareTierId,
               datasets=tuple((getattr(s, "Name", None) or getattr(s, "Id", None), getattr(s, "Version", None))
                              for s in config.DatasetSnapshots or []),
               unsupported=unsupported_features(config.ExternalVolumeMountIds)
               + cluster_features(config.ComputeClusterProperties))
    stage = registry.by_task(name, config.Command, environment)
    domino = {"domino_job_config": config, "use_latest": use_latest, "log_level": log_level}
    return JobTask(job=job, domino=domino, name=name, image=task_image(stage, environment),
                   command=shlex.split(config.Command), inputs=OrderedDict(inputs or {}),
                   outputs=OrderedDict(outputs or {}), input_data_dir="/workflow/inputs",
                   output_data_dir="/workflow/outputs", metadata_format=ContainerTask.MetadataFormat.JSON)


DominoJobTask = domino_job_task  # the plugin's class name, which flows call


def environment_named(environment_id: str | None) -> str | None:
    """A stage environment's name for its recorded id; any other id as it is."""
    from stageflow.domino import environments

    try:
        recorded = environments.applied_environments(environments.read_record(environments.ENVIRONMENTS))
    except (OSError, ValueError, StageError):
        recorded = {}
    names = {entry.get("environment_id"): STAGES[stage].environment for stage, entry in recorded.items()
             if stage in STAGES}
    return names.get(environment_id, environment_id)


def task_image(stage, environment: str | None) -> str:
    return stage.image() if stage else f"domino-environment:{hashlib.sha256(str(environment).encode()).hexdigest()[:12]}"


def choose_backend(needs_containers: bool = False):
    """The docker backend when a daemon answers (and, for this project's stages, every stage image is built),
    else the host backend. Returns (backend, why). STAGEFLOW_BACKEND=host|docker forces one; a forced docker
    that cannot run is an error rather than a silent fallback, and so is a task that needs containers."""
    from stageflow.backends import backend_named
    from stageflow.rundir import RunError

    forced = os.environ.get(BACKEND_ENV, "").replace("process", "host")  # its name before 0.2
    if forced not in ("", "host", "docker"):
        raise RunError(f"{BACKEND_ENV}={forced}: expected host or docker")
    if forced == "host":
        return backend_named("host"), f"{BACKEND_ENV}=host"
    try:
        backend = backend_named("docker")
        if not needs_containers:
            for stage in STAGES.values():
                backend.image_id(stage.image(), f"stage {stage.name}")
        return backend, "Docker daemon reachable" + ("" if needs_containers else " and every stage image built")
    except StageError as err:
        if forced == "docker" or needs_containers:
            raise RunError(f"{BACKEND_ENV}=docker: {err}" if forced else str(err)) from None
        return backend_named("host"), f"no docker backend: {err}"


@functools.cache
def local_session(needs_containers: bool) -> tuple[Any, Path]:
    """One backend and one run directory for every task of a pyflyte process, chosen and said once."""
    from stageflow.rundir import new_run_dir

    backend, why = choose_backend(needs_containers)
    run_dir = Path(os.environ[RUN_DIR_ENV]).resolve() if os.environ.get(RUN_DIR_ENV) else new_run_dir("pyflyte-")
    print(f"stageflow: running each task with the {backend.name} backend ({why}); tasks in {run_dir}", flush=True)
    return backend, run_dir


def local_value(value: Any) -> Any:
    """A task input as flytekit hands it: a FlyteFile or FlyteDirectory becomes its local path; a str naming
    a file relative to the current directory becomes absolute, since the task runs elsewhere."""
    from flytekit.types.directory import FlyteDirectory

    if isinstance(value, FlyteFile):
        return Path(value.download())
    if isinstance(value, FlyteDirectory):
        return Path(value.download())
    if isinstance(value, str) and value and not os.path.isabs(value) and os.path.isfile(value):
        return os.path.abspath(value)
    return value


class JobTask(ContainerTask):
    """A Domino job task as a raw-container task: `job` is the Domino job it declares (stageflow.dag.Task),
    `domino` every keyword it was declared with."""

    def __init__(self, job: Task, domino: dict, **kwargs):
        super().__init__(**kwargs)
        self.job, self.domino = job, domino

    def local_execute(self, ctx, **kwargs):
        """Run the task every time, as `stageflow run` does: flytekit's local cache, keyed on the input
        values, would hand back an old snapshot of a source that changed at the same path."""
        declared = self._metadata
        self._metadata = dataclasses.replace(declared, cache=False)
        try:
            return super().local_execute(ctx, **kwargs)
        finally:
            self._metadata = declared

    def execute(self, **kwargs) -> Any:
        """Run this one task through the local runner (flytekit calls this with native values). What stops it
        is said here, in one line, and pyflyte stopped without its traceback: flytekit would print ~40 lines of
        its own frames around any exception raised from a task."""
        try:
            return self._execute(**kwargs)
        except StageError as err:
            print(f"error: {contract.one_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_status) from None

    def _execute(self, **kwargs) -> Any:
        from flytekit.types.directory import FlyteDirectory

        from stageflow import jobs
        from stageflow.dag import Dag, Node, contract_type, file_formats, normalise
        from stageflow.runner import Run

        iface = self.python_interface
        inputs = {name: (contract_type(kind, f"input {name} of task {self.name}"), None)
                  for name, kind in iface.inputs.items()}
        outputs = {name: contract_type(kind, f"output {name} of task {self.name}") for name, kind in iface.outputs.items()}
        node = Node(self.name, self.job, inputs, outputs, file_formats(iface.outputs))
        values = {name: normalise(f"input {name} of task {self.name}", kind, local_value(kwargs[name]))
                  for name, (kind, _) in inputs.items()}
        dag = Dag([node], {}, {}, {}, self.name).only(self.name, values)
        backend, run_dir = local_session(registry.by_task(self.name, self.job.command, self.job.environment) is None)
        setup = jobs.Setup().with_flow(Path.cwd() / "flow.py")
        CALLS[self.name] = CALLS.get(self.name, 0) + 1  # a task called twice runs twice, in folders of its own
        folder = dag.folders()[self.name] + (f"-{CALLS[self.name]}" if CALLS[self.name] > 1 else "")
        try:
            run = Run(dag, run_dir / folder, backend, {}, setup=setup)  # checks the task's inputs first
        except StageError as err:  # one line, as `stageflow run` says it, and not flytekit's traceback of it
            print(f"error: {contract.one_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_status) from None
        if not run.execute():
            print(contract.printable("\n\n".join(run.failures()) or f"task {self.name} was interrupted"),
                  file=sys.stderr, flush=True)
            raise SystemExit(130 if run.interrupted else 1)
        found = []
        for name, kind in outputs.items():
            output = run.record.outputs[name]
            found.append(FlyteFile(output["path"]) if kind is contract.File else
                         FlyteDirectory(output["path"]) if kind is contract.Directory else run.results[self.name].values[name])
        return found[0] if len(found) == 1 else tuple(found)


def unsupported_features(external_data_volumes: list | None) -> tuple[str, ...]:
    """What a task asks of Domino that no local run has (said before anything runs)."""
    found = []
    if external_data_volumes:
        names = ", ".join(str(getattr(v, "Name", v)) for v in external_data_volumes)
        found.append(f"mounts external data volumes ({names}), which exist only on Domino")
    return tuple(found)


def run_domino_job_task(flyte_task_name: str, command: str, inputs: list[Input] | None = None,
                        output_specs: list[Output] | None = None, environment_name: str | None = None,
                        environment_revision_id: str | None = None, hardware_tier_name: str | None = None,
                        hardware_tier_id: str | None = None, dataset_snapshots: list | None = None,
                        main_git_repo_ref: Any = None, use_latest_git_ref: bool | None = None,
                        external_data_volumes: list | None = None, volume_size_gib: int | None = None,
                        dfs_repo_commit_id: str | None = None, cache: bool = False, cache_version: str | None = None,
                        use_project_defaults_for_omitted: bool = False) -> dict:
    """Declare one Domino job task as a node and return its outputs by name, as Domino's helper does.

    The keywords are those public flows pass (tests' golden file lists where each was seen), and no more: a
    misspelt keyword fails here as it would on Domino."""
    domino = {key: value for key, value in locals().items() if key not in ("inputs", "output_specs")}
    inputs, output_specs = inputs or [], output_specs or []
    job = Task(name=flyte_task_name, command=command, environment=environment_name,
               tier=hardware_tier_name or hardware_tier_id, cache=bool(cache), cache_version=cache_version or "",
               datasets=tuple((getattr(s, "Name", None) or getattr(s, "Id", None), getattr(s, "Version", None))
                              for s in dataset_snapshots or []),
               unsupported=unsupported_features(external_data_volumes))
    stage = registry.by_task(flyte_task_name, command, environment_name)
    task = JobTask(
        job=job,
        domino=domino,
        name=flyte_task_name,
        image=task_image(stage, environment_name),
        command=shlex.split(command),
        inputs=OrderedDict((i.name, i.type) for i in inputs),
        outputs=OrderedDict((o.name, o.type) for o in output_specs),
        input_data_dir="/workflow/inputs",
        output_data_dir="/workflow/outputs",
        metadata_format=ContainerTask.MetadataFormat.JSON,
        metadata=TaskMetadata(cache=bool(cache), cache_version=cache_version or ""),  # Flyte caches as Domino does
    )
    result = create_node(task, **{i.name: i.value for i in inputs})
    if FlyteContextManager.current_context().compilation_state is not None:
        return result.outputs  # compiling a workflow: promises by name
    return dict(zip(task.python_interface.output_names, result))  # local run: values by name
