"""A Domino rehearsal: docs/domino.md's steps, in order, as a user runs them, up to the exact
`pyflyte run --remote` command line and the task calls flow.py makes to Domino's plugin.

Outside Domino (a checkout on a machine with Docker): `make images push` to a local registry, then
`make environments` against the stand-in Domino (tests/domino_server.py) at its external URL with a personal
access token, then the commit and push of build/. In a workspace (a clone of the project's repository, Domino's
variables, the internal API URL, the API proxy, the plugin stand-in on the path, a recording `pyflyte` first on
PATH): `git pull && make submit ...`. Built images are reused; only the registry, the deployment and the two
checkouts are new, and all go when the test ends.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import domino_server
from stageflow.registry import STAGES

from conftest import ROOT, STANDIN, copy_project, fenced

DOCS = ROOT / "docs" / "domino.md"
REGISTRY, HOST, TOKEN = "registry.example.com/team/stageflow", "https://domino.example.com", "DOMINO_ACCESS_TOKEN=..."
STEPS = [  # (where, the command exactly as docs/domino.md shows it)
    ("outside", f"make images push REGISTRY={REGISTRY}"),
    ("outside", f"DOMINO_API_HOST={HOST} {TOKEN} make environments"),
    ("outside", 'git add build/pushed.json build/environments.json && git commit -m "Images and environments" && git push'),
    ("workspace", "git pull && make submit DATASET=iris:3 DATA_A=/mnt/data/iris/source_a.csv "
                  "DATA_B=/mnt/data/iris/source_b.jsonl"),
]


def shell_lines(page: Path) -> list[str]:
    """The commands of the guide's ```sh blocks, comments dropped, in order."""
    blocks = fenced(page, "sh")
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_guide_shows_the_rehearsed_steps_in_order():
    lines = shell_lines(DOCS)
    found = [lines.index(command) for _, command in STEPS]  # ValueError names a step the guide lacks
    assert found == sorted(found)


def checkout(dest):
    """The project as a user has it (conftest.copy_project), wheels hard-linked, the environment of this
    checkout."""
    copy_project(dest)
    (dest / "wheels").mkdir()
    for wheel in (ROOT / "wheels").glob("*.whl"):  # the images' wheelhouse, not the tests' (its folders)
        os.link(wheel, dest / "wheels" / wheel.name)
    (dest / ".venv").symlink_to(ROOT / ".venv")


