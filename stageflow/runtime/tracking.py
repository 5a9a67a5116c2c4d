"""Experiment tracking in MLflow, only when `MLFLOW_TRACKING_URI` says where.

Domino sets that variable for its MLflow-backed experiments (its Experiment Manager and model registry are
MLflow); elsewhere it is usually unset, and then nothing is imported or attempted (mlflow takes seconds to
import and training does not need it). Tracking mirrors the stage's outputs, which stay the record of the run:
if MLflow cannot be reached, the stage logs a warning and still succeeds, rather than throwing away a trained
model.
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
REGISTERED_MODEL_ENV = "STAGEFLOW_REGISTERED_MODEL"  # register the logged model under this name, when set
# Set by Domino in every run: who owns the project, its name, who started the run.
DOMINO_NAMES = ("DOMINO_PROJECT_OWNER", "DOMINO_PROJECT_NAME", "DOMINO_STARTING_USERNAME")


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def experiment_name(env: Mapping[str, str] = os.environ) -> str:
    """MLFLOW_EXPERIMENT_NAME when set. On Domino experiment names are unique across the whole deployment, so
    a fixed default would mix (or be refused for) every user and project that runs this flow: there the
    default is one experiment per project and user, stageflow-<owner>-<project>-<user>. Elsewhere stageflow."""
    if env.get("MLFLOW_EXPERIMENT_NAME"):
        return env["MLFLOW_EXPERIMENT_NAME"]
    if env.get("DOMINO_PROJECT_NAME"):
        return "-".join([DEFAULT_EXPERIMENT, *(env[name] for name in DOMINO_NAMES if env.get(name))])
    return DEFAULT_EXPERIMENT


def log_model(model: Any, rows: Any) -> None:
    """The model in MLflow's scikit-learn format, with its signature and an input example (a few rows, with
    the feature names the model was given), so that Domino can register and serve it; registered under
    $STAGEFLOW_REGISTERED_MODEL when that is set. MLflow 3 saves it with skops, which refuses on loading any
    type not declared trusted: the model's own types are declared here, and MLflow records them with it. The
    requirements a server installs are given (scikit-learn and skops as installed here, which MLflow pins and
    completes with itself): inferring them costs MLflow a subprocess that loads the model, about 20 s."""
    import mlflow.sklearn
    import pandas
    import skops.io
    from mlflow.models import infer_signature

    names = getattr(model, "feature_names_in_", None)
    example = pandas.DataFrame(rows, columns=list(names)) if names is not None else rows
    registered = os.environ.get(REGISTERED_MODEL_ENV) or None
    info = mlflow.sklearn.log_model(
        model, name="model", signature=infer_signature(example, model.predict(example)), input_example=example,
        registered_model_name=registered, skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True))
    log.info("MLflow model %s%s", info.model_uri,
             f", registered as {registered} version {info.registered_model_version}" if registered else "")


def log_run(run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
            series: Mapping[str, Sequence[float]], artifacts: Mapping[str, Path],
            tags: Mapping[str, str] | None = None, model: Any = None, input_rows: Any = None) -> str | None:
    """Log one MLflow run and return its id; None when tracking is off or failed.

    `series` are stepped metrics (step 1, 2, ... such as the loss per epoch); `artifacts` maps the file
    name shown in MLflow to the file (stage outputs have bare names such as `model`); `model`, a fitted
    scikit-learn estimator, is logged in MLflow's format with `input_rows` as its example (see log_model).
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
        mlflow.set_experiment(experiment_name())
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
            if model is not None:
                try:
                    log_model(model, input_rows)
                except Exception as err:  # noqa: BLE001 - the run keeps the files; say why the model is missing
                    log.warning("MLflow could not log the model in its scikit-learn format (the run has model.pkl): %s",
                                one_line(err))
        log.info("tracked in MLflow: experiment %s, run %s", run.info.experiment_id, run.info.run_id)
        return run.info.run_id
    except Exception as err:  # noqa: BLE001 - tracking is a mirror; its failure must not fail training
        log.warning("MLflow tracking failed, outputs are unaffected: %s", one_line(err))
        return None
