"""Image scaffolding that needs no Docker: Dockerfiles, versions, docker-compose.yml, the Makefile."""

import re
import shutil
import subprocess
import sys

import pytest

from stageflow import stages
from stageflow.stages import STAGES

from conftest import ROOT


def test_each_stage_has_its_folder():
    for name in STAGES:
        for part in ("Dockerfile", "requirements.txt", "main.py"):
            assert (ROOT / "stages" / name / part).is_file(), f"stages/{name}/{part}"


def test_dockerfiles_differ_only_in_the_stage_name():
    """Five Dockerfiles are the interface Domino needs; this keeps them from drifting apart."""
    texts = {name: (ROOT / "stages" / name / "Dockerfile").read_text() for name in STAGES}
    normalised = {name: text.replace(name, "<stage>") for name, text in texts.items()}
    assert len(set(normalised.values())) == 1


@pytest.mark.parametrize("needle", [
    "ARG BASE_IMAGE=python:3.11-slim-bookworm", "ARG UID=12574", "USER ${UID}:${UID}", "PYTHONUNBUFFERED=1",
    "--no-index --find-links=/tmp/wheels", 'ENTRYPOINT ["python", "/opt/stageflow/stages/merge/main.py"]',
    "org.opencontainers.image.revision", "org.opencontainers.image.version", "org.opencontainers.image.source",
])
def test_dockerfile_follows_the_rules(needle):
    assert needle in (ROOT / "stages" / "merge" / "Dockerfile").read_text()


def test_requirements_are_pinned():
    for name in STAGES:
        for line in (ROOT / "stages" / name / "requirements.txt").read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", line), f"{name}: {line}"


def test_dockerignore_keeps_data_tests_runs_git_and_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("data", "tests", "runs", ".git", ".venv"):
        assert entry in ignored


@pytest.fixture
def tree_copy(tmp_path, monkeypatch):
    for part in ("stageflow", "stages"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    monkeypatch.setattr(stages, "ROOT", tmp_path)
    return tmp_path


def versions():
    return {name: stages.Stage(name, s.tier, s.description).version for name, s in STAGES.items()}


@pytest.mark.parametrize("edit, changed", [
    ("stages/load_a/main.py", {"load_a"}),
    ("stages/train/requirements.txt", {"train"}),
    ("stageflow/contract.py", set(STAGES)),
])
def test_version_changes_exactly_when_the_image_content_does(tree_copy, edit, changed):
    before = versions()
    assert versions() == before  # stable
    with open(tree_copy / edit, "a") as handle:
        handle.write("\n# changed\n")
    after = versions()
    assert {name for name in STAGES if after[name] != before[name]} == changed


def test_data_and_tests_do_not_change_versions(tree_copy):
    before = versions()
    (tree_copy / "tests").mkdir()
    (tree_copy / "tests" / "test_x.py").write_text("x = 1\n")
    (tree_copy / "stages" / "load_a" / "__pycache__").mkdir()
    (tree_copy / "stages" / "load_a" / "__pycache__" / "main.pyc").write_bytes(b"x")
    assert versions() == before


def test_compose_file_is_generated_from_the_registry():
    proc = subprocess.run([sys.executable, "-m", "stageflow", "compose-file", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_compose_file_hardens_every_service():
    import yaml

    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(spec["services"]) == set(STAGES)
    for name, service in spec["services"].items():
        assert service["network_mode"] == "none" and service["read_only"] is True
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]
        assert f"./.workflow/{name}/inputs:/workflow/inputs:ro" in service["volumes"]
        assert service["mem_limit"] == stages.TIERS[STAGES[name].tier].memory


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M)
    assert {"run", "test", "images", "push", "compose", "wheels", "base-image"} <= set(targets)
    for target in targets:
        assert re.search(rf"^  {target} +\S", out, re.M), target
