"""Stand-in for the parts of Domino's `flytekitplugins.domino.task` that flows pass to `run_domino_job_task`.
Field names as public flows spell them: DatasetSnapshot(Id=..., Name=..., Version=...) in testing-ddl/
domino-flows-playground dataset_workflow.py, GitRef(Type=..., Value=...) in dominodatalab/
SCE_Flows_Training_Template flow_1_prod.py, ExternalDataVolume(Name=...) in pocheung1/flows error_workflow.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSnapshot:  # noqa: N815 - the plugin's spelling
    Name: str | None = None
    Version: int | None = None
    Id: str | None = None

    def __post_init__(self):
        if self.Version is not None and self.Version < 1:  # the plugin refuses version 0 (pocheung1/flows)
            raise ValueError("Dataset snapshot version must be greater than 0")
        if not (self.Name or self.Id):
            raise ValueError("Dataset missing id and name")


@dataclass(frozen=True)
class GitRef:  # noqa: N815
    Type: str
    Value: str | None = None


@dataclass(frozen=True)
class ExternalDataVolume:  # noqa: N815
    Name: str