def sh(command: str, cwd, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def places(tmp_path, registry):
    """The user's checkout outside Domino, the project's repository, and the workspace's clone of it."""
    installed = (ROOT / ".venv" / ".installed").stat().st_mtime
    if any((ROOT / name).stat().st_mtime > installed for name in ("requirements-dev.txt", "pyproject.toml")):
        pytest.fail(".venv is older than requirements-dev.txt: run `make venv` first")  # else make would reinstall it
    outside, origin, workspace = tmp_path / "outside", tmp_path / "origin.git", tmp_path / "workspace"
    outside.mkdir()
    checkout(outside)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO_", "STAGEFLOW_", "MLFLOW_"))}
    env.update(GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@example.invalid", GIT_COMMITTER_NAME="Ada",
               GIT_COMMITTER_EMAIL="ada@example.invalid", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    sh(f"git init -q && git add -A && git commit -qm project && git init -q --bare {origin} && "
       f"git remote add origin {origin} && git push -q -u origin HEAD", outside, env)
    sh(f"git clone -q {origin} {workspace}", tmp_path, env)  # the project's code, as the workspace has it
    try:
        yield outside, workspace, env
    finally:
        import docker

        from stageflow import images

        client = images.client()
        for stage in STAGES.values():  # the registry tags `make push` added; the images themselves stay
            try:
                client.images.remove(stage.image(f"{registry}/stageflow"))
            except docker.errors.ImageNotFound:
                pass


@pytest.mark.docker
def test_the_guide_on_a_rehearsal_domino(places, registry, tmp_path):
    outside, workspace, env = places
    real = {REGISTRY: f"{registry}/stageflow"}
    with domino_server.running() as domino:
        real.update({HOST: domino.host, TOKEN: f"DOMINO_ACCESS_TOKEN={domino_server.TOKEN}"})
        existing = domino.add_environment("stageflow-merge")  # made by hand before: gets a revision
        iris = domino.add_dataset("iris", ["active", "active", "active", "active"])

        def step(n):
            where, command = STEPS[n]
            for placeholder, value in real.items():
                command = command.replace(placeholder, value)
            return sh(command, outside if where == "outside" else workspace,
                      outside_env if where == "outside" else workspace_env)

        outside_env = {**env, "STAGEFLOW_BUILD_POLL": "0"}  # the stand-in's builds move on per read
        step(0)
        pushed = json.loads((outside / "build" / "pushed.json").read_text())
        assert set(pushed["images"]) == set(STAGES) and all("@sha256:" in i for i in pushed["images"].values())

        made = step(1).stdout
        assert re.search(r"^train +stageflow-train +revision 1: Building \(\d+ s\)$", made, re.M)
        assert f"merge    stageflow-merge      revision added: environment {existing['id']}" in made
        assert {r["listener"] for r in domino.requests} == {"host"}
        assert all(r["auth"] == {"Authorization": f"Bearer {domino_server.TOKEN}"} for r in domino.requests)
        step(2)

        bin_dir = tmp_path / "workspace-bin"
        bin_dir.mkdir()
        (bin_dir / "pyflyte").write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "fake_pyflyte.py"} "$@"\n')
        (bin_dir / "pyflyte").chmod(0o755)
        workspace_env = {**env, **domino_server.workspace(domino), "PYTHONPATH": str(STANDIN),
                         "PATH": os.pathsep.join([str(bin_dir), str(ROOT / ".venv" / "bin"), env["PATH"]]),
                         "FAKE_PYFLYTE_RECORD": str(tmp_path / "pyflyte.json")}
        del domino.requests[:]
        submitted = step(3)
        assert {r["listener"] for r in domino.requests} == {"proxy"} and not any(r["auth"] for r in domino.requests)

    assert f"submitting: STAGEFLOW_DATASET=iris:3 STAGEFLOW_DATASET_ID={iris['id']} {bin_dir / 'pyflyte'} run " \
           f"--remote flow.py model_training --data_path_a /mnt/data/iris/source_a.csv --data_path_b " \
           f"/mnt/data/iris/source_b.jsonl\n" in submitted.stdout
    record = json.loads((tmp_path / "pyflyte.json").read_text())
    assert record["argv"] == ["run", "--remote", "flow.py", "model_training", "--data_path_a",
                              "/mnt/data/iris/source_a.csv", "--data_path_b", "/mnt/data/iris/source_b.jsonl"]
    assert record["cwd"] == str(workspace) and record["plugin"].startswith(str(STANDIN))
    on_domino = {e["name"]: e for e in domino.environments.values()}
    calls = {call["flyte_task_name"]: call for call in record["calls"]}
    assert list(calls) == list(STAGES)
    for name, call in calls.items():
        stage, revision = STAGES[name], on_domino[STAGES[name].environment]["revisions"][-1]
        assert revision["image"] == pushed["images"][name] and domino.status(revision) == "Succeeded"
        assert (call["environment_name"], call["environment_revision_id"]) == (stage.environment, revision["id"])
        assert (call["hardware_tier_name"], call["cache_version"]) == (stage.tier, stage.version)
        reads_sources = name in ("load_a", "load_b")
        assert call["dataset_snapshots"] == ([{"Name": "iris", "Version": 3, "Id": iris["id"]}] if reads_sources
                                             else None)
    assert [(a["kind"], a["name"], a["type"]) for a in record["artifacts"]] == [("MODEL", "model.skops", "skops"),
                                                                               ("REPORT", "report.html", "html")]
