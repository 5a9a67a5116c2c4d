"""Recording stand-in for Domino's `flytekitplugins.domino.helpers` (the real one ships only in Domino's
environments). Only tests/test_domino.py puts this folder on sys.path, and only while it loads flow.py.

The signature is the documented one (Domino's "Define Flows" page and its published example flows), with no
**kwargs: a misspelt keyword in flow.py fails here as it would on Domino. Each call is recorded, then handed
to stageflow's own fallback so the workflow still compiles and the recorded promises can be traced.
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
                        dataset_snapshots: list | None = None, main_git_repo_ref: Any = None,
                        external_data_volumes: list | None = None, volume_size_gib: int | None = None,
                        dfs_repo_commit_id: str | None = None, cache: bool = False, cache_version: str | None = None,
                        use_project_defaults_for_omitted: bool = False) -> dict:
    from stageflow import domino

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
