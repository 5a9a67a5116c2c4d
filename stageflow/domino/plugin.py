"""`run_domino_job_task`, `Input`, `Output`, `DatasetSnapshot` and `Artifact` for machines without Domino's
flytekit plugin.

Domino ships `flytekitplugins.domino.helpers` inside its environments only (it is not on PyPI). flow.py
imports the real one when it is there and this one otherwise. Here each call becomes a Flyte raw-container
task on the stage's image, following the same /workflow contract, so flow.py compiles, serialises (and can
be registered on an open-source Flyte cluster) with plain flytekit; the Domino-only arguments are kept for
inspection. A local `pyflyte run flow.py model_training ...` (no --remote) runs each task through the local
runner instead of flytekit's own raw-container execution, which drops primitive inputs and calls a failed
container a success (see DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from flytekit import ContainerTask
from flytekit.core.base_task import TaskMetadata
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.node_creation import create_node
from flytekit.types.file import FlyteFile

from stageflow.runtime import contract
from stageflow import registry
from stageflow.registry import STAGES

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
    """A dataset snapshot a Domino job mounts; kept on the task for inspection, meaningless locally."""
    Name: str | None = None
    Version: int | None = None
    Id: str | None = None


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


class StageFailed(Exception):
    """A stage of a local pyflyte run failed: the message names it, its one-line error and its log tail."""


def choose_backend():
    """The docker backend when a daemon answers and every stage image is built, else the host backend.

    Returns (backend, why). STAGEFLOW_BACKEND=host|docker forces one; a forced docker that cannot run
    is an error rather than a silent fallback.
    """
    from stageflow.dag import Dag, Node
    from stageflow.backends import HostBackend
    from stageflow.runner import RunError

    forced = os.environ.get(BACKEND_ENV, "").replace("process", "host")  # its name before 0.2
    if forced not in ("", "host", "docker"):
        raise RunError(f"{BACKEND_ENV}={forced}: expected host or docker")
    if forced == "host":
        return HostBackend(), f"{BACKEND_ENV}=host"
    try:
        from stageflow import containers

        backend = containers.DockerBackend()
        backend.check(Dag([Node(stage, {}, {}) for stage in STAGES.values()], {}, {}, {}))
        return backend, "Docker daemon reachable and every stage image built"
    except (ImportError, RunError) as err:
        if forced == "docker":
            raise RunError(f"{BACKEND_ENV}=docker: {err}") from None
        return HostBackend(), f"no docker backend: {err}"


@functools.cache
def local_session() -> tuple[Any, Path]:
    """One backend and one run directory for every stage of a pyflyte process, chosen and said once."""
    from stageflow.cli import new_run_dir

    backend, why = choose_backend()
    run_dir = Path(os.environ[RUN_DIR_ENV]).resolve() if os.environ.get(RUN_DIR_ENV) else new_run_dir("pyflyte-")
    print(f"stageflow: running each stage with the {backend.name} backend ({why}); stages in {run_dir}", flush=True)
    return backend, run_dir


def local_value(value: Any) -> Any:
    """A task input as the runner takes it: a FlyteFile becomes its local file; a str naming a file relative
    to the current directory becomes absolute, since the stage runs elsewhere (another cwd, a container)."""
    if isinstance(value, FlyteFile):
        return Path(value.download())
    if isinstance(value, str) and value and not os.path.isabs(value) and os.path.isfile(value):
        return os.path.abspath(value)
    return value


class StageTask(ContainerTask):
    """A stage as a raw-container task; remembers the Domino job settings it was declared with."""

    def __init__(self, domino: dict, **kwargs):
        super().__init__(**kwargs)
        self.domino = domino

    def local_execute(self, ctx, **kwargs):
        """Run the stage every time, as `stageflow run` does: flytekit's local cache, keyed on the input
        values, would hand back an old snapshot of a source that changed at the same path."""
        declared = self._metadata
        self._metadata = dataclasses.replace(declared, cache=False)
        try:
            return super().local_execute(ctx, **kwargs)
        finally:
            self._metadata = declared

    def execute(self, **kwargs) -> Any:
        """Run this one stage through the local runner (flytekit calls this with native values)."""
        from stageflow.dag import Dag, Node, Source, contract_type, file_formats
        from stageflow.runner import Run

        backend, run_dir = local_session()
        iface = self.python_interface
        inputs = {name: (contract_type(kind), Source(value=local_value(kwargs[name])))
                  for name, kind in iface.inputs.items()}
        outputs = {name: contract_type(kind) for name, kind in iface.outputs.items()}
        dag = Dag([Node(registry.stage(self.name), inputs, outputs)], {}, {},
                  {name: Source(stage=self.name, output=name) for name in outputs}, self.name,
                  file_formats(iface.outputs))
        run = Run(dag, run_dir / self.name, backend, {})
        if not run.execute():
            raise StageFailed("\n\n".join(run.failures()) or f"stage {self.name} was interrupted")
        values = [FlyteFile(str(run.output_path(name))) if kind is contract.File
                  else contract.parse_value(run.output_path(name).read_text(), kind)
                  for name, kind in outputs.items()]
        return values[0] if len(values) == 1 else tuple(values)


def run_domino_job_task(flyte_task_name: str, command: str, inputs: list[Input] | None = None,
                        output_specs: list[Output] | None = None, environment_name: str | None = None,
                        environment_revision_id: str | None = None, hardware_tier_name: str | None = None,
                        dataset_snapshots: list | None = None, volume_size_gib: int | None = None,
                        cache: bool = False, cache_version: str = "",
                        use_project_defaults_for_omitted: bool = False, **kwargs: Any) -> dict:
    """Declare one stage as a task node and return its outputs by name, as Domino's helper does."""
    inputs, output_specs = inputs or [], output_specs or []
    stage = registry.stage(flyte_task_name)
    task = StageTask(
        domino={"command": command, "environment_name": environment_name,
                "environment_revision_id": environment_revision_id, "hardware_tier_name": hardware_tier_name,
                "dataset_snapshots": dataset_snapshots, "volume_size_gib": volume_size_gib, "cache": cache,
                "cache_version": cache_version, "use_project_defaults_for_omitted": use_project_defaults_for_omitted,
                **kwargs},
        name=flyte_task_name,
        image=stage.image(),
        command=shlex.split(command),
        inputs=OrderedDict((i.name, i.type) for i in inputs),
        outputs=OrderedDict((o.name, o.type) for o in output_specs),
        input_data_dir="/workflow/inputs",
        output_data_dir="/workflow/outputs",
        metadata_format=ContainerTask.MetadataFormat.JSON,
        metadata=TaskMetadata(cache=cache, cache_version=cache_version),  # Flyte caches as Domino does
    )
    result = create_node(task, **{i.name: i.value for i in inputs})
    if FlyteContextManager.current_context().compilation_state is not None:
        return result.outputs  # compiling a workflow: promises by name
    return dict(zip(task.python_interface.output_names, result))  # local run: values by name
