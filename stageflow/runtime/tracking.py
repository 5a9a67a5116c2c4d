"""Experiment tracking in MLflow, only when `MLFLOW_TRACKING_URI` says where.

Domino sets that variable for its MLflow-backed experiments (its Experiment Manager and model registry are
MLflow); elsewhere it is usually unset, and then nothing is imported or attempted (mlflow takes seconds to
import and training does not need it). Tracking mirrors the stage's outputs, which stay the record of the run:
if MLflow cannot be reached, the stage logs a warning and still succeeds, rather than throwing away a trained
model. What became of it (logged where, off, or failed and why) is returned as a small record, which train
keeps in its metrics and the runner's summary says in one line.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from stageflow.runtime.contract import one_line

log = logging.getLogger("stageflow")

DEFAULT_EXPERIMENT = "stageflow"
MAX_CLASS_METRICS = 100  # classes up to which each one's scores are MLflow metrics (metrics.json has them all)
REGISTERED_MODEL_ENV = "STAGEFLOW_REGISTERED_MODEL"  # register the logged model under this name, when set
# Set by Domino in every run: who owns the project, its name, who started the run.
DOMINO_NAMES = ("DOMINO_PROJECT_OWNER", "DOMINO_PROJECT_NAME", "DOMINO_STARTING_USERNAME")


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def off() -> dict:
    return {"status": "off", "reason": "MLFLOW_TRACKING_URI is not set"}


def shown_uri(uri: str) -> str:
    """A tracking URI fit to print: without a password or token it may carry (https://user:secret@host)."""
    parts = urlsplit(uri)
    if parts.password is None and not parts.username:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def log_inputs(sources: Sequence[Mapping[str, Any]]) -> None:
    """The run's sources as MLflow datasets (context `source`): each by its sha256 (MLflow keeps a digest of
    at most 36 characters, so the whole hash is a tag beside it), rows and format, as the loads recorded them."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    for source in sources:
        name = source.get("input", "source")
        # Where a load read its file is not in the lineage (the merged data must not depend on it): the
        # content's hash names the source, and the source is the stage that snapshot it.
        origin = CodeDatasetSource({"stageflow.snapshot": name, "sha256": source["sha256"]})
        dataset = MetaDataset(origin, name=name, digest=source["sha256"][:36])
        mlflow.log_input(dataset, context="source", tags={"sha256": source["sha256"], "rows": str(source["rows"]),
                                                          "format": str(source.get("format", ""))})


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
    """The model in MLflow's scikit-learn format, with its signature and an input example (`rows`: a few rows
    as {feature name: column}), so that Domino can register and serve it; registered under
    $STAGEFLOW_REGISTERED_MODEL when that is set. MLflow 3 saves it with skops, which refuses on loading any
    type not declared trusted: the model's own types are declared here, and MLflow records them with it. The
    requirements a server installs are given (scikit-learn and skops as installed here, which MLflow pins and
    completes with itself): inferring them costs MLflow a subprocess that loads the model, about 20 s."""
    import mlflow.sklearn
    import pandas
    import skops.io
    from mlflow.models import infer_signature

    example = pandas.DataFrame(rows)  # columns by feature name, as the model was given them
    registered = os.environ.get(REGISTERED_MODEL_ENV) or None
    info = mlflow.sklearn.log_model(
        model, name="model", signature=infer_signature(example, model.predict(example)), input_example=example,
        registered_model_name=registered, skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True))
    log.info("MLflow model %s%s", info.model_uri,
             f", registered as {registered} version {info.registered_model_version}" if registered else "")


def log_run(run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
            series: Mapping[str, Sequence[float]], artifacts: Mapping[str, Path],
            tags: Mapping[str, str] | None = None, model: Any = None, input_rows: Any = None,
            sources: Sequence[Mapping[str, Any]] = ()) -> dict:
    """Log one MLflow run; what became of it: {"status": "logged", "run_id", "experiment", "tracking_uri"},
    {"status": "off", "reason"} or {"status": "failed", "error", "tracking_uri"}.

    `series` are stepped metrics (step 1, 2, ... such as the loss per epoch); `artifacts` maps the file
    name shown in MLflow to the file (stage outputs have bare names such as `model`); `model`, a fitted
    scikit-learn estimator, is logged in MLflow's format with `input_rows` as its example (see log_model);
    `sources`, the lineage of the data (sha256, rows, format), as datasets (see log_inputs).
    """
    if not enabled():
        return off()
    uri = shown_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
    except ImportError:
        log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed here: not tracking this run")
        return {"status": "failed", "error": "mlflow is not installed in the train stage's environment",
                "tracking_uri": uri}
    found = {}
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
            log_inputs(sources)
            if model is not None:
                try:
                    log_model(model, input_rows)
                except Exception as err:  # noqa: BLE001 - the run keeps the files; say why the model is missing
                    found["warning"] = f"the model is not logged in MLflow's format: {one_line(err)}"
                    log.warning("MLflow could not log the model in its scikit-learn format (the run has the model "
                                "file): %s", one_line(err))
        log.info("tracked in MLflow: experiment %s, run %s", run.info.experiment_id, run.info.run_id)
        return {"status": "logged", "run_id": run.info.run_id, "experiment": experiment_name(),
                "experiment_id": run.info.experiment_id, "tracking_uri": uri, **found}
    except Exception as err:  # noqa: BLE001 - tracking is a mirror; its failure must not fail training
        log.warning("MLflow tracking failed, outputs are unaffected: %s", one_line(err))
        return {"status": "failed", "error": one_line(err), "tracking_uri": uri}
