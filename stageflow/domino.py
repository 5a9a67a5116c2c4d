"""`run_domino_job_task`, `Input`, `Output` and `Artifact` for machines without Domino's flytekit plugin.

Domino ships `flytekitplugins.domino.helpers` inside its environments only (it is not on PyPI). flow.py
imports the real one when it is there and this one otherwise. Here each call becomes a Flyte raw-container
task on the stage's image, following the same /workflow contract, so flow.py compiles, serialises and runs
with plain flytekit; the Domino-only arguments are accepted and kept for inspection.
"""

from __future__ import annotations

import shlex
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from flytekit import ContainerTask
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.node_creation import create_node
from flytekit.types.file import FlyteFile

from stageflow.stages import STAGES


@dataclass(frozen=True)
class Input:
    name: str
    type: Any
    value: Any = None


@dataclass(frozen=True)
class Output:
    name: str
    type: Any


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


class StageTask(ContainerTask):
    """A stage as a raw-container task; remembers the Domino job settings it was declared with."""

    def __init__(self, domino: dict, **kwargs):
        super().__init__(**kwargs)
        self.domino = domino


def run_domino_job_task(flyte_task_name: str, command: str, inputs: list[Input] | None = None,
                        output_specs: list[Output] | None = None, environment_name: str | None = None,
                        environment_revision_id: str | None = None, hardware_tier_name: str | None = None,
                        dataset_snapshots: list | None = None, volume_size_gib: int | None = None,
                        cache: bool = False, cache_version: str = "",
                        use_project_defaults_for_omitted: bool = False, **kwargs: Any) -> dict:
    """Declare one stage as a task node and return its outputs by name, as Domino's helper does."""
    inputs, output_specs = inputs or [], output_specs or []
    stage = STAGES[flyte_task_name]
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
    )
    result = create_node(task, **{i.name: i.value for i in inputs})
    if FlyteContextManager.current_context().compilation_state is not None:
        return result.outputs  # compiling a workflow: promises by name
    return dict(zip(task.python_interface.output_names, result))  # local run: values by name
