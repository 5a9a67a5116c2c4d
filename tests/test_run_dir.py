"""What `--run-dir` may be: a directory the runner made, or a new or empty one; anything else is refused with
one line before anything in it is touched."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from stageflow.registry import STAGES

from conftest import ROOT, samples

DATA_A = samples()[0]


def stageflow(*args):
    return subprocess.run([sys.executable, "-m", "stageflow", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def snapshot(folder):
    """Every path under `folder` with its kind and content hash: what "nothing was touched" compares."""
    found = {}
    for path in sorted(folder.rglob("*")):
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        content = os.readlink(path) if kind == "link" else path.read_bytes() if kind == "file" else b""
        found[str(path.relative_to(folder))] = (kind, hashlib.sha256(str(content).encode()).hexdigest())
    return found


def assert_refused(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and all(word in proc.stderr for word in words), proc.stderr


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """A run directory a previous run made."""
    run_dir = tmp_path_factory.mktemp("made") / "run"
    proc = stageflow("run", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_a_users_directory_is_refused_and_left_as_it_was(tmp_path):
    """The issue's case: the source lives in a folder named like a stage, inside the directory given."""
    (tmp_path / "merge").mkdir()
    shutil.copy(DATA_A, tmp_path / "merge" / DATA_A.name)
    (tmp_path / "report.html").write_text("my own report")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    proc = stageflow("run", "--run-dir", str(tmp_path), "--data-path-a", str(tmp_path / "merge" / DATA_A.name))
    assert_refused(proc, f"run directory {tmp_path}", "not made by stageflow")
    assert snapshot(tmp_path) == before
    assert (tmp_path / "merge" / DATA_A.name).read_bytes() == DATA_A.read_bytes()


def test_a_new_or_empty_directory_becomes_a_run_directory_and_can_be_reused(tmp_path):
    (tmp_path / "empty").mkdir()
    for run_dir in (tmp_path / "new" / "run", tmp_path / "empty", tmp_path / "empty"):
        proc = stageflow("run", "--run-dir", str(run_dir))
        assert proc.returncode == 0, proc.stderr
        assert (run_dir / "outputs").is_dir() and (run_dir / ".stageflow-run").is_file()


def test_a_data_path_inside_the_run_directory_is_refused(made_run):
    source = made_run / "load_a" / "inputs" / DATA_A.name
    shutil.copy(DATA_A, source)
    before = snapshot(made_run)
    proc = stageflow("run", "--run-dir", str(made_run), "--data-path-a", str(source))
    assert_refused(proc, f"flow input data_path_a: {source} is inside the run directory {made_run}")
    assert snapshot(made_run) == before
    source.unlink()


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_something_else_named_like_a_stage_directory_is_refused(made_run, tmp_path, kind):
    """In a directory a run made, a stage's name may only be that stage's folder; a file or a link there
    (to the user's own folder, say) is refused in one line, and nothing is cleared."""
    stage = made_run / list(STAGES)[2]
    moved = tmp_path / "moved"
    stage.rename(moved)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    if kind == "file":
        stage.write_text("not a folder")
    else:
        stage.symlink_to(mine)
    before, mine_before = snapshot(made_run), snapshot(mine)
    try:
        proc = stageflow("run", "--run-dir", str(made_run))
        assert_refused(proc, f"run directory {made_run}: {stage.name} is a {kind}")
        assert snapshot(made_run) == before and snapshot(mine) == mine_before
    finally:
        stage.unlink()
        moved.rename(stage)


def test_a_file_as_run_directory_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert_refused(stageflow("run", "--run-dir", str(target)), f"run directory {target}: not a directory")
    assert target.read_text() == "x"


@pytest.mark.parametrize("shape", ["long name", "long path"])
def test_a_run_directory_path_longer_than_the_system_allows_is_one_line(tmp_path, shape):
    long = tmp_path / ("x" * 300) if shape == "long name" else tmp_path.joinpath(*["y" * 200] * 25)
    proc = stageflow("run", "--run-dir", str(long))
    assert_refused(proc, "File name too long")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, make", [("logs", "file"), ("run.json", "directory"), ("report.html", "fifo")])
def test_the_runs_own_names_taken_by_something_else_are_refused(made_run, name, make):
    """Besides the stage folders: logs/ must be a folder, run.json and report.html files."""
    target = made_run / name
    moved = made_run.parent / f"moved-{name}"
    target.rename(moved)
    {"file": target.write_text, "directory": lambda _: target.mkdir(),
     "fifo": lambda _: os.mkfifo(target)}[make]("x")
    before = snapshot(made_run) if make != "fifo" else None
    try:
        proc = stageflow("run", "--run-dir", str(made_run))
        assert_refused(proc, f"run directory {made_run}: {name} is a "
                             f"{'special file' if make == 'fifo' else make}")
        if before is not None:
            assert snapshot(made_run) == before
    finally:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        moved.rename(target)


