"""A flow whose middle task fails, as pocheung1/flows error_workflow.py exercises Domino's error handling: the
failed task writes why to /workflow/outputs/_ERROR and exits non-zero; what depends on it is skipped, a task
beside it still runs.

Written for stageflow's tests: stageflow run --backend docker failing_flow.py checks --rows 5
"""

from typing import TypeVar

from flytekit import workflow
from flytekit.types.file import FlyteFile
from flytekitplugins.domino.helpers import Input, Output, run_domino_job_task

ENVIRONMENT = "Domino Standard Environment Py3.10 R4.4"
Csv = FlyteFile[TypeVar("csv")]


def job(name: str, command: str) -> dict:
    return {"flyte_task_name": name, "command": command, "environment_name": ENVIRONMENT, "hardware_tier_name": "Small"}


@workflow
def checks(rows: int) -> int:
    prepared = run_domino_job_task(**job("Prepare Rows", "python /mnt/code/scripts/prepare.py"),
                                   inputs=[Input(name="rows", type=int, value=rows)],
                                   output_specs=[Output(name="table", type=Csv)])
    validated = run_domino_job_task(**job("Validate Rows", "python /mnt/code/scripts/validate.py"),
                                    inputs=[Input(name="table", type=Csv, value=prepared["table"])],
                                    output_specs=[Output(name="valid", type=int)])
    run_domino_job_task(**job("Count Rows", "wc -l /workflow/inputs/table > /workflow/outputs/lines"),
                        inputs=[Input(name="table", type=Csv, value=prepared["table"])],
                        output_specs=[Output(name="lines", type=str)])
    published = run_domino_job_task(**job("Publish Rows", "cp /workflow/inputs/valid /workflow/outputs/published"),
                                    inputs=[Input(name="valid", type=int, value=validated["valid"])],
                                    output_specs=[Output(name="published", type=int)])
    return published["published"]
