"""Image scaffolding that needs no Docker: Dockerfiles, versions, docker-compose.yml, the Makefile."""

import re
import shutil
import subprocess
import sys

import pytest

from stageflow import jobs, registry
from stageflow.registry import STAGES
from stageflow.runtime import schema as schemas

from conftest import ROOT


def test_each_stage_folder_holds_its_dockerfile_and_script():
    for name in STAGES:
        for part in ("Dockerfile", "main.py"):
            assert (ROOT / "stages" / name / part).is_file(), f"stages/{name}/{part}"


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_dockerfile_adds_only_its_own_folder_to_the_runtime(name):
    """Everything stages share is in stages/Dockerfile; a stage's own Dockerfile names only its own files."""
    text = (ROOT / "stages" / name / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{RUNTIME_IMAGE\}$", text, re.M)
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", text, re.M)
    assert copied and all(src.startswith(f"stages/{name}/") or src == "wheels/" for src in copied), copied
    assert f'ENTRYPOINT ["python", "/opt/stageflow/stages/{name}/main.py"]' in text
    assert "useradd" not in text and "groupadd" not in text


@pytest.mark.parametrize("needle", [
    "ARG BASE_IMAGE=python:3.11-slim-bookworm", "ARG UID=12574", "USER ${UID}:${UID}", "PYTHONUNBUFFERED=1",
    "--no-index --find-links=/tmp/wheels", "COPY --chown=root:root stageflow/runtime/ /opt/stageflow/stageflow/runtime/",
])
def test_runtime_dockerfile_follows_the_rules(needle):
    assert needle in (ROOT / "stages" / "Dockerfile").read_text()


def test_dockerignore_keeps_data_tests_runs_git_and_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("data", "tests", "runs", ".git", ".venv"):
        assert entry in ignored


@pytest.fixture
def tree_copy(tmp_path, monkeypatch):
    """A copy of the checkout, with the registry reading versions (and the default schema) from it."""
    subprocess.run(f"git ls-files -z | xargs -0 cp --parents -t {tmp_path}", shell=True, cwd=ROOT, check=True)
    monkeypatch.setattr(registry, "ROOT", tmp_path)
    monkeypatch.setattr(schemas, "DEFAULT", tmp_path / "schema.toml")
    monkeypatch.delenv(schemas.ENV, raising=False)
    registry._runtime_version.cache_clear()
    yield tmp_path
    registry._runtime_version.cache_clear()


def versions():
    registry._runtime_version.cache_clear()
    return {name: registry.Stage(name, s.tier, s.description).version for name, s in STAGES.items()}


@pytest.mark.parametrize("edit, changed", [
    ("stages/load_a/main.py", {"load_a"}),
    ("stages/train/requirements.txt", {"train"}),
    ("stageflow/runtime/contract.py", set(STAGES)),
    ("stages/Dockerfile", set(STAGES)),
    ("stages/requirements.txt", set(STAGES)),
    ("stages/train/requirements.in", set()),  # the lock's source: the image installs the lock
    ("schema.toml", set(STAGES)),  # the active schema: the runtime image holds it
    ("examples/wine/schema.toml", set()),  # a schema not in use
])
def test_version_changes_exactly_when_the_image_content_does(tree_copy, edit, changed):
    before = versions()
    assert versions() == before  # stable
    with open(tree_copy / edit, "a") as handle:
        handle.write("\n# changed\n")
    after = versions()
    assert {name for name in STAGES if after[name] != before[name]} == changed


def test_host_side_edits_change_no_image_version(tree_copy):
    """The runner, CLI, docs, tests and scripts are not in any image: editing them must not rebuild one,
    nor make Domino's cache (keyed on the version) miss."""
    before = versions()
    host_files = [path for path in tree_copy.rglob("*") if path.is_file() and not path.is_relative_to(tree_copy / "stages")
                  and not path.is_relative_to(tree_copy / "stageflow" / "runtime")
                  and path not in (tree_copy / "stageflow" / "__init__.py", tree_copy / "schema.toml")]
    assert {"README.md", "Makefile", "flow.py", "stageflow/cli.py", "stageflow/runner.py", "tests/conftest.py",
            "scripts/bench.py", "pyproject.toml"} <= {path.relative_to(tree_copy).as_posix() for path in host_files}
    for path in host_files:
        with open(path, "a") as handle:
            handle.write("\n# changed\n")
    (tree_copy / "stages" / "load_a" / "__pycache__").mkdir()
    (tree_copy / "stages" / "load_a" / "__pycache__" / "main.pyc").write_bytes(b"x")
    assert versions() == before


def test_the_schema_counts_by_content_not_by_where_it_lies(tree_copy, monkeypatch):
    """Switching schema gives other images (and cache keys, and Domino environments); the same schema from
    another place gives the same ones, since the image holds the content, not the path."""
    iris = versions()
    (tree_copy / "elsewhere").mkdir()
    shutil.copy(tree_copy / "schema.toml", tree_copy / "elsewhere" / "schema.toml")
    monkeypatch.setenv(schemas.ENV, str(tree_copy / "elsewhere" / "schema.toml"))
    assert versions() == iris
    monkeypatch.setenv(schemas.ENV, str(tree_copy / "examples" / "wine" / "schema.toml"))
    wine = versions()
    assert all(wine[name] != iris[name] for name in STAGES)


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
        assert service["mem_limit"] == jobs.TIERS[STAGES[name].tier].memory


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M)
    assert {"run", "test", "images", "push", "compose", "wheels", "base-image"} <= set(targets)
    for target in targets:
        assert re.search(rf"^  {target} +\S", out, re.M), target
