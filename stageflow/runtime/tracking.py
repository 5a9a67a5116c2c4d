"""Experiment tracking in MLflow, only when `MLFLOW_TRACKING_URI` says where.

Domino sets that variable for its MLflow-backed experiments; elsewhere it is usually unset, and then nothing
is imported or attempted (mlflow takes seconds to import and training does not need it). Tracking mirrors
the stage's outputs, which stay the record of the run: if MLflow cannot be reached, the stage logs a warning
and still succeeds, rather than throwing away a trained model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from stageflow.runtime.contract import one_line

log = logging.getLogger("stageflow")

DEFAULT_EXPERIMENT = "stageflow"


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def log_run(run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
            series: Mapping[str, Sequence[float]], artifacts: Mapping[str, Path],
            tags: Mapping[str, str] | None = None) -> str | None:
    """Log one MLflow run and return its id; None when tracking is off or failed.

    `series` are stepped metrics (step 1, 2, ... such as the loss per epoch); `artifacts` maps the file
    name shown in MLflow to the file (stage outputs have bare names such as `model`).
    """
    if not enabled():
        return None
    try:
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
    except ImportError:
        log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed here: not tracking this run")
        return None
    try:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        now = int(time.time() * 1000)
        with mlflow.start_run(run_name=run_name) as run:
            points = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
            points += [Metric(key, float(value), now, step)
                       for key, values in series.items() for step, value in enumerate(values, 1)]
            mlflow.MlflowClient().log_batch(  # one request per 1000 points, not one per epoch
                run.info.run_id, metrics=points, params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
            with tempfile.TemporaryDirectory(prefix="mlflow-artifacts-") as tmp:
                for name, path in artifacts.items():
                    shutil.copyfile(path, Path(tmp) / name)
                mlflow.log_artifacts(tmp)
        log.info("tracked in MLflow: experiment %s, run %s", run.info.experiment_id, run.info.run_id)
        return run.info.run_id
    except Exception as err:  # noqa: BLE001 - tracking is a mirror; its failure must not fail training
        log.warning("MLflow tracking failed, outputs are unaffected: %s", one_line(err))
        return None
