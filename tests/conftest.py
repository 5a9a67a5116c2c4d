import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_stage(name: str):
    """Import stages/<name>/main.py as a module; nothing runs at import time, so tests get the logic."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / name / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def wf_root(tmp_path, monkeypatch):
    """An empty fake /workflow tree, selected through WORKFLOW_ROOT as a stage would see it."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()
    monkeypatch.setenv("WORKFLOW_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never reuse (or fill) the developer's stage cache."""
    os.environ["STAGEFLOW_CACHE"] = str(tmp_path_factory.mktemp("stage-cache"))
