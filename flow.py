"""Domino Flows definition of the training flow: five stages, each a Domino job on its own environment.

Submit from a Domino workspace with
    pyflyte run --remote flow.py model_training --data_path_a PATH_A --data_path_b PATH_B
Run locally (no Domino) with `make run`, or `pyflyte run flow.py model_training ...` without --remote.
Environments, tiers and images come from the stage registry (stageflow/registry.py).
"""

from typing import NamedTuple, TypeVar

from flytekit import workflow
from flytekit.types.file import FlyteFile

try:  # Domino's plugin, present in Domino environments only
    from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task
except ImportError:
    from stageflow.domino import Input, Output, run_domino_job_task
try:  # Flow Artifacts, in the plugin versions that have them; without, the report is a plain FlyteFile
    from flytekitplugins.domino.artifact import REPORT, Artifact
except ImportError:
    from stageflow.domino import REPORT, Artifact
from stageflow.registry import stage as registered

Parquet = FlyteFile[TypeVar("parquet")]
Pickle = FlyteFile[TypeVar("pkl")]
Json = FlyteFile[TypeVar("json")]
Html = FlyteFile[TypeVar("html")]
ReportArtifact = Artifact(name="Training report", type=REPORT)

TrainingOutputs = NamedTuple("TrainingOutputs", model=Pickle, metrics=Json,
                             report=ReportArtifact.File(name="report.html"))


def job(name: str) -> dict:
    """The per-stage Domino job settings, all derived from the stage registry. What is left out (git ref,
    volume size, dataset snapshots) takes the project's defaults, as in the seed and Domino's examples."""
    stage = registered(name)
    return {"flyte_task_name": name, "command": stage.command, "environment_name": stage.environment,
            "hardware_tier_name": stage.tier, "cache": stage.cache, "cache_version": stage.version,
            "use_project_defaults_for_omitted": True}


@workflow
def model_training(data_path_a: str, data_path_b: str, epochs: int = 10, batch_size: int = 32) -> TrainingOutputs:
    load_a = run_domino_job_task(
        **job("load_a"),
        inputs=[Input(name="data_path", type=str, value=data_path_a)],
        output_specs=[Output(name="datasetA", type=Parquet)],
    )
    load_b = run_domino_job_task(
        **job("load_b"),
        inputs=[Input(name="data_path", type=str, value=data_path_b)],
        output_specs=[Output(name="datasetB", type=Parquet)],
    )
    merge = run_domino_job_task(
        **job("merge"),
        inputs=[Input(name="datasetA", type=Parquet, value=load_a["datasetA"]),
                Input(name="datasetB", type=Parquet, value=load_b["datasetB"])],
        output_specs=[Output(name="merged_data", type=Parquet)],
    )
    process = run_domino_job_task(
        **job("process"),
        inputs=[Input(name="merged_data", type=Parquet, value=merge["merged_data"])],
        output_specs=[Output(name="processed_data", type=Parquet)],
    )
    train = run_domino_job_task(
        **job("train"),
        inputs=[Input(name="processed_data", type=Parquet, value=process["processed_data"]),
                Input(name="epochs", type=int, value=epochs),
                Input(name="batch_size", type=int, value=batch_size)],
        output_specs=[Output(name="model", type=Pickle), Output(name="metrics", type=Json),
                      Output(name="report", type=Html)],
    )
    return TrainingOutputs(model=train["model"], metrics=train["metrics"], report=train["report"])
