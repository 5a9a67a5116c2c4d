"""Stand-in for Domino's `flytekitplugins.domino.artifact` (Flow Artifacts), recording each file declared.

Declared as in Domino's "Define Flow Artifacts" page: `Artifact(name=..., type=DATA|MODEL|REPORT)`, then
`.File(name="x.ext", type="ext")` as a task or workflow output type (explicit `type=` as in
dominodatalab/train-flyte-consolidated-examples workflows/artifacts_workflow.py). The file's Flyte type is the
fallback's (a FlyteFile of that format), so a flow compiles the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stageflow.domino import plugin

DATA, MODEL, REPORT = "DATA", "MODEL", "REPORT"
FILES: list[dict] = []  # every File(...) declared: artifact, kind, file name, type (None when left out)


@dataclass(frozen=True)
class Artifact:
    name: str
    type: str

    def File(self, name: str, type: str | None = None) -> Any:  # noqa: N802 - the plugin's spelling
        FILES.append({"artifact": self.name, "kind": self.type, "name": name, "type": type})
        return plugin.Artifact(self.name, self.type).File(name=name, type=type)
