"""A flow shaped like Domino's public "AI Training Flow" template (dominopetter/Domino-Flows-Simple-Demo
mlops_flow.py; dominodatalab/domino-ai-flows): five Domino job tasks named as the template names them, each
running a script from /mnt/code/scripts on a Domino Standard Environment, CSV files between them, a constant
task input (num_estimators), Flow Artifacts for the merged data and the model, tiers Small, Medium, Large.

Written for stageflow's tests, not copied: run it with
    stageflow run --backend docker mlops_flow.py model_training --data_path_a /mnt/code/data/datasetA.csv \\
        --data_path_b /mnt/code/data/datasetB.csv
"""

from typing import NamedTuple, TypeVar

from flytekit import workflow
from flytekit.types.file import FlyteFile
from flytekitplugins.domino.artifact import DATA, MODEL, Artifact
from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task
from flytekitplugins.domino.task import DatasetSnapshot, DominoJobConfig, DominoJobTask, GitRef  # noqa: F401

environment_name = "6.0 Domino Standard Environment Py3.10 R4.4"
Csv = FlyteFile[TypeVar("csv")]
DataArtifact = Artifact("Merged Data", DATA)
ModelArtifact = Artifact("Random Forest Model", MODEL)
Results = NamedTuple("Results", model=ModelArtifact.File(name="model.pkl", type="pkl"), accuracy=float)


def job(name: str, script: str, tier: str) -> dict:
    return {"flyte_task_name": name, "command": f"python /mnt/code/scripts/{script}", "environment_name": environment_name,
            "hardware_tier_name": tier, "use_project_defaults_for_omitted": True, "cache": False, "cache_version": "1.0"}


@workflow
def model_training(data_path_a: str, data_path_b: str) -> Results:
    task1 = run_domino_job_task(**job("Load Data A", "load-data-A.py", "Small"),
                                inputs=[Input(name="data_path", type=str, value=data_path_a)],
                                output_specs=[Output(name="datasetA", type=Csv)])
    task2 = run_domino_job_task(**job("Load Data B", "load-data-B.py", "Small"),
                                inputs=[Input(name="data_path", type=str, value=data_path_b)],
                                output_specs=[Output(name="datasetB", type=Csv)])
    task3 = run_domino_job_task(**job("Merge Data", "merge-data.py", "Medium"),
                                inputs=[Input(name="datasetA", type=Csv, value=task1["datasetA"]),
                                        Input(name="datasetB", type=Csv, value=task2["datasetB"])],
                                output_specs=[Output(name="merged_data",
                                                     type=DataArtifact.File(name="merged_data.csv", type="csv"))])
    task4 = run_domino_job_task(**job("Process Data", "process-data.py", "Medium"),
                                inputs=[Input(name="merged_data", type=Csv, value=task3["merged_data"])],
                                output_specs=[Output(name="processed_data", type=Csv)])
    task5 = run_domino_job_task(**job("Train Model", "train-model.py", "Large"),
                                inputs=[Input(name="processed_data", type=Csv, value=task4["processed_data"]),
                                        Input(name="num_estimators", type=int, value=100)],
                                output_specs=[Output(name="model", type=ModelArtifact.File(name="model.pkl", type="pkl")),
                                              Output(name="accuracy", type=float)])
    return Results(model=task5["model"], accuracy=task5["accuracy"])
