"""The stages of this flow: the one place that names them, with their Domino settings and their images.

flow.py, the runner, the image build, docker-compose.yml, the tests and the bench all read STAGES, so a stage
added, renamed or moved to another tier changes everywhere at once. Adding a stage takes its folder
(stages/<name>/), its entry here and its call in flow.py.

Images, from what changes least to what changes most: a libraries image (stages/libraries.Dockerfile: Domino's
job user, the runtime's libraries and the stage's own if it has a requirements.txt), a runtime image on it
(stages/Dockerfile: the `stageflow.runtime` package), the stage image on that (its script). No image holds
the schema or a training setting: those reach a stage as task inputs (flow.py passes the schema's text), so
editing them never changes an image, and Domino's cache keys on them with the other inputs. Stages without libraries of their own share the first two; the shared libraries' layer is the same in
every libraries image, so it is stored once. An image's version is a hash of exactly what it holds, so an edit to
host-side code (the runner, the CLI, tests, docs) changes no version: nothing rebuilds, nothing is pushed again,
and neither the local cache nor Domino's (keyed on `cache_version`) misses.

Each stage names the inputs the runner checks before the first stage of a run starts (`checked`), by the rules
in stageflow/runtime/inputs.py, which the stage applies to them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from stageflow.runtime.contract import StageError
from stageflow.runtime.inputs import SETTINGS

PACKAGE = Path(__file__).resolve().parent


def is_project(folder: Path) -> bool:
    return (folder / "flow.py").is_file() and (folder / "stages").is_dir()


def project_root() -> Path:
    """The project the tool works on: the checkout holding flow.py, stages/ and schema.toml.

    Run from a checkout, or installed from one as editable, it is the folder above the package. Installed
    (`pip install .`), the package lives among the site's packages, so the project is the current directory or
    the nearest folder above it that holds flow.py and stages/; elsewhere, the current directory (a flow of
    your own runs from there, and a command about this project's flow names the file it misses)."""
    if is_project(PACKAGE.parent):
        return PACKAGE.parent
    try:
        here = Path.cwd()
    except OSError:  # a current directory since removed
        return PACKAGE.parent
    return next((folder for folder in (here, *here.parents) if is_project(folder)), here)


ROOT = project_root()
IMAGE_CODE_DIR = "/opt/stageflow"  # where an image holds the runtime package and the stage script
REGISTRY_ENV = "STAGEFLOW_REGISTRY"
DEFAULT_REGISTRY = "stageflow"
# What every libraries image is built from (its Dockerfile, the shared lock) and what a runtime image adds on it.
LIBRARIES_PARTS = ("stages/libraries.Dockerfile", "stages/requirements.txt")
RUNTIME_PARTS = ("stages/Dockerfile", "stageflow/__init__.py", "stageflow/runtime")


def content_hash(paths: list[Path], *salt: str) -> str:
    """A short hash of files (and directories, recursively) by path and content: an image version.

    A lock's source (requirements.in) is left out: the image installs the lock compiled from it."""
    digest = hashlib.sha256("\0".join(salt).encode() + b"\0")
    files = sorted(found for path in paths for found in ([path] if path.is_file() else path.rglob("*"))
                   if found.is_file() and "__pycache__" not in found.parts and found.suffix != ".in")
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def registry_prefix(registry: str | None = None) -> str:
    return (registry or os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY)).rstrip("/")


