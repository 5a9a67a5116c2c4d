"""Recording stand-in for Domino's `flytekitplugins.domino.helpers` (the real one ships only in Domino's
environments). Tests put this folder on sys.path (the `standin` fixture, or PYTHONPATH in the Domino rehearsal)
only while they load flow.py.

The signature takes every keyword seen in public Domino flows, and no **kwargs: a misspelt keyword in flow.py
fails here as it would on Domino. Where each was seen (repository, file):
  flyte_task_name, command, inputs, output_specs, environment_name, hardware_tier_name, cache, cache_version,
  use_project_defaults_for_omitted: dominodatalab/SCE_Flows_Training_Template flow_1.py (the first two also
      positionally in dominodatalab/train-flyte-consolidated-examples workflows/nested_workflow.py)
  environment_revision_id, dataset_snapshots, main_git_repo_ref, volume_size_gib, dfs_repo_commit_id,
  external_data_volumes: dominodatalab/SCE_Flows_Training_Template flow_1_prod.py (dataset_snapshots with
      DatasetSnapshot(...) also in pocheung1/flows dataset_workflow.py, external_data_volumes with
      ExternalDataVolume(...) in pocheung1/flows error_workflow.py)
  hardware_tier_id, use_latest_git_ref: Domino's scale-test flow generator flows/gen_scale_export_workflow.py
      (DOM-79203), which writes `hardware_tier_id="small-k8s"` and `use_latest_git_ref=True`
Each call is recorded, then handed to stageflow's own fallback so the workflow still compiles and the recorded
promises can be traced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CALLS: list[dict] = []


@dataclass(frozen=True)
class Input:
    name: str
    type: Any
    value: Any


@dataclass(frozen=True)
class Output:
    name: str
    type: Any


def run_domino_job_task(flyte_task_name: str, command: str, inputs: list[Input] | None = None,
                        output_specs: list[Output] | None = None, environment_name: str | None = None,
                        environment_revision_id: str | None = None, hardware_tier_name: str | None = None,
                        hardware_tier_id: str | None = None, dataset_snapshots: list | None = None,
                        main_git_repo_ref: Any = None, use_latest_git_ref: bool | None = None,
                        external_data_volumes: list | None = None, volume_size_gib: int | None = None,
                        dfs_repo_commit_id: str | None = None, cache: bool = False, cache_version: str | None = None,
                        use_project_defaults_for_omitted: bool = False) -> dict:
    from stageflow.domino import plugin as domino

    call = dict(locals())
    del call["domino"]
    CALLS.append(call)
    outputs = domino.run_domino_job_task(**{
        **call,
        "inputs": [domino.Input(i.name, i.type, i.value) for i in inputs or []],
        "output_specs": [domino.Output(o.name, o.type) for o in output_specs or []],
        "cache_version": cache_version or "",
    })
    call["outputs"] = outputs
    return outputs
