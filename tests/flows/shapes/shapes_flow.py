"""A flow of the shapes public Domino flows use beyond the template: a FlyteDirectory passed between tasks
(pocheung1/flows flyte_directory_data_workflow.py), one task called three times side by side and the results
combined (fan-out and fan-in), primitive inputs and outputs of every kind copilot moves (str, int, float,
bool, datetime, timedelta; dominodatalab/train-flyte-consolidated-examples inputs_rare_workflow.py), and a
dataset snapshot the first task reads under /mnt/data (pocheung1/flows dataset_workflow.py).

Written for stageflow's tests: stageflow run --backend docker --dataset readings=DIR shapes_flow.py shapes
"""

from datetime import datetime, timedelta, timezone
from typing import NamedTuple, TypeVar

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task
from flytekitplugins.domino.task import DatasetSnapshot

ENVIRONMENT = "Domino Standard Environment Py3.10 R4.4"
Csv = FlyteFile[TypeVar("csv")]
Summary = NamedTuple("Summary", report=Csv, parts=FlyteDirectory, total=int, mean=float, passed=bool, label=str,
                     finished=datetime, window=timedelta)


def job(name: str, script: str, **more) -> dict:
    return {"flyte_task_name": name, "command": f"python /mnt/code/scripts/{script}", "environment_name": ENVIRONMENT,
            "hardware_tier_name": "Small", "use_project_defaults_for_omitted": True, **more}


@workflow
def shapes(pieces: int = 3, threshold: float = 0.5, label: str = "weekly", strict: bool = False,
           since: datetime = datetime(2024, 5, 10, tzinfo=timezone.utc),
           window: timedelta = timedelta(hours=72, minutes=10)) -> Summary:
    split = run_domino_job_task(**job("Split Readings", "split.py", dataset_snapshots=[DatasetSnapshot(Name="readings",
                                                                                                  Version=2)]),
                                inputs=[Input(name="pieces", type=int, value=pieces)],
                                output_specs=[Output(name="parts", type=FlyteDirectory), Output(name="rows", type=int)])
    scores = [run_domino_job_task(**job("Score Part", "score.py"),
                                  inputs=[Input(name="parts", type=FlyteDirectory, value=split["parts"]),
                                          Input(name="index", type=int, value=index),
                                          Input(name="threshold", type=float, value=threshold),
                                          Input(name="strict", type=bool, value=strict)],
                                  output_specs=[Output(name="score", type=float), Output(name="passed", type=bool)])
              for index in range(3)]
    combine = run_domino_job_task(
        **job("Combine Scores", "combine.py"),
        inputs=[*(Input(name=f"score{i}", type=float, value=s["score"]) for i, s in enumerate(scores)),
                *(Input(name=f"passed{i}", type=bool, value=s["passed"]) for i, s in enumerate(scores)),
                Input(name="rows", type=int, value=split["rows"]), Input(name="label", type=str, value=label),
                Input(name="since", type=datetime, value=since), Input(name="window", type=timedelta, value=window)],
        output_specs=[Output(name="report", type=Csv), Output(name="total", type=int), Output(name="mean", type=float),
                      Output(name="passed", type=bool), Output(name="label", type=str),
                      Output(name="finished", type=datetime), Output(name="window", type=timedelta)])
    return Summary(report=combine["report"], parts=split["parts"], total=combine["total"], mean=combine["mean"],
                   passed=combine["passed"], label=combine["label"], finished=combine["finished"],
                   window=combine["window"])
