"""Loading a trained model safely: check its sha256 against the metrics, then rebuild it with skops.

The model is a skops file (stageflow/runtime/modelfile.py), which rebuilds only the types it trusts, so
loading it runs no code the file asks for. The sha256 check comes first all the same: the train stage records
the model's hash in its metrics (and the runner in run.json), and a model swapped or altered after training
is refused before it is read as a model at all, whatever it holds.

The file is read once, and the bytes that were hashed are the bytes loaded: hashing the file and then
opening it again would check one file and run another (a file replaced in between, or a FIFO that feeds
each reader something different). Only a regular file is read at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from stageflow.runtime import modelfile
from stageflow.runtime.contract import StageError, file_kind


class ModelError(StageError):
    """The model cannot be trusted or found; the message says which and why."""

    exit_status = 1


def read_regular(what: str, path: Path) -> bytes:
    """The whole of `path` (the model or the metrics: `what`), provided it is a regular file.

    The type is checked on the open file, so the path cannot change between the check and the read;
    O_NONBLOCK, so that opening a FIFO does not wait for a writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise ModelError(f"{what} {path}: cannot be read ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ModelError(f"{what} {path}: is {file_kind(mode)}, not a regular file; refusing to read it")
    with open(fd, "rb") as handle:
        try:
            return handle.read()
        except OSError as err:
            raise ModelError(f"{what} {path}: cannot be read ({err.strerror})") from None


def verified_bytes(model_path: Path, metrics_path: Path) -> tuple[bytes, str]:
    """The model's bytes and their sha256, if it matches the one recorded in `metrics_path`; raise otherwise."""
    model_path, metrics_path = Path(model_path), Path(metrics_path)
    metrics = read_regular("metrics", metrics_path)
    try:
        expected = json.loads(metrics)["model_sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"metrics {metrics_path}: no model_sha256 to check against ({err})") from None
    data = read_regular("model", model_path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelError(f"model {model_path}: sha256 {actual} does not match {expected} recorded in "
                         f"{metrics_path}; refusing to load it (it is not the model train wrote)")
    return data, actual


def verify(model_path: Path, metrics_path: Path) -> str:
    """Return the model's sha256 if it matches the one recorded in `metrics_path`; raise otherwise."""
    return verified_bytes(model_path, metrics_path)[1]


def load(model_path: Path, metrics_path: Path):
    """The scikit-learn pipeline in `model_path`, rebuilt by skops from the very bytes `verify` checked. It
    takes a table of exactly its feature columns, in the schema's order (`model.feature_names_in_`)."""
    data, _ = verified_bytes(model_path, metrics_path)
    try:
        return modelfile.loads(data)
    except StageError as err:
        raise ModelError(f"model {model_path}: {err}") from None
