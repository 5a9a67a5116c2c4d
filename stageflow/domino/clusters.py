"""A cluster stage's task with its on-demand Dask cluster on Domino, for flow.py.

`run_domino_job_task` takes no cluster (none of the keywords public flows pass is one), so a task that has a
cluster is declared as the plugin's public code declares one: `DominoJobTask(name, DominoJobConfig(...,
ComputeClusterProperties=ClusterProperties(ClusterType=Dask, ...)), inputs=..., outputs=..., use_latest=True)`.
That shape comes from the plugin's public ancestor (docs/domino.md lists what is verified), so it is asked for:
with STAGEFLOW_DASK set (`make submit DASK=1`) the stages the registry marks get the registry's cluster (DASK);
without it every stage is the run_domino_job_task call it has always been.

The cluster runs the stage's own environment (its image holds the runtime and dask.distributed, and its
definition lists Dask in supportedClusters), pinned to the revision built from the stage's image; the job, the
workers and the scheduler get the hardware tiers of the registry, as ids (Domino's default tiers are
small-k8s, medium-k8s, large-k8s).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from stageflow import registry

ENV = "STAGEFLOW_DASK"


def wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def tier_id(tier: str) -> str:
    return tier if tier.endswith("-k8s") else f"{tier.lower()}-k8s"


def plugin_classes():
    try:  # Domino's plugin, where it is installed
        from flytekitplugins.domino import task
    except ImportError:
        from stageflow.domino import plugin as task
    return task


def job_task(call: dict, run_domino_job_task: Callable[..., dict], environment_ids: dict[str, str]) -> dict:
    """The task `call` (run_domino_job_task's keywords) declares, called: with the registry's Dask cluster when
    its stage is a cluster stage and one is asked for; its outputs by name."""
    stage = registry.stage(call["flyte_task_name"])
    if not (wanted() and stage.cluster):
        return run_domino_job_task(**call)
    task = plugin_classes()
    environment = environment_ids.get(stage.name, stage.environment)  # locally, before `make environments`
    revision = call.get("environment_revision_id")
    pinned = (task.EnvironmentRevisionSpecification(EnvironmentRevisionType=task.EnvironmentRevisionType.SomeRevision,
                                                    EnvironmentRevisionId=revision) if revision else None)
    cluster = task.ClusterProperties(
        ClusterType=task.ComputeClusterType.Dask, ComputeEnvironmentId=environment,
        ComputeEnvironmentRevisionSpec=pinned, WorkerCount=registry.DASK.workers,
        WorkerHardwareTierId=tier_id(registry.DASK.worker_tier), MasterHardwareTierId=tier_id(registry.DASK.scheduler_tier),
        WorkerStorageGiB=registry.DASK.worker_storage_gib)
    config = task.DominoJobConfig(Command=call["command"], EnvironmentId=environment, EnvironmentRevisionSpec=pinned,
                                  HardwareTierId=tier_id(call["hardware_tier_name"]), ComputeClusterProperties=cluster,
                                  DatasetSnapshots=call.get("dataset_snapshots"))
    inputs, outputs = call.get("inputs") or [], call.get("output_specs") or []
    declared = task.DominoJobTask(name=call["flyte_task_name"], domino_job_config=config, use_latest=True,
                                  inputs={i.name: i.type for i in inputs}, outputs={o.name: o.type for o in outputs})
    found: Any = declared(**{i.name: i.value for i in inputs})
    if len(outputs) == 1:
        return {outputs[0].name: found}
    return {o.name: getattr(found, o.name) for o in outputs}
