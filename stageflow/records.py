"""run.json: what a run did, written by the runner and read back by `stageflow report`, compose-stage and gc.

Typed both ways: the runner fills a RunRecord; a reader gets one back from `read`, which checks the shape of
what it finds (a tampered or truncated run.json is refused in one line naming the file and the field, never a
traceback), and which keeps nothing that would make a reader open a file outside the run directory: a log or
an output is found by its place in the run directory, never by a path the record gives.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stageflow import files
from stageflow.rundir import RunError, os_error, write_atomic
from stageflow.runtime import contract

STATUSES = ("pending", "running", "succeeded", "failed", "skipped")


@dataclass
class StageResult:
    status: str = "pending"  # pending, running, succeeded, failed, skipped
    seconds: float = 0.0
    inputs: dict[str, str] = field(default_factory=dict)  # sha256 of each input
    outputs: dict[str, str] = field(default_factory=dict)  # sha256 of each output
    values: dict[str, Any] = field(default_factory=dict)  # each primitive output's value, typed
    exit_code: int | None = None
    error: str | None = None
    log: str | None = None
    peak_rss_mb: float | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    cached: bool = False
    task: str = ""  # the Domino task name (flyte_task_name)
    folder: str = ""  # its folder in the run directory, and its log's name in logs/
    environment: str | None = None
    image: str | None = None
    upstream: list[str] = field(default_factory=list)  # the nodes whose outputs it takes: the DAG's edges
    formats: dict[str, str] = field(default_factory=dict)  # file output -> the format it declares (parquet, json)


def json_value(value: Any) -> Any:
    """A primitive as run.json keeps it: an int stays an int, a float a float (NaN and infinities, which JSON
    lacks, as copilot writes them), a time as copilot's text."""
    if isinstance(value, float) and not math.isfinite(value):
        return contract.format_value(value)
    if isinstance(value, (dt.datetime, dt.timedelta)):
        return contract.format_value(value)
    return value


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """What a run did, as run.json tells it: each node's result, then the flow's outputs."""

    def __init__(self, flow: str, backend: str, params: dict[str, Any], stages: list[str]):
        self.flow, self.backend, self.params = flow, backend, params
        self.stages = {name: StageResult() for name in stages}
        self.outputs: dict[str, dict[str, Any]] = {}  # {"path", "sha256"} for a file or directory, {"value"}
        self.started_at = now()
        self.finished_at: str | None = None
        self.interrupted = False
        self.error: str | None = None  # what failed the run itself, outside any stage

    @property
    def succeeded(self) -> bool:
        return self.error is None and all(result.status == "succeeded" for result in self.stages.values())

    @property
    def status(self) -> str:
        if self.finished_at is None:
            return "running"
        return "interrupted" if self.interrupted else ("succeeded" if self.succeeded else "failed")

    def as_json(self) -> dict:
        return {
            "flow": self.flow,
            "backend": self.backend,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "params": {k: contract.format_value(v) if not isinstance(v, Path) else str(v) for k, v in self.params.items()},
            "stages": {name: {**vars(result), "values": {k: json_value(v) for k, v in result.values.items()}}
                       for name, result in self.stages.items()},
            "outputs": self.outputs if self.succeeded else {},
            **({"error": self.error} if self.error else {}),
        }

    def write(self, path: Path) -> None:
        """Replace run.json whole. Where that fails (a full disk) the old one goes too: run.json may say
        nothing, but never describe an earlier run as this one."""
        try:
            write_atomic(path, json.dumps(self.as_json(), indent=2) + "\n")
        except OSError as err:
            path.unlink(missing_ok=True)
            raise RunError(f"run record {path}: {os_error(err)}") from None


def read(run_dir: Path) -> dict:
    """run.json of `run_dir`, checked to have the shape the runner writes; one line naming what is wrong."""
    path = Path(run_dir) / "run.json"
    try:
        data = json.loads(files.read_bytes(path, "run record"))
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run directory (no run.json)") from None
    except OSError as err:
        raise RunError(f"run record {path}: {os_error(err)}") from None
    except ValueError as err:
        raise RunError(f"run record {path}: not JSON ({contract.one_line(err)})") from None
    problem = shape_problem(data)
    if problem:
        raise RunError(f"run record {path}: {problem}; it was not written by this runner, or was changed since")
    return data


def shape_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    for key in ("flow", "backend", "status", "started_at"):
        if not isinstance(data.get(key), str):
            return f"{key}: expected text"
    if data.get("finished_at") is not None and not isinstance(data["finished_at"], str):
        return "finished_at: expected text"
    for key in ("started_at", "finished_at"):
        if data.get(key) is not None:
            try:
                dt.datetime.fromisoformat(data[key])
            except ValueError:
                return f"{key}: not a time"
    for key in ("params", "stages", "outputs"):
        if not isinstance(data.get(key, {}), dict):
            return f"{key}: expected an object"
    if not all(isinstance(v, str) for v in data.get("params", {}).values()):
        return "params: expected text values"
    kinds = {f.name: f.type for f in fields(StageResult)}
    for name, stage in data.get("stages", {}).items():
        if not isinstance(stage, dict):
            return f"stages.{name}: expected an object"
        if stage.get("status") not in STATUSES:
            return f"stages.{name}.status: expected one of {', '.join(STATUSES)}"
        for key in ("seconds", "peak_rss_mb"):
            if stage.get(key) is not None and (not isinstance(stage[key], (int, float)) or isinstance(stage[key], bool)
                                                or not math.isfinite(stage[key]) or stage[key] < 0):
                return f"stages.{name}.{key}: expected a number of at least 0"
        for key in ("rows_in", "rows_out", "exit_code"):
            if stage.get(key) is not None and (not isinstance(stage[key], int) or isinstance(stage[key], bool)):
                return f"stages.{name}.{key}: expected a whole number"
        for key in ("error", "log", "task", "folder", "environment", "image"):
            if stage.get(key) is not None and not isinstance(stage[key], str):
                return f"stages.{name}.{key}: expected text"
        for key in ("inputs", "outputs"):
            if not isinstance(stage.get(key, {}), dict) or not all(isinstance(v, str) for v in stage.get(key, {}).values()):
                return f"stages.{name}.{key}: expected an object of sha256 texts"
        if not isinstance(stage.get("formats", {}), dict) or not all(
                isinstance(v, str) for v in stage.get("formats", {}).values()):
            return f"stages.{name}.formats: expected an object of format names"
        if not isinstance(stage.get("upstream", []), list) or not all(isinstance(u, str) and u in data["stages"]
                                                                     for u in stage.get("upstream", [])):
            return f"stages.{name}.upstream: expected a list of the run's stages"
        if "/" in (stage.get("folder") or "") or (stage.get("folder") or "").startswith("."):
            return f"stages.{name}.folder: not a folder name"
        unknown = set(stage) - set(kinds)
        if unknown:
            return f"stages.{name}: unknown field {sorted(unknown)[0]}"
    for name, output in data.get("outputs", {}).items():
        if not isinstance(output, dict) or not (isinstance(output.get("path"), str) or "value" in output):
            return f"outputs.{name}: expected an object with a path or a value"
    return None
