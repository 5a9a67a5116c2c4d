"""Stand-in for Domino's `flytekitplugins.domino.helpers`: run_domino_job_task, Input, Output.

Each call is recorded in CALLS (every keyword, defaults filled in) and handed to stageflow's own fallback,
whose signature takes the keywords public flows pass and no others: a misspelt keyword fails here as it would
on Domino. Where each keyword was seen (repository, file):
  flyte_task_name, command, inputs, output_specs, environment_name, hardware_tier_name, cache, cache_version,
  use_project_defaults_for_omitted: dominodatalab/SCE_Flows_Training_Template flow_1.py (the first two also
      positionally in dominodatalab/train-flyte-consolidated-examples workflows/nested_workflow.py)
  environment_revision_id, dataset_snapshots, main_git_repo_ref, volume_size_gib, dfs_repo_commit_id,
  external_data_volumes: dominodatalab/SCE_Flows_Training_Template flow_1_prod.py (dataset_snapshots with
      DatasetSnapshot(...) also in pocheung1/flows dataset_workflow.py, external_data_volumes with
      ExternalDataVolume(...) in pocheung1/flows error_workflow.py)
  hardware_tier_id, use_latest_git_ref: Domino's scale-test flow generator flows/gen_scale_export_workflow.py
      (DOM-79203), which writes `hardware_tier_id="small-k8s"` and `use_latest_git_ref=True`
"""

from __future__ import annotations

import functools
import inspect

from stageflow.domino import plugin
from stageflow.domino.plugin import Input, Output  # noqa: F401 - the plugin's names

CALLS: list[dict] = []


@functools.wraps(plugin.run_domino_job_task)  # the plugin's own signature, for whoever inspects it
def run_domino_job_task(*args, **kwargs) -> dict:
    bound = inspect.signature(plugin.run_domino_job_task).bind(*args, **kwargs)
    bound.apply_defaults()
    call = dict(bound.arguments)
    CALLS.append(call)
    call["outputs"] = plugin.run_domino_job_task(*args, **kwargs)
    return call["outputs"]
