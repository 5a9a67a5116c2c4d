import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "domino_standin"  # the recording stand-in of Domino's plugin


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


@pytest.fixture
def standin(monkeypatch):
    """The recording plugin, importable as flytekitplugins.domino.helpers for this test only."""
    for name in [m for m in sys.modules if m.split(".")[0] == "flytekitplugins"]:
        monkeypatch.delitem(sys.modules, name)  # a real plugin, if loaded, comes back after the test
    monkeypatch.syspath_prepend(str(STANDIN))
    helpers = importlib.import_module("flytekitplugins.domino.helpers")
    helpers.CALLS.clear()
    yield helpers
    for name in [m for m in sys.modules if m.split(".")[0] == "flytekitplugins"]:
        del sys.modules[name]
