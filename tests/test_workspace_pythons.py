"""What a Domino workspace runs, on every Python a workspace may have (3.10 in Domino's standard environments,
up to 3.13): `stageflow environments`, then `make submit` up to the `pyflyte run --remote` line, and flow.py
compiled and serialised as pyflyte does before it registers. Each Python gets a venv holding only what a
workspace has (flytekit, from tests/locks/workspace.txt; Domino's plugin is the stand-in on PYTHONPATH), made
offline from the wheelhouse `make test-wheels` downloads (tests/wheelhouses.py) and reused across runs. None of
this project's dependencies are installed: the checkout's own `stageflow` package is imported from the working
directory, as in a workspace's /mnt/code.
"""

import json
import os
import subprocess

import pytest

import domino_server
import wheelhouses
from conftest import ROOT, STANDIN, copy_project
from test_environments import pushed_record


# flytekit 1.16.31 declares Requires-Python <3.13, and its pyflyte fails as it starts on 3.13 (no default
# image for it); no flytekit release supports 3.13 yet. stageflow's own commands run there all the same.
BEYOND_FLYTEKIT = ("3.13",)


def need(reason: str):
    """A missing Python or wheelhouse: a failure in CI (it must have them), a skip on a developer's machine."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project, with build/pushed.json for the current code, as `git pull` brings it."""
    dest = tmp_path_factory.mktemp("workspace")
    copy_project(dest)
    (dest / "build").mkdir(exist_ok=True)
    (dest / "build" / "pushed.json").write_text(json.dumps(pushed_record()))
    return dest


@pytest.fixture(params=wheelhouses.WORKSPACE.pythons)
def workspace_python(request):
    minor = request.param
    python = wheelhouses.interpreter(minor)
    if python is None:
        need(f"no Python {minor} on this machine (pyenv install {minor})")
    if wheelhouses.missing(wheelhouses.WORKSPACE, minor):
        need(f"wheelhouse {wheelhouses.WORKSPACE.folder} lacks Python {minor}'s wheels: run `make test-wheels`")
    return minor, wheelhouses.venv(wheelhouses.WORKSPACE, python) / "bin" / "python"


def run(argv, cwd, env):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_a_workspace_python_makes_environments_and_submits(project, workspace_python, tmp_path):
    minor, workspace_python = workspace_python
    (project / "build" / "environments.json").unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO_", "STAGEFLOW_", "MLFLOW_", "PYTHON"))}
    base.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    bin_dir = tmp_path / "bin"  # the workspace's pyflyte, recording instead of registering
    bin_dir.mkdir()
    (bin_dir / "pyflyte").write_text(f'#!/bin/sh\nexec {workspace_python} {ROOT / "tests" / "fake_pyflyte.py"} "$@"\n')
    (bin_dir / "pyflyte").chmod(0o755)
    with domino_server.running() as domino:
        iris = domino.add_dataset("iris", ["active", "active", "active"])
        made = run([str(workspace_python), "-m", "stageflow", "environments"], project,
                   {**base, "DOMINO_API_HOST": domino.host, "DOMINO_ACCESS_TOKEN": domino_server.TOKEN,
                    "STAGEFLOW_BUILD_POLL": "0"})
        assert "every stage's environment and the revision built from this push" in made.stdout
        record = tmp_path / "pyflyte.json"
        workspace = {**base, **domino_server.workspace(domino), "PYTHONPATH": str(STANDIN),
                     "PATH": os.pathsep.join([str(bin_dir), str(workspace_python.parent), base["PATH"]]),
                     "FAKE_PYFLYTE_RECORD": str(record)}
        submit = ["make", "--no-print-directory", "submit", f"DOMINO_PYTHON={workspace_python}", "DATASET=iris:2",
                  "DATA_A=/mnt/data/iris/a.csv", "DATA_B=/mnt/data/iris/b.jsonl"]
        if minor in BEYOND_FLYTEKIT:
            refused = subprocess.run(submit, cwd=project, env=workspace, capture_output=True, text=True, timeout=300)
            assert refused.returncode == 2 and not record.exists()
            assert refused.stderr.splitlines()[1:-1] == [  # the last line is make's
                f"  - pyflyte ({bin_dir / 'pyflyte'}) does not start under Python {minor}.0 (ValueError: (3, 13) is not "
                f"a valid PythonVersion); flytekit 1.16.31 supports Python <3.13,>=3.10: use a workspace Python it "
                f"supports (DOMINO_PYTHON=python3.12)"], refused.stderr
            return
        submitted = run(submit, project, workspace)
    assert submitted.stderr == ""
    assert f"{bin_dir / 'pyflyte'} run --remote flow.py model_training --data_path_a /mnt/data/iris/a.csv " \
           f"--data_path_b /mnt/data/iris/b.jsonl" in submitted.stdout
    found = json.loads(record.read_text())
    assert found["python"].startswith(minor + ".")
    assert found["flytekit"] == "1.16.31" and found["plugin"].startswith(str(STANDIN))
    assert found["serialised"].count("TaskSpec") == 5 and "WorkflowSpec" in found["serialised"]
    on_domino = {e["name"]: e for e in domino.environments.values()}
    for call in found["calls"]:  # each task pinned to the revision `stageflow environments` made on this Python
        assert call["environment_revision_id"] == on_domino[call["environment_name"]]["revisions"][-1]["id"]
    assert [c["dataset_snapshots"][0]["Id"] for c in found["calls"] if c["dataset_snapshots"]] == [iris["id"]] * 2


def test_a_python_without_any_toml_reader_is_told_what_to_do(project):
    """Python 3.10 with nothing installed, not even pip (`-S`: no site-packages): no tomllib, no tomli, no
    pip's copy of it, and no click (which the CLI needs, and which every workspace has with flytekit). Both
    commands say what is missing in one line and what to do; no traceback."""
    python = wheelhouses.interpreter("3.10")
    if python is None:
        need("no Python 3.10 on this machine (pyenv install 3.10)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO_", "STAGEFLOW_", "PYTHON"))}
    for command in (["environments"], ["submit", "--data-path-a", "/mnt/a", "--data-path-b", "/mnt/b"]):
        proc = subprocess.run([str(python), "-S", "-m", "stageflow", *command], cwd=project, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        said = proc.stderr.splitlines()
        assert len(said) == 1 and said[0] == (f"error: {python} lacks click, which stageflow needs: use the Python of "
                                             f"`make venv` (.venv/bin/python) or of a Domino workspace (it has "
                                             f"flytekit and click), or pip install click"), proc.stderr
