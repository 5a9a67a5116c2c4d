"""Stand-in for Domino's `flytekitplugins.domino.artifact` (Flow Artifacts), recording each file declared.

Declared as in Domino's "Define Flow Artifacts" page: `Artifact(name=..., type=DATA|MODEL|REPORT)`, then
`.File(name="x.ext", type="ext")` as a task or workflow output type (explicit `type=` as in
dominodatalab/train-flyte-consolidated-examples workflows/artifacts_workflow.py). The file's Flyte type is the
fallback's (a FlyteFile of that format), so flow.py compiles the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DATA, MODEL, REPORT = "DATA", "MODEL", "REPORT"
FILES: list[dict] = []  # every File(...) declared: artifact, kind, file name, type (None when left out)


@dataclass(frozen=True)
class Artifact:
    name: str
    type: str

    def File(self, name: str, type: str | None = None) -> Any:  # noqa: N802 - the plugin's spelling
        from stageflow.domino import plugin as domino

        FILES.append({"artifact": self.name, "kind": self.type, "name": name, "type": type})
        return domino.Artifact(self.name, self.type).File(name=name, type=type)
