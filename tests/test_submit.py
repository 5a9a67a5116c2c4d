"""`make submit`: what it checks before `pyflyte run --remote`, and the command it then runs."""

import json
import os
import subprocess
import sys

import pytest

from stageflow import cli, environments, submit

from test_environments import pushed_record

HOST = "https://domino.invalid"
DATA = ["--data-path-a", "/mnt/data/iris/a.csv", "--data-path-b", "/mnt/data/iris/b.jsonl"]


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def ready(tmp_path, monkeypatch, standin):
    """A checkout where everything a remote run needs is in place; each test breaks one thing."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "flow.py").write_text("# the flow\n")
    git(repo, "init", "-q")
    git(repo, "add", "flow.py")
    git(repo, "commit", "-qm", "flow")
    monkeypatch.setattr(submit, "ROOT", repo)
    monkeypatch.setattr(environments, "BUILD", tmp_path)
    monkeypatch.setattr(environments, "PUSHED", tmp_path / "pushed.json")
    monkeypatch.setattr(environments, "ENVIRONMENTS", tmp_path / "environments.json")
    pushed = pushed_record()
    environments.PUSHED.write_text(json.dumps(pushed))
    defined = environments.definitions(pushed)
    environments.write(defined, {"host": HOST, "environments": {
        name: {"environment_id": f"env-{name}", "image": d["image"]} for name, d in defined.items()}})
    for name, value in (("DOMINO_PROJECT_OWNER", "ada"), ("DOMINO_PROJECT_NAME", "stageflow"),
                        ("DOMINO_RUN_ID", "run-1"), ("DOMINO_API_HOST", HOST)):
        monkeypatch.setenv(name, value)
    bin_dir = tmp_path / "bin"  # a pyflyte that records how it was called
    bin_dir.mkdir()
    (bin_dir / "pyflyte").write_text(f'#!/bin/sh\npwd > {tmp_path}/pyflyte.cwd\nprintf "%s\\n" "$@" > {tmp_path}/pyflyte.args\n')
    (bin_dir / "pyflyte").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def run(capsys, *args):
    code = cli.main(["submit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_everything_in_place_runs_pyflyte_remote(ready, capsys):
    code, out, err = run(capsys, *DATA, "--epochs", "5")
    assert code == 0, err
    assert (ready / "pyflyte.args").read_text().split("\n")[:-1] == [
        "run", "--remote", "flow.py", "model_training", "--data_path_a", "/mnt/data/iris/a.csv",
        "--data_path_b", "/mnt/data/iris/b.jsonl", "--epochs", "5"]
    assert (ready / "pyflyte.cwd").read_text().strip() == str(ready / "repo")
    assert out.startswith(f"submitting: {ready / 'bin' / 'pyflyte'} run --remote flow.py model_training")


def test_outside_domino_every_missing_piece_is_listed(ready, capsys, monkeypatch):
    for name in ("DOMINO_PROJECT_OWNER", "DOMINO_PROJECT_NAME", "DOMINO_RUN_ID", "DOMINO_API_HOST"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(submit, "PLUGIN", "flytekitplugins.nothing_here.helpers")
    environments.PUSHED.unlink()
    environments.ENVIRONMENTS.unlink()
    (ready / "repo" / "flow.py").write_text("# edited\n")
    code, out, err = run(capsys, "--data-path-a", "data/source_a.csv", "--data-path-b", "/mnt/data/b.jsonl")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "error: not submitting to Domino; missing:",
        "  - not inside a Domino workspace (DOMINO_PROJECT_OWNER, DOMINO_PROJECT_NAME, DOMINO_RUN_ID unset): open a "
        "workspace on this project and run `make submit` there",
        f"  - Domino's flytekit plugin (flytekitplugins.nothing_here.helpers) is not importable by "
        f"{sys.executable}: use the Python of a Domino environment that ships it (DOMINO_PYTHON=...)",
        f"  - no images pushed ({environments.PUSHED} missing): run `make push REGISTRY=host:port/prefix`",
        f"  - no environment definitions ({environments.ENVIRONMENTS} missing): run `make environments` with "
        f"DOMINO_API_HOST and DOMINO_USER_API_KEY set",
        "  - uncommitted changes (flow.py): commit them, since Domino runs the pinned commit",
        "  - data paths must be absolute as a Domino job sees them (/mnt/code/..., /mnt/data/...): data/source_a.csv",
    ]
    assert not (ready / "pyflyte.args").exists()


def break_push(ready):
    stale = pushed_record()
    stale["versions"]["train"] = "000000000000"
    environments.PUSHED.write_text(json.dumps(stale))


def break_environments(ready):
    record = json.loads(environments.ENVIRONMENTS.read_text())
    record["applied"]["environments"]["merge"]["image"] = "old@sha256:0"
    environments.ENVIRONMENTS.write_text(json.dumps(record))


def new_push(ready):
    environments.PUSHED.write_text(json.dumps(pushed_record("again")))


def unpushed_commit(ready):
    repo = ready / "repo"
    git(repo, "init", "-q", "--bare", str(ready / "origin.git"))
    git(repo, "remote", "add", "origin", str(ready / "origin.git"))
    git(repo, "push", "-q", "-u", "origin", "HEAD")
    (repo / "flow.py").write_text("# changed\n")
    git(repo, "commit", "-qam", "change")


@pytest.mark.parametrize("breaks, expected", [
    (lambda r: os.environ.pop("DOMINO_RUN_ID"), "not inside a Domino workspace (DOMINO_RUN_ID unset)"),
    (break_push, "images pushed for another version of the code: train (pushed 000000000000, code at"),
    (new_push, "environments.json does not match the last push: run `make environments`"),
    (break_environments, "Domino environments not created or revised for the last push (merge): run `make environments`"),
    (lambda r: os.environ.__setitem__("DOMINO_API_HOST", "https://other.invalid"),
     f"environments were created on {HOST}, not on https://other.invalid"),
    (lambda r: (r / "repo" / "notes.txt").write_text("x"), "uncommitted changes (notes.txt)"),
    (unpushed_commit, "1 commit(s) not pushed to the upstream branch: `git push` first"),
], ids=["workspace", "push", "environments-stale", "environments-not-applied", "other-domino", "dirty", "unpushed"])
def test_each_precondition_is_checked(ready, capsys, breaks, expected):
    assert run(capsys, *DATA)[0] == 0  # all in place first
    (ready / "pyflyte.args").unlink()
    breaks(ready)
    code, _, err = run(capsys, *DATA)
    assert code == 2
    problems = err.splitlines()[1:]
    assert len(problems) == 1 and expected in problems[0], err
    assert not (ready / "pyflyte.args").exists()


def test_make_submit_needs_both_data_paths():
    proc = subprocess.run(["make", "--no-print-directory", "submit", "DATA_A=/mnt/a.csv"], cwd=submit.ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage: make submit DATA_A=/mnt/.../a.csv DATA_B=/mnt/.../b.jsonl" in proc.stdout
