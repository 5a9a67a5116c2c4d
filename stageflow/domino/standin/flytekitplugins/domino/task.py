"""Stand-in for the parts of Domino's `flytekitplugins.domino.task` that flows import: DatasetSnapshot,
GitRef, ExternalDataVolume, EnvironmentRevisionSpecification, EnvironmentRevisionType, DominoJobConfig and
DominoJobTask, with the field names public flows spell (see stageflow/domino/plugin.py)."""

from stageflow.domino.plugin import (  # noqa: F401 - the plugin's names
    DatasetSnapshot, DominoJobConfig, DominoJobTask, EnvironmentRevisionSpecification, EnvironmentRevisionType,
    ExternalDataVolume, GitRef)
