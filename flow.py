"""Domino Flows definition of the training flow: five stages, each a Domino job on its own environment.

Submit from a Domino workspace with `make submit` (docs/domino.md), which checks what a remote run needs first,
then runs `pyflyte run --remote flow.py model_training --data_path_a PATH_A --data_path_b PATH_B`.
Run locally (no Domino) with `make run`, or `pyflyte run flow.py model_training ...` without --remote.
Environments, tiers and images come from the stage registry (stageflow/registry.py); the environment revisions
from build/environments.json (`make environments`); the dataset snapshot from `make submit DATASET=...`.
Everything that changes from run to run is a task input, never part of an image: the training settings (flow
inputs, today's values as defaults) and the schema's text (a constant, read when this file is compiled).
"""

from typing import NamedTuple, TypeVar

from flytekit import workflow
from flytekit.types.file import FlyteFile

try:  # Domino's plugin, present in Domino environments only
    from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task
    from flytekitplugins.domino.task import DatasetSnapshot
except ImportError:
    from stageflow.domino.plugin import DatasetSnapshot, Input, Output, run_domino_job_task
try:  # Flow Artifacts, in the plugin versions that have them; without, model and report are plain FlyteFiles
    from flytekitplugins.domino.artifact import MODEL, REPORT, Artifact
except ImportError:
    from stageflow.domino.plugin import MODEL, REPORT, Artifact
from stageflow.domino import clusters
from stageflow.domino.environments import built_revisions
from stageflow.registry import stage as registered
from stageflow.domino.submit import pinned_dataset
from stageflow.runtime import schema as schemas

Parquet = FlyteFile[TypeVar("parquet")]
Skops = FlyteFile[TypeVar("skops")]
Json = FlyteFile[TypeVar("json")]
Html = FlyteFile[TypeVar("html")]
ModelArtifact = Artifact(name="Model", type=MODEL)
ReportArtifact = Artifact(name="Training report", type=REPORT)

# Each file's format is given, not inferred from its name: Domino's Flyte checks blob formats.
TrainingOutputs = NamedTuple("TrainingOutputs", model=ModelArtifact.File(name="model.skops", type="skops"),
                             metrics=Json, report=ReportArtifact.File(name="report.html", type="html"))

REVISIONS = built_revisions()  # per stage, the environment revision built from its image (none locally)
ENVIRONMENT_IDS = built_revisions(key="environment_id")  # and its environment's id
DATASET = pinned_dataset()  # the snapshot of the dataset holding the sources, named at `make submit`
# The data's schema (schema.toml, or $STAGEFLOW_SCHEMA), read and checked when the flow is compiled (by `pyflyte
# run --remote` at submission): its text is an input of every stage, so no image holds it, and Domino's cache,
# which keys on a task's inputs, tells one schema from another.
SCHEMA = schemas.text()


def job(name: str, reads_sources: bool = False) -> dict:
    """The per-stage Domino job settings: command, environment, hardware tier and cache from the stage
    registry; the environment's revision built from the stage's image, when recorded (by name only
    otherwise, e.g. locally); and for a stage that reads the sources, the dataset snapshot Domino must mount.
    What is left out (git ref, volume size) takes the project's defaults, as in Domino's examples."""
    stage = registered(name)
    settings = {"flyte_task_name": name, "command": stage.command, "environment_name": stage.environment,
                "hardware_tier_name": stage.tier, "cache": stage.cache, "cache_version": stage.version,
                "use_project_defaults_for_omitted": True}
    if name in REVISIONS:
        settings["environment_revision_id"] = REVISIONS[name]
    if reads_sources and DATASET:
        settings["dataset_snapshots"] = [DatasetSnapshot(**DATASET)]
    return settings


def stage_task(**call) -> dict:
    """A stage's run_domino_job_task call; for a cluster stage, with its on-demand Dask cluster when one is
    asked for (`make submit DASK=1`: stageflow/domino/clusters.py)."""
    return clusters.job_task(call, run_domino_job_task, ENVIRONMENT_IDS)


@workflow
def model_training(data_path_a: str, data_path_b: str, epochs: int = 10, batch_size: int = 32,
                   learning_rate: float = 0.05, hidden_layers: str = "16", seed: int = 42, test_fraction: float = 0.2,
                   early_stopping: int = 0) -> TrainingOutputs:
    schema = Input(name="schema", type=str, value=SCHEMA)
    load_a = stage_task(
        **job("load_a", reads_sources=True),
        inputs=[Input(name="data_path", type=str, value=data_path_a), schema],
        output_specs=[Output(name="datasetA", type=Parquet)],
    )
    load_b = stage_task(
        **job("load_b", reads_sources=True),
        inputs=[Input(name="data_path", type=str, value=data_path_b), schema],
        output_specs=[Output(name="datasetB", type=Parquet)],
    )
    merge = stage_task(
        **job("merge"),
        inputs=[Input(name="datasetA", type=Parquet, value=load_a["datasetA"]),
                Input(name="datasetB", type=Parquet, value=load_b["datasetB"]), schema],
        output_specs=[Output(name="merged_data", type=Parquet)],
    )
    process = stage_task(
        **job("process"),
        inputs=[Input(name="merged_data", type=Parquet, value=merge["merged_data"]), schema],
        output_specs=[Output(name="processed_data", type=Parquet)],
    )
    train = run_domino_job_task(
        **job("train"),
        inputs=[Input(name="processed_data", type=Parquet, value=process["processed_data"]),
                Input(name="epochs", type=int, value=epochs),
                Input(name="batch_size", type=int, value=batch_size),
                Input(name="learning_rate", type=float, value=learning_rate),
                Input(name="hidden_layers", type=str, value=hidden_layers),
                Input(name="seed", type=int, value=seed),
                Input(name="test_fraction", type=float, value=test_fraction),
                Input(name="early_stopping", type=int, value=early_stopping), schema],
        output_specs=[Output(name="model", type=Skops), Output(name="metrics", type=Json),
                      Output(name="report", type=Html)],
    )
    return TrainingOutputs(model=train["model"], metrics=train["metrics"], report=train["report"])
