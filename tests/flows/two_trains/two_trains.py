"""This project's stages wired another way: the train stage called twice on the same data, at 1 and at 30
epochs, and a task of another environment that reads both metrics. Each call must be its own node, with its
own inputs and outputs (a wrong result otherwise: both runs would be one). The stages are declared with the
registry's settings, as flow.py declares them.

Written for stageflow's tests: stageflow run --backend docker tests/flows/two_trains/two_trains.py compare ...
"""

from typing import TypeVar

from flytekit import workflow
from flytekit.types.file import FlyteFile
from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task

from stageflow.registry import stage
from stageflow.runtime import schema as schemas

Parquet, Json = FlyteFile[TypeVar("parquet")], FlyteFile[TypeVar("json")]
Skops, Html = FlyteFile[TypeVar("skops")], FlyteFile[TypeVar("html")]
SCHEMA = schemas.text()  # the data's description, an input of every stage as flow.py passes it


def schema() -> Input:
    return Input(name="schema", type=str, value=SCHEMA)


def job(name: str) -> dict:
    found = stage(name)
    return {"flyte_task_name": name, "command": found.command, "environment_name": found.environment,
            "hardware_tier_name": found.tier}


def train(processed, epochs: int) -> dict:
    return run_domino_job_task(**job("train"),
                               inputs=[Input(name="processed_data", type=Parquet, value=processed),
                                       Input(name="epochs", type=int, value=epochs),
                                       Input(name="batch_size", type=int, value=16),
                                       Input(name="learning_rate", type=float, value=0.05),
                                       Input(name="hidden_layers", type=str, value="16"),
                                       Input(name="seed", type=int, value=42),
                                       Input(name="test_fraction", type=float, value=0.2),
                                       Input(name="early_stopping", type=int, value=0), schema()],
                               output_specs=[Output(name="model", type=Skops), Output(name="metrics", type=Json),
                                             Output(name="report", type=Html)])


@workflow
def compare(data_path_a: str, data_path_b: str) -> str:
    load_a = run_domino_job_task(**job("load_a"), inputs=[Input(name="data_path", type=str, value=data_path_a), schema()],
                                 output_specs=[Output(name="datasetA", type=Parquet)])
    load_b = run_domino_job_task(**job("load_b"), inputs=[Input(name="data_path", type=str, value=data_path_b), schema()],
                                 output_specs=[Output(name="datasetB", type=Parquet)])
    merge = run_domino_job_task(**job("merge"), inputs=[Input(name="datasetA", type=Parquet, value=load_a["datasetA"]),
                                                        Input(name="datasetB", type=Parquet, value=load_b["datasetB"]),
                                                        schema()],
                                output_specs=[Output(name="merged_data", type=Parquet)])
    process = run_domino_job_task(**job("process"),
                                  inputs=[Input(name="merged_data", type=Parquet, value=merge["merged_data"]), schema()],
                                  output_specs=[Output(name="processed_data", type=Parquet)])
    short, long = train(process["processed_data"], 1), train(process["processed_data"], 30)
    pick = run_domino_job_task(flyte_task_name="Pick Better", command="python3 /mnt/code/tests/flows/two_trains/pick.py",
                               environment_name="Domino Standard Environment Py3.10 R4.4", hardware_tier_name="Small",
                               inputs=[Input(name="first", type=Json, value=short["metrics"]),
                                       Input(name="second", type=Json, value=long["metrics"])],
                               output_specs=[Output(name="seen", type=str)])
    return pick["seen"]