# ------------------------------------------------------------------ runs/latest and runs/last-succeeded


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """runs/ somewhere of the test's own: the checkout's is left alone."""
    from stageflow import rundir

    monkeypatch.setattr(rundir, "runs_dir", lambda: tmp_path / "runs")
    return tmp_path / "runs"


def run_here(capsys, *args):
    """`stageflow run ARGS` in this process (so `runs` applies): its exit status and the summary's
    `last succeeded:` line."""
    from stageflow import cli

    status = cli.main(["run", *args])
    out = capsys.readouterr().out
    said = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("last succeeded:")]
    return status, said


def links(runs):
    return {name: os.readlink(runs / name) for name in ("latest", "last-succeeded") if (runs / name).is_symlink()}


@pytest.mark.slow
def test_latest_is_the_newest_run_and_last_succeeded_the_newest_that_succeeded(runs, tmp_path, capsys):
    """After a failed run runs/latest holds no model: the summary says where the newest good one is."""
    status, said = run_here(capsys, "--run-dir", str(runs / "good"))
    assert status == 0 and links(runs) == {"latest": "good", "last-succeeded": "good"}  # --run-dir in runs/: too
    assert said == [f"{runs}/last-succeeded -> good (this run)"]
    bad = tmp_path / "bad.csv"
    bad.write_text("not,the,columns\n1,2,3\n")
    status, said = run_here(capsys, "--data-path-a", str(bad))
    newest = links(runs)["latest"]
    assert status == 1 and newest != "good" and (runs / newest / "run.json").is_file()
    assert links(runs)["last-succeeded"] == "good" and said == [f"{runs}/last-succeeded -> good"]
    assert (runs / "last-succeeded" / "outputs").is_dir()
    status, said = run_here(capsys, "--run-dir", str(tmp_path / "elsewhere"), "--data-path-a", str(bad))
    assert status == 1 and links(runs)["latest"] == newest and said == [f"{runs}/last-succeeded -> good"]


@pytest.mark.parametrize("make, what", [(lambda p: p.mkdir(), "a directory"),
                                        (lambda p: p.write_text("mine"), "a file"),
                                        (lambda p: p.symlink_to("/etc"), "a link to /etc")])
def test_a_last_succeeded_that_is_not_the_runners_link_is_refused_before_the_run_and_kept(runs, make, what):
    from stageflow.rundir import RunError, new_run_dir

    runs.mkdir()
    make(runs / "last-succeeded")
    before = snapshot(runs)
    with pytest.raises(RunError, match=f"^{runs}/last-succeeded: {what} where the runner keeps a link to the newest "
                                       f"run that succeeded; move it away or give --run-dir outside {runs}$"):
        new_run_dir(runs=runs)
    assert snapshot(runs) == before and not (runs / "latest").exists()


def test_a_name_taken_while_a_run_ran_is_left_and_said(runs):
    """Checked before the run, and again when it succeeds: what took the name since is not replaced."""
    from stageflow import rundir

    (runs / "one").mkdir(parents=True)
    rundir.point(rundir.SUCCEEDED, runs / "one")
    rundir.point(rundir.SUCCEEDED, runs / "one")  # the runner's own link: replaced
    assert os.readlink(runs / "last-succeeded") == "one" and rundir.pointed(rundir.SUCCEEDED) == runs / "one"
    (runs / "last-succeeded").unlink()
    (runs / "last-succeeded").mkdir()
    (runs / "last-succeeded" / "notes").write_text("mine")
    with pytest.raises(rundir.RunError, match="last-succeeded: not updated: a directory stands there"):
        rundir.point(rundir.SUCCEEDED, runs / "one")
    assert (runs / "last-succeeded" / "notes").read_text() == "mine" and rundir.pointed(rundir.SUCCEEDED) is None
    assert sorted(os.listdir(runs)) == ["last-succeeded", "one"]  # no temporary link left
    rundir.point(rundir.LATEST, runs / "one")
    rundir.point(rundir.LATEST, runs / "latest")  # `--run-dir runs/latest`: the run it points at, not itself
    assert os.readlink(runs / "latest") == "one"


def test_a_run_directory_named_like_a_link_is_refused(runs, capsys):
    from stageflow import cli

    for name in ("latest", "last-succeeded"):
        assert cli.main(["run", "--run-dir", str(runs / name)]) == 2
        assert capsys.readouterr().err == (f"error: run directory {runs / name}: {name} is the name of the runner's "
                                           f"link to a run; give another name\n")
    assert not runs.exists()
