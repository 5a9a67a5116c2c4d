"""`stageflow submit` (`make submit`): launch the flow on Domino, once everything it relies on is in place.

A remote run needs: a Domino workspace (its Flyte connection and credentials come from there, and Domino's
flytekit plugin ships only in Domino's environments: without the plugin flow.py would register plain
raw-container tasks instead of Domino jobs), the stage images pushed for this very code (flow.py's
cache_version is the image version), their Domino environments created from that push, and a committed tree
(Domino pins the commit). Every missing piece is listed at once, then nothing runs. Standard library only:
it runs with the workspace's Python, which is the one that has flytekit and the plugin.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stageflow import environments
from stageflow.registry import ROOT

WORKSPACE_VARS = ("DOMINO_PROJECT_OWNER", "DOMINO_PROJECT_NAME", "DOMINO_RUN_ID")  # set by Domino in every run
PLUGIN = "flytekitplugins.domino.helpers"


def plugin_present() -> bool:
    try:
        return importlib.util.find_spec(PLUGIN) is not None
    except ModuleNotFoundError:  # flytekitplugins itself is missing
        return False


def git_problems(root: Path) -> list[str]:
    """Uncommitted or unpushed work: Domino runs the commit it pins, not this working tree."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    status = git("status", "--porcelain")
    if status.returncode != 0:
        return [f"{root} is not a git checkout ({status.stderr.strip()}): Domino pins a commit of the project"]
    changed = status.stdout.splitlines()
    found = []
    if changed:
        shown = ", ".join(line[3:] for line in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        found.append(f"uncommitted changes ({shown}): commit them, since Domino runs the pinned commit")
    ahead = git("rev-list", "--count", "@{upstream}..HEAD")  # fails harmlessly when there is no upstream
    if ahead.returncode == 0 and int(ahead.stdout.strip() or 0):
        found.append(f"{ahead.stdout.strip()} commit(s) not pushed to the upstream branch: `git push` first")
    return found


def problems(data_paths: list[str], env=os.environ) -> list[str]:
    """Everything that stands between this checkout and a remote run (empty when nothing does)."""
    found = []
    missing = [name for name in WORKSPACE_VARS if not env.get(name)]
    if missing:
        found.append(f"not inside a Domino workspace ({', '.join(missing)} unset): open a workspace on this "
                     f"project and run `make submit` there")
    if not plugin_present():
        found.append(f"Domino's flytekit plugin ({PLUGIN}) is not importable by {sys.executable}: use the Python of "
                     f"a Domino environment that ships it (DOMINO_PYTHON=...)")
    pushed = environments.read_record(environments.PUSHED)
    found += environments.push_problems(pushed)
    found += environments.environment_problems(environments.read_record(environments.ENVIRONMENTS), pushed,
                                               env.get(environments.HOST_ENV))
    found += git_problems(ROOT)
    relative = [path for path in data_paths if not os.path.isabs(path)]
    if relative:
        found.append(f"data paths must be absolute as a Domino job sees them (/mnt/code/..., /mnt/data/...): "
                     f"{', '.join(relative)}")
    return found


def command(data_path_a: str, data_path_b: str, epochs: str | None, batch_size: str | None) -> list[str]:
    pyflyte = shutil.which("pyflyte") or str(Path(sys.executable).with_name("pyflyte"))
    args = [pyflyte, "run", "--remote", "flow.py", "model_training",
            "--data_path_a", data_path_a, "--data_path_b", data_path_b]
    for flag, value in (("--epochs", epochs), ("--batch_size", batch_size)):
        if value is not None:
            args += [flag, str(value)]
    return args


def submit(data_path_a: str, data_path_b: str, epochs: str | None = None, batch_size: str | None = None) -> int:
    found = problems([data_path_a, data_path_b])
    if found:
        print("error: not submitting to Domino; missing:\n" + "\n".join(f"  - {line}" for line in found),
              file=sys.stderr)
        return 2
    args = command(data_path_a, data_path_b, epochs, batch_size)
    print("submitting: " + " ".join(args), flush=True)
    return subprocess.run(args, cwd=ROOT).returncode
