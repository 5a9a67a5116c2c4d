"""The one place that names the stages: their scripts, Domino environments, hardware tiers and images.

flow.py, the local runner, the image build and docker-compose all read this, so a stage renamed or moved
to another tier changes everywhere at once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_CODE_DIR = "/opt/stageflow"  # where an image holds the package and the stage scripts
REGISTRY_ENV = "STAGEFLOW_REGISTRY"
DEFAULT_REGISTRY = "stageflow"


@dataclass(frozen=True)
class Tier:
    """A local stand-in for a Domino hardware tier, used to limit a stage's container."""
    cpus: float
    memory: str


# Domino's tiers are defined per deployment; these are the local limits the docker backend applies.
TIERS = {"Small": Tier(cpus=1, memory="2g"), "Medium": Tier(cpus=2, memory="4g"), "Large": Tier(cpus=2, memory="8g")}


@dataclass(frozen=True)
class Stage:
    name: str
    tier: str
    description: str
    # Domino's cache keys on input values. A load's input is a path whose file can change under the same
    # name, so a cached load would return a stale snapshot; downstream inputs are files, keyed by content.
    cache: bool = True

    @property
    def folder(self) -> Path:
        return ROOT / "stages" / self.name

    @property
    def script(self) -> str:
        return f"stages/{self.name}/main.py"

    @property
    def command(self) -> str:
        """What the Domino job runs: the script baked into the stage's own image."""
        return f"python {IMAGE_CODE_DIR}/{self.script}"

    @property
    def environment(self) -> str:
        return f"stageflow-{self.name.replace('_', '-')}"

    @cached_property
    def version(self) -> str:
        """Content hash of everything baked into the image: it changes exactly when a rebuild is due."""
        digest = hashlib.sha256()
        files = sorted(p for p in [*self.folder.rglob("*"), *(ROOT / "stageflow").rglob("*.py"),
                                   ROOT / "pyproject.toml"] if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:12]

    def image(self, registry: str | None = None) -> str:
        registry = registry or os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY)
        return f"{registry.rstrip('/')}/{self.name.replace('_', '-')}:{self.version}"


STAGES = {stage.name: stage for stage in (
    Stage("load_a", "Small", "Snapshot source A as typed Parquet", cache=False),
    Stage("load_b", "Small", "Snapshot source B as typed Parquet", cache=False),
    Stage("merge", "Medium", "Union of A and B keyed on Id"),
    Stage("process", "Medium", "Drop noise, invalid rows; normalise labels"),
    Stage("train", "Large", "Mini-batch training; model and metrics"),
)}
