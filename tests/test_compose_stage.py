"""Running one stage through docker-compose.yml by hand, as root and as a user who is not root."""

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stageflow import dag as dag_module
from stageflow.backends import HostBackend
from stageflow.runner import Run

from conftest import ROOT, samples

STAGE_UID = 12574  # Domino's uid, which a stage container runs as when the caller is root
OUTSIDER = 54321  # a throwaway uid with no account here (`setpriv` needs none)
MERGE_INPUTS = ("load_a/outputs/datasetA", "load_b/outputs/datasetB")
ONE_LINE = ("outputs directory {outputs}: not writable by uid {uid} (owned by uid {owner}, mode 755); "
            "make it writable for uid {uid}")

as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root: to act as root and to switch to another uid")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def as_outsider(*groups: int) -> list[str]:
    """A command prefix that runs as OUTSIDER, with only `groups` as supplementary groups."""
    assert OUTSIDER not in {user.pw_uid for user in pwd.getpwall()}
    return ["setpriv", f"--reuid={OUTSIDER}", f"--regid={OUTSIDER}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups", "--"]


@pytest.fixture(scope="module")
def shared_tmp():
    """A temporary directory every uid can read (pytest's own is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="stageflow-compose-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def upstream(shared_tmp):
    """A run of the whole flow on the host: its load outputs feed merge."""
    run = Run(dag_module.load(), shared_tmp / "run", HostBackend(), {
        "data_path_a": str(samples()[0]), "data_path_b": str(samples()[1])},
        echo=False)
    assert run.execute(), run.failures()
    return run


@as_root
def test_a_stage_that_cannot_write_its_outputs_says_so_in_one_line(upstream, shared_tmp):
    """Not a traceback from the first temporary file: which directory, which uid, and no _ERROR attempt."""
    tree = shared_tmp / "unwritable"
    (tree / "inputs").mkdir(parents=True)
    (tree / "outputs").mkdir()
    for name in MERGE_INPUTS:
        shutil.copy(upstream.run_dir / name, tree / "inputs")
    env = {**os.environ, "WORKFLOW_ROOT": str(tree), "PYTHONPATH": str(ROOT), "HOME": str(tree)}
    proc = subprocess.run([*as_outsider(), sys.executable, str(ROOT / "stages" / "merge" / "main.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    expected = ONE_LINE.format(outputs=tree / "outputs", uid=OUTSIDER, owner=0)
    assert len(errors) == 1 and errors[0].endswith(expected), proc.stderr
    assert os.listdir(tree / "outputs") == []


@pytest.fixture
def compose_dir():
    """.workflow/ is the compose harness's; start each test without a tree left by another."""
    shutil.rmtree(ROOT / ".workflow", ignore_errors=True)
    yield ROOT / ".workflow"


@pytest.mark.docker
@as_root
def test_compose_by_hand_in_a_tree_made_by_root_says_so_in_one_line(upstream, compose_dir):
    """The steps the README used to give, as root: the stage cannot write the outputs root made."""
    from stageflow import containers

    (compose_dir / "merge" / "outputs").mkdir(parents=True)
    (compose_dir / "merge" / "inputs").mkdir()
    for name in MERGE_INPUTS:
        shutil.copy(upstream.run_dir / name, compose_dir / "merge" / "inputs")
    proc = subprocess.run([*containers.compose_command(), "run", "--rm", "-T", "merge"], cwd=ROOT,
                          env={**os.environ, **containers.compose_env()}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert ONE_LINE.format(outputs="/workflow/outputs", uid=STAGE_UID, owner=0) in out, out


@pytest.mark.docker
def test_compose_stage_prepares_the_tree_and_runs_the_stage(upstream, compose_dir):
    """`make compose-stage` takes merge's inputs from a run directory; the command it prints runs it again."""
    proc = subprocess.run(["make", "--no-print-directory", "compose-stage", "STAGE=merge", f"FROM={upstream.run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = compose_dir / "merge" / "outputs"
    assert sha256(outputs / "merged_data") == upstream.results["merge"].outputs["merged_data"]
    assert outputs.stat().st_uid == (STAGE_UID if os.getuid() == 0 else os.getuid())
    again = proc.stdout.strip().splitlines()[-1]
    assert again.startswith("to run it again by hand: ")
    (outputs / "merged_data").unlink()
    rerun = subprocess.run(["bash", "-c", again.removeprefix("to run it again by hand: ")], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert sha256(outputs / "merged_data") == upstream.results["merge"].outputs["merged_data"]


@pytest.fixture
def outsider_checkout(shared_tmp):
    """A copy of this checkout that belongs to OUTSIDER, as a user's own clone would."""
    copy = shared_tmp / "checkout"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (copy / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / os.fsdecode(name))
    (copy / "home").mkdir()
    subprocess.run(["chown", "-R", f"{OUTSIDER}:{OUTSIDER}", str(copy)], check=True)
    yield copy
    shutil.rmtree(copy)


@pytest.mark.docker
@as_root
def test_compose_stage_as_a_user_who_is_not_root(upstream, outsider_checkout):
    """A user who reaches Docker through the socket's group, in their own checkout, inputs given as paths."""
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    inputs = [f"--input={Path(name).name}={upstream.run_dir / name}" for name in MERGE_INPUTS]
    env = {**os.environ, "HOME": str(outsider_checkout / "home"), "STAGEFLOW_CACHE": str(outsider_checkout / "cache")}
    proc = subprocess.run([*as_outsider(docker_gid), sys.executable, "-m", "stageflow", "compose-stage", "merge",
                           *inputs], cwd=outsider_checkout, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = outsider_checkout / ".workflow" / "merge" / "outputs"
    assert sha256(outputs / "merged_data") == upstream.results["merge"].outputs["merged_data"]
    assert outputs.stat().st_uid == OUTSIDER and (outputs / "merged_data").stat().st_uid == OUTSIDER
