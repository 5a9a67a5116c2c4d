"""`make submit`: what it checks before `pyflyte run --remote`, against a stand-in Domino reached through a
workspace's API proxy (tests/domino_server.py), and the command it then runs."""

import json
import os
import re
import subprocess
import sys

import pytest

import domino_server
from stageflow import cli
from stageflow.domino import environments, submit

from test_environments import DOMINO_VARS, pushed_record

DATA = ["--data-path-a", "/mnt/data/iris/a.csv", "--data-path-b", "/mnt/data/iris/b.jsonl"]
IRIS = ["--dataset", "iris:2"]


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def domino():
    with domino_server.running() as deployment:
        deployment.iris = deployment.add_dataset("iris", ["active", "active", "active", "pending"])
        yield deployment


@pytest.fixture
def ready(tmp_path, monkeypatch, standin, domino):
    """A checkout where everything a remote run needs is in place, in a workspace on the stand-in deployment
    whose environments were made from outside; each test breaks one thing."""
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
    environments.PUSHED.write_text(json.dumps(pushed_record()))
    outside = {"DOMINO_API_HOST": domino.host, "DOMINO_USER_API_KEY": domino_server.KEY, "STAGEFLOW_BUILD_POLL": "0"}
    environments.run(outside, say=lambda line: None)
    for name in DOMINO_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in domino_server.workspace(domino).items():
        monkeypatch.setenv(name, value)
    bin_dir = tmp_path / "bin"  # a pyflyte that records how it was called
    bin_dir.mkdir()
    (bin_dir / "pyflyte").write_text(f'#!/bin/sh\n[ "$1" = --help ] && exit 0\n'
                                     f'pwd > {tmp_path}/pyflyte.cwd\nprintf "%s\\n" "$@" > {tmp_path}/pyflyte.args\n'
                                     f'echo "$STAGEFLOW_DATASET $STAGEFLOW_DATASET_ID" > {tmp_path}/pyflyte.dataset\n')
    (bin_dir / "pyflyte").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    del domino.requests[:]
    return tmp_path


