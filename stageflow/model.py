"""Loading a trained model safely: check its sha256 against the metrics before unpickling it.

Unpickling runs whatever code the file asks for, so a model file swapped or altered after training is
arbitrary code execution. The train stage records the model's hash in its metrics (and the runner in
run.json); a model that does not match is refused before a single byte of it is unpickled.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from stageflow.runtime.contract import sha256_file


class ModelError(Exception):
    """The model cannot be trusted or found; the message says which and why."""


def verify(model_path: Path, metrics_path: Path) -> str:
    """Return the model's sha256 if it matches the one recorded in `metrics_path`; raise otherwise."""
    model_path, metrics_path = Path(model_path), Path(metrics_path)
    try:
        expected = json.loads(metrics_path.read_text())["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"metrics {metrics_path}: no model_sha256 to check against ({err})") from None
    try:
        actual = sha256_file(model_path)
    except OSError as err:
        raise ModelError(f"model {model_path}: cannot be read ({err.strerror})") from None
    if actual != expected:
        raise ModelError(f"model {model_path}: sha256 {actual} does not match {expected} recorded in "
                         f"{metrics_path}; refusing to load it (unpickling an untrusted file runs code)")
    return actual


def load(model_path: Path, metrics_path: Path):
    """The scikit-learn pipeline in `model_path`, unpickled only after `verify` passed."""
    verify(model_path, metrics_path)
    with open(model_path, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - verified against the recorded hash just above