def libraries_version(requirements: Path | None = None) -> str:
    """Hash of a libraries image's files and of the pins of the lock of the stage's own libraries it installs,
    if any (by what they pin, not by the lock's comments, which name the file it was compiled from: stages
    whose locks pin the same share the image, as the cluster stages do)."""
    own_lock = requirements.read_text("utf-8", "replace") if requirements else ""
    pins = "\n".join(line.strip() for line in own_lock.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return content_hash([ROOT / part for part in LIBRARIES_PARTS], pins)


def libraries_image(registry: str | None = None, requirements: Path | None = None) -> str:
    return f"{registry_prefix(registry)}/libraries:{libraries_version(requirements)}"


def runtime_version(requirements: Path | None = None) -> str:
    """Hash of a runtime image's files and of the libraries image it starts from."""
    return _runtime_version(libraries_version(requirements))


@cache
def _runtime_version(libraries: str) -> str:
    return content_hash([ROOT / part for part in RUNTIME_PARTS], libraries)


def runtime_image(registry: str | None = None, requirements: Path | None = None) -> str:
    """The runtime image on the shared libraries and those of the lock `requirements` (none: shared only)."""
    return f"{registry_prefix(registry)}/runtime:{runtime_version(requirements)}"


@dataclass(frozen=True)
class Stage:
    name: str
    tier: str
    description: str
    # Domino's cache keys on input values. A load's input is a path whose file can change under the same
    # name, so a cached load would return a stale snapshot; downstream inputs are files, keyed by content.
    cache: bool = True
    # Does its work on a Dask cluster when its job has one: on Domino the task is given an on-demand cluster
    # (DASK below); locally `stageflow run --dask N` starts one (stageflow/dask_cluster.py).
    cluster: bool = False
    # Inputs the runner checks before the first stage runs, each by its rule in stageflow.runtime.inputs.
    checked: tuple[str, ...] = ("schema",)
    # The host backend starts its process early, while the stages before it run (backends.HostBackend.warm):
    # for a stage whose imports take longer than those stages do on small data (train's scikit-learn and skops,
    # 1.3 s). A data stage's imports (0.17 s) would only compete with the loads for the cores.
    early: bool = False

    @property
    def folder(self) -> Path:
        return ROOT / "stages" / self.name

    @property
    def script(self) -> str:
        return f"stages/{self.name}/main.py"

    def module(self):
        """The stage's main.py imported as a module (a stage runs nothing at import), for what uses its logic
        outside its own process: check-schema, the bench's fit, the tests."""
        spec = importlib.util.spec_from_file_location(f"stage_{self.name}", ROOT / self.script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # before it runs: a dataclass in it looks its module up
        spec.loader.exec_module(module)
        return module

    @property
    def requirements(self) -> Path | None:
        """The lock of the stage's own libraries (train's scikit-learn, MLflow...), if it has any: its libraries
        image installs them, below the runtime code."""
        path = self.folder / "requirements.txt"
        return path if path.is_file() else None

    def libraries_image(self, registry: str | None = None) -> str:
        return libraries_image(registry, self.requirements)

    def runtime_image(self, registry: str | None = None) -> str:
        """The image this stage's image starts FROM (its Dockerfile's RUNTIME_IMAGE)."""
        return runtime_image(registry, self.requirements)

    @property
    def command(self) -> str:
        """What the Domino job runs: the script baked into the stage's own image."""
        return f"python {IMAGE_CODE_DIR}/{self.script}"

    @property
    def environment(self) -> str:
        return f"stageflow-{self.name.replace('_', '-')}"

    @property
    def version(self) -> str:
        """Hash of what the image holds: its runtime image's version plus the stage's own folder."""
        return content_hash([self.folder], runtime_version(self.requirements))

    def image(self, registry: str | None = None) -> str:
        return f"{registry_prefix(registry)}/{self.name.replace('_', '-')}:{self.version}"


STAGES = {stage.name: stage for stage in (
    Stage("load_a", "Small", "Snapshot source A as typed Parquet", cache=False, cluster=True,
          checked=("schema", "data_path")),
    Stage("load_b", "Small", "Snapshot source B as typed Parquet", cache=False, cluster=True,
          checked=("schema", "data_path")),
    Stage("merge", "Medium", "Union of A and B on the schema's key", cluster=True),
    Stage("process", "Medium", "Drop noise, invalid rows; normalise labels", cluster=True),
    Stage("train", "Large", "Mini-batch training; model and metrics", checked=("schema", *SETTINGS), early=True),
)}


@dataclass(frozen=True)
class DaskCluster:
    """The on-demand Dask cluster a cluster stage's task asks Domino for (flow.py): its workers, their hardware
    tier and the scheduler's, and the environment they run, which must list Dask in its supportedClusters. The
    cluster runs the stage's own image, so its workers import the same runtime as the job (its environment
    revision is the one `make environments` records for it). Sized from docs/performance.md ("Past one
    machine"): each worker holds a partition (a row group) at a time, as a stage does on one machine."""
    workers: int = 2
    worker_tier: str = "Medium"
    scheduler_tier: str = "Small"
    environment: str = "stageflow-dask"
    worker_storage_gib: float | None = None  # Domino's default


DASK = DaskCluster()


def by_task(name: str, command: str, environment: str | None) -> Stage | None:
    """The stage a task runs, when it is one of this project's: its command and environment are the stage's."""
    return next((stage for stage in STAGES.values() if stage.command == command and stage.environment == environment),
                None)


class UnknownStage(StageError):
    """flow.py names a stage this registry does not define."""


def stage(name: str) -> Stage:
    """The stage called `name`, or an error that says where to add it."""
    try:
        return STAGES[name]
    except KeyError:
        raise UnknownStage(f"stage {name!r} is used in flow.py but not defined in stageflow/registry.py "
                           f"(defined: {', '.join(STAGES)}); add Stage({name!r}, tier, description) to STAGES "
                           f"and its folder stages/{name}/") from None