def run(capsys, *args):
    code = cli.main(["submit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def problems(err: str) -> list[str]:
    lines = err.splitlines()
    start = lines.index("error: not submitting to Domino; to do first:")
    return [line.removeprefix("  - ") for line in lines[start + 1:]]


def test_a_workspace_submits_what_was_made_from_outside(ready, domino, capsys):
    """Environments made with the external URL, submitted where DOMINO_API_HOST is the internal one: the
    deployment is recognised by the ids it holds, reached through the proxy, with no credentials sent."""
    code, out, err = run(capsys, *DATA, *IRIS, "--epochs", "5")
    assert code == 0, err
    assert (ready / "pyflyte.args").read_text().split("\n")[:-1] == [
        "run", "--remote", "flow.py", "model_training", "--data_path_a", "/mnt/data/iris/a.csv",
        "--data_path_b", "/mnt/data/iris/b.jsonl", "--epochs", "5"]
    assert (ready / "pyflyte.cwd").read_text().strip() == str(ready / "repo")
    assert (ready / "pyflyte.dataset").read_text().split() == ["iris:2", domino.iris["id"]]
    assert f"submitting: STAGEFLOW_DATASET=iris:2 STAGEFLOW_DATASET_ID={domino.iris['id']} {ready / 'bin' / 'pyflyte'} " \
           f"run --remote flow.py model_training" in out
    assert {r["listener"] for r in domino.requests} == {"proxy"} and all(not r["auth"] for r in domino.requests)
    read = {r["path"] for r in domino.requests}
    assert {f"/api/environments/v1/environments/{e['environment_id']}"
            for e in environments.applied_environments(environments.read_record(environments.ENVIRONMENTS)).values()} <= read
    assert f"/v4/projects/{domino_server.PROJECT_ID}/hardwareTiers" in read
    assert f"/api/datasetrw/v1/datasets/{domino.iris['id']}/snapshots" in read


def test_the_training_settings_are_passed_on_once_the_train_stages_rules_accept_them(ready, domino, capsys):
    code, _, err = run(capsys, *DATA, *IRIS, "--learning-rate", "0.01", "--hidden-layers", "32,16", "--seed", "7",
                       "--early-stopping", "5")
    assert code == 0, err
    assert (ready / "pyflyte.args").read_text().split("\n")[:-1][-8:] == [
        "--learning_rate", "0.01", "--hidden_layers", "32,16", "--seed", "7", "--early_stopping", "5"]
    code, _, err = run(capsys, *DATA, *IRIS, "--epochs", "0", "--test-fraction", "1.5")
    assert code == 2
    assert problems(err)[:2] == ["--epochs: must be at least 1, found 0",
                                 "--test-fraction: must be a fraction above 0 and below 1 (0.2 holds out a fifth), "
                                 "found 1.5"]


def test_a_dataset_without_version_takes_its_latest_active_snapshot_by_dominos_number(ready, domino, capsys):
    domino.numbered = True
    domino.iris["snapshots"][1]["status"] = "markForDeletion"  # numbers as Domino gives them, with a gap at 3
    for snapshot, n in zip(domino.iris["snapshots"], (1, 2, 4, 5)):
        snapshot["number"] = n
    code, out, err = run(capsys, *DATA, "--dataset", "iris")
    assert code == 0, err
    assert (ready / "pyflyte.dataset").read_text().split()[0] == "iris:4"  # 5 is still pending
    assert f"dataset iris (id {domino.iris['id']}): snapshot version 4; mounted in the jobs" in out


def test_snapshot_numbers_are_never_inferred(ready, domino, capsys):
    """Domino's snapshot records carry no number (SnapshotDetailsV1): the version named is handed to the plugin
    with the dataset's name and id, for Domino to resolve, and a dataset without version is refused in one line
    rather than numbered by creation order (a deleted snapshot would shift every number after it)."""
    domino.iris["snapshots"][1]["status"] = "markForDeletion"
    code, out, err = run(capsys, *DATA, "--dataset", "iris:3")
    assert code == 0, err
    assert (ready / "pyflyte.dataset").read_text().split() == ["iris:3", domino.iris["id"]]
    assert f"dataset iris (id {domino.iris['id']}): snapshot version 3, which Domino resolves when the run is " \
           f"submitted; mounted in the jobs that read the sources\n" in out
    (ready / "pyflyte.dataset").unlink()
    code, _, err = run(capsys, *DATA, "--dataset", "iris")
    assert code == 2 and not (ready / "pyflyte.dataset").exists()
    assert problems(err) == ["dataset iris: Domino's API does not say which version its latest snapshot is, so name "
                             "one: DATASET=iris:<version> (the dataset's page lists them)"]


@pytest.mark.parametrize("status", ["markForDeletion", "deletionInProgress", "deleted"])
def test_a_snapshot_deleted_or_being_deleted_is_refused_by_name(ready, domino, capsys, status):
    domino.numbered = True
    domino.iris["snapshots"][1]["status"] = status
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 2
    assert problems(err) == [f"snapshot 2 of dataset iris ({domino.iris['snapshots'][1]['id']}) is {status}: name "
                             f"another (DATASET=iris:<version>)"]


def test_a_dataset_with_no_active_snapshot_is_refused(ready, domino, capsys):
    for snapshot in domino.iris["snapshots"]:
        snapshot["status"] = "deleted"
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 2
    assert problems(err) == ["dataset iris has no active snapshot (deleted): take one in Domino (the dataset's page, "
                             "Take snapshot), then name it with DATASET=iris:<version>"]


def test_lists_are_read_to_their_end_and_datasets_asked_for_by_project(ready, domino, capsys):
    """Domino's lists page with offset and limit and may answer fewer than asked for (the stand-in caps a page
    at 25): the project's 40th dataset and a snapshot past the first page are found."""
    domino.numbered = True
    domino.datasets[:] = [domino_server.Deployment().add_dataset(f"other{n}", ["active"]) for n in range(39)]
    iris = domino.add_dataset("iris", ["active"] * 30)
    code, out, err = run(capsys, *DATA, "--dataset", "iris:30")
    assert code == 0, err
    assert f"dataset iris (id {iris['id']}): snapshot version 30; mounted" in out
    listed = [r for r in domino.requests if r["path"] == "/api/datasetrw/v2/datasets"]
    assert [r["query"]["offset"] for r in listed] == [["0"], ["25"]]
    assert all(r["query"]["projectIdsToInclude"] == [domino_server.PROJECT_ID] for r in listed)
    snapshots = [r for r in domino.requests if r["path"].endswith("/snapshots")]
    assert [r["query"]["offset"] for r in snapshots] == [["0"], ["25"]]


@pytest.mark.parametrize("path", ["/mnt/data/iris/sub/a.csv", "/mnt/data/snapshots/iris/2/a.csv",
                                  "/domino/datasets/local/iris/a.csv", "/domino/datasets/local/snapshots/iris/2/a.csv"])
def test_every_documented_mount_of_the_snapshot_is_accepted(ready, capsys, path):
    assert run(capsys, "--data-path-a", path, "--data-path-b", path, *IRIS)[0] == 0


def test_sources_in_the_project_code_need_no_dataset(ready, capsys):
    code, _, err = run(capsys, "--data-path-a", "/mnt/code/data/source_a.csv", "--data-path-b", "/mnt/code/data/b.jsonl")
    assert code == 0, err
    assert (ready / "pyflyte.dataset").read_text().split() == []


def test_uncommitted_changes_are_a_warning_not_a_refusal(ready, capsys):
    (ready / "repo" / "flow.py").write_text("# edited\n")
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 0
    assert err == ("warning: uncommitted changes (flow.py): submitted as they are; commit them to keep a record of "
                   "what ran\n")


def test_a_project_without_git_submits(ready, capsys):
    """Domino File System projects have no git checkout."""
    import shutil

    shutil.rmtree(ready / "repo" / ".git")
    code, _, err = run(capsys, *DATA, *IRIS)
    assert (code, err) == (0, "")


def test_outside_domino_every_missing_piece_is_listed(ready, domino, capsys, monkeypatch):
    for name in domino_server.workspace(domino):
        monkeypatch.delenv(name)
    monkeypatch.setattr(submit, "PLUGIN", "flytekitplugins.nothing_here.helpers")
    environments.PUSHED.unlink()
    environments.ENVIRONMENTS.unlink()
    code, out, err = run(capsys, "--data-path-a", "data/source_a.csv", "--data-path-b", "/mnt/data/iris/b.jsonl")
    assert code == 2 and out == ""
    assert problems(err) == [
        "not inside a Domino workspace (DOMINO_PROJECT_ID, DOMINO_PROJECT_OWNER, DOMINO_PROJECT_NAME, DOMINO_RUN_ID "
        "unset): open a workspace on this project and run `make submit` there",
        f"Domino's flytekit plugin (flytekitplugins.nothing_here.helpers) is not importable by {sys.executable}: "
        f"use the Python of a Domino environment that ships it (DOMINO_PYTHON=...)",
        f"no images pushed ({environments.PUSHED} missing): run `make push REGISTRY=host:port/prefix`",
        f"no environment definitions ({environments.ENVIRONMENTS} missing): run `make environments` with "
        f"DOMINO_API_HOST with DOMINO_ACCESS_TOKEN (a personal access token) or DOMINO_USER_API_KEY set",
        "data path data/source_a.csv is not absolute as a Domino job sees it (/mnt/data/<dataset>/..., "
        "/mnt/code/...): give the full path",
        "data path /mnt/data/iris/b.jsonl is in dataset iris, which a job mounts only if its snapshot is named: "
        "add DATASET=iris:<version>",
    ]
    assert not (ready / "pyflyte.args").exists()


def break_push(ready, domino):
    stale = pushed_record()
    stale["versions"]["train"] = "000000000000"
    environments.PUSHED.write_text(json.dumps(stale))


def new_push(ready, domino):
    environments.PUSHED.write_text(json.dumps(pushed_record("again")))


def edit_record(change):
    def edit(ready, domino):
        record = json.loads(environments.ENVIRONMENTS.read_text())
        change(record["applied"]["environments"]["merge"], domino)
        environments.ENVIRONMENTS.write_text(json.dumps(record))
    return edit


def newer_revision(ready, domino):
    merge = next(e for e in domino.environments.values() if e["name"] == "stageflow-merge")
    domino.add_revision(merge, {"image": "someone/else:1"}, ["Succeeded"])  # now the active one too


def other_image(ready, domino):
    merge = next(e for e in domino.environments.values() if e["name"] == "stageflow-merge")
    merge["revisions"][-1]["image"] = "someone/else@sha256:1"


def drop_tier(ready, domino):
    domino.tiers = [tier for tier in domino.tiers if tier["name"] != "Large"]


@pytest.mark.parametrize("breaks, args, expected", [
    (lambda r, d: os.environ.pop("DOMINO_RUN_ID"), DATA + IRIS,
     "not inside a Domino workspace (DOMINO_RUN_ID unset)"),
    (lambda r, d: setattr(submit, "PLUGIN_TASK", "flytekitplugins.domino.nothing"), DATA + IRIS,
     "Domino's flytekit plugin (flytekitplugins.domino.nothing) is not importable"),
    (break_push, DATA + IRIS, "images pushed for another version of the code: train (pushed 000000000000, code at"),
    (new_push, DATA + IRIS, "environments.json does not match the last push: run `make environments`"),
    (edit_record(lambda merge, d: merge.pop("revision_id")), DATA + IRIS,
     "no Domino environment revision recorded for the last push (merge): run `make environments`"),
    (edit_record(lambda merge, d: merge.update(status="Building")), DATA + IRIS,
     "environment revisions not built: merge (Building): run `make environments` again"),
    (edit_record(lambda merge, d: merge.update(environment_id="0" * 24)), DATA + IRIS,
     f"stage merge: this deployment has no environment {'0' * 24} (stageflow-merge): run `make environments` "
     f"against this deployment"),
    (newer_revision, DATA + IRIS, "is no longer the latest or active revision of stageflow-merge: run `make environments`"),
    (other_image, DATA + IRIS, "of stageflow-merge holds someone/else@sha256:1, not the pushed "),
    (drop_tier, DATA + IRIS, "hardware tier Large (train) is not on this deployment (it has Small, Medium, GPU): "
                             "set `tier` in stageflow/registry.py to one of those"),
    (lambda r, d: setattr(d, "numbered", True), DATA + ["--dataset", "iris:7"],
     "dataset iris has no snapshot 7 (it has 1, 2, 3, 4): name one of those (DATASET=iris:<version>)"),
    (lambda r, d: setattr(d, "numbered", True), DATA + ["--dataset", "iris:4"],
     "snapshot 4 of dataset iris is pending, not active"),
    (lambda r, d: None, ["--data-path-a", "/mnt/data/roses/a.csv", "--data-path-b", "/mnt/data/roses/b.csv",
                         "--dataset", "roses:1"], "no dataset named roses is visible to this project"),
    (lambda r, d: None, DATA + ["--dataset", "iris:0"], "DATASET=iris:0: expected a dataset name and snapshot version"),
    (lambda r, d: None, ["--data-path-a", "/mnt/data/other/a.csv", "--data-path-b", "/mnt/data/iris/b.jsonl"] + IRIS,
     "data path /mnt/data/other/a.csv is not in dataset iris's mount (/mnt/data/iris, /mnt/data/snapshots/iris/2/...)"),
    (lambda r, d: None, ["--data-path-a", "/mnt/data/snapshots/iris/1/a.csv", "--data-path-b", "/mnt/data/iris/b"] + IRIS,
     "data path /mnt/data/snapshots/iris/1/a.csv is not in dataset iris's mount"),
    (lambda r, d: None, ["--data-path-a", "/mnt/data/iris/a.csv", "--data-path-b", "/mnt/code/b.csv"],
     "data path /mnt/data/iris/a.csv is in dataset iris, which a job mounts only if its snapshot is named: add "
     "DATASET=iris:<version>"),
], ids=["workspace", "plugin", "push", "environments-stale", "no-revision", "not-built", "other-deployment",
        "superseded", "other-image", "tier", "no-such-version", "snapshot-pending", "no-such-dataset", "bad-dataset",
        "path-elsewhere", "path-other-version", "dataset-unnamed"])
def test_each_precondition_is_checked(ready, domino, capsys, monkeypatch, breaks, args, expected):
    assert run(capsys, *DATA, *IRIS)[0] == 0  # all in place first
    (ready / "pyflyte.args").unlink()
    monkeypatch.setattr(submit, "PLUGIN_TASK", submit.PLUGIN_TASK)  # restored after a test that breaks it
    breaks(ready, domino)
    code, _, err = run(capsys, *args)
    assert code == 2
    assert len(problems(err)) == 1 and expected in problems(err)[0], err
    assert not (ready / "pyflyte.args").exists()


def test_a_teammate_told_environments_are_not_visible_to_them_not_missing(ready, domino, capsys, monkeypatch):
    """ada made them Private; bob's workspace on the same deployment cannot see them: one line that says so and
    what to do, not five that say the deployment lacks them."""
    domino.proxy_user = "bob"
    monkeypatch.setenv("DOMINO_STARTING_USERNAME", "bob")
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 2
    assert problems(err) == [
        "stages load_a, load_b, merge, process, train: environments stageflow-load-a, stageflow-load-b, "
        "stageflow-merge, stageflow-process, stageflow-train exist on this deployment but are not visible to you "
        "(made Private): ask a Domino admin to make them Organization or Global (only admins change an "
        "environment's visibility), or make your own with `make environments VISIBILITY=Organization "
        f"ORGANIZATION=<org>` and commit {environments.ENVIRONMENTS}"]


def test_environments_an_organization_owns_are_usable_by_its_members(ready, domino, capsys, monkeypatch):
    domino.environments.clear()
    outside = {"DOMINO_API_HOST": domino.host, "DOMINO_USER_API_KEY": domino_server.KEY, "STAGEFLOW_BUILD_POLL": "0"}
    environments.run(outside, say=lambda line: None, visibility_name="Organization",
                     organization=domino_server.ORG_NAME)
    domino.proxy_user = "bob"  # a member of iris-team
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 0, err


def test_a_record_from_another_deployment_is_one_line(ready, domino, capsys):
    domino.environments.clear()
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 2
    assert problems(err) == [f"none of the environments in {environments.ENVIRONMENTS} is on this deployment (they "
                             f"were made on another): run `make environments` against this deployment and commit "
                             f"{environments.ENVIRONMENTS}"]


def test_an_archived_environment_is_named(ready, domino, capsys):
    next(e for e in domino.environments.values() if e["name"] == "stageflow-train")["archived"] = True
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 2
    assert problems(err) == [f"stage train: environment stageflow-train is archived on this deployment: run `make "
                             f"environments` to make a new one and commit {environments.ENVIRONMENTS}"]


def test_every_problem_is_listed_at_once(ready, domino, capsys):
    domino.numbered = True
    drop_tier(ready, domino)
    newer_revision(ready, domino)
    code, _, err = run(capsys, "--data-path-a", "/mnt/data/other/a.csv", "--data-path-b", "/mnt/data/iris/b",
                       "--dataset", "iris:9")
    assert code == 2
    found = problems(err)
    expected = ["stage merge: revision ", "hardware tier Large (train) is not on this deployment",
                "dataset iris has no snapshot 9",
                "data path /mnt/data/other/a.csv is not in dataset iris's mount"]
    assert len(found) == len(expected) and all(line.startswith(e) for line, e in zip(found, expected)), found


def test_an_unreachable_api_is_one_problem(ready, capsys, monkeypatch):
    monkeypatch.setenv("DOMINO_API_PROXY", "http://127.0.0.1:9")  # nothing listens on the discard port
    code, _, err = run(capsys, *DATA, *IRIS)
    assert code == 2
    assert len(problems(err)) == 1
    assert problems(err)[0].startswith("Domino's API (Domino's API proxy http://127.0.0.1:9) did not answer as "
                                       "expected, so nothing more could be checked; try again, from a workspace of "
                                       "this deployment: GET http://127.0.0.1:9/api/environments/v1/environments/")


def test_make_submit_needs_both_data_paths():
    proc = subprocess.run(["make", "--no-print-directory", "submit", "DATA_A=/mnt/a.csv"], cwd=submit.ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage: make submit [DATASET=iris:3] DATA_A=/mnt/data/iris/a.csv DATA_B=/mnt/data/iris/b.jsonl" in proc.stdout


SCREEN = (30, 120)  # rows, columns: a terminal pane in a workspace (VS Code's, Jupyter's)


def rows(text: str) -> int:
    return sum(max(1, -(-len(line) // SCREEN[1])) for line in text.splitlines())


def test_the_worst_case_fits_on_one_screen(ready, domino, capsys, monkeypatch):
    """Everything wrong at once, outside and inside the deployment: the warnings and problems still fit one
    screen (a line per problem, several stages in one line where they share it), each saying what to do."""
    (ready / "repo" / "flow.py").write_text("# edited\n")
    drop_tier(ready, domino)
    domino.tiers = [tier for tier in domino.tiers if tier["name"] not in ("Medium", "Small")]
    domino.numbered = True
    record = environments.applied_environments(environments.read_record(environments.ENVIRONMENTS))
    for stage in ("load_a", "load_b"):
        del domino.environments[record[stage]["environment_id"]]
    for stage in ("merge", "process", "train"):  # each recorded revision failed after all
        domino.revisions[record[stage]["revision_id"]]["script"] = ["Failed"]
    monkeypatch.setattr(submit, "PLUGIN", "flytekitplugins.nothing_here.helpers")
    monkeypatch.setattr(submit, "pyflyte_path", lambda: "/nonexistent/pyflyte")  # no pyflyte either
    monkeypatch.delenv("DOMINO_RUN_ID")
    code, out, err = run(capsys, "--data-path-a", "data/a.csv", "--data-path-b", "/mnt/data/other/b.csv",
                         "--dataset", "iris:9")
    assert code == 2 and out == ""
    found = problems(err)
    assert len(found) >= 8 and all(re.search(r"(run|use|set|name|open|give|add|take|wait|ask|see|commit) ", line)
                                   for line in found), found
    assert rows(err) <= SCREEN[0], err
