"""Stand-in for the parts of Domino's `flytekitplugins.domino.task` that flows import: DatasetSnapshot,
GitRef, ExternalDataVolume, EnvironmentRevisionSpecification, EnvironmentRevisionType, DominoJobConfig,
DominoJobTask, ClusterProperties and ComputeClusterType, with the field names public code spells (see
stageflow/domino/plugin.py). Each DominoJobTask built is recorded in TASKS (its name and config)."""

from stageflow.domino import plugin
from stageflow.domino.plugin import (  # noqa: F401 - the plugin's names
    ClusterProperties, ComputeClusterType, DatasetSnapshot, DominoJobConfig, EnvironmentRevisionSpecification,
    EnvironmentRevisionType, ExternalDataVolume, GitRef)

TASKS: list[dict] = []


def DominoJobTask(*args, **kwargs):  # noqa: N802 - the plugin's class name
    task = plugin.DominoJobTask(*args, **kwargs)
    TASKS.append({"name": task.name, **task.domino})
    return task
