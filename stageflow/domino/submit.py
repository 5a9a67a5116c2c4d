"""`stageflow submit` (`make submit`): launch the flow on Domino, once everything it relies on is in place.

A remote run needs a Domino workspace (its Flyte connection and API proxy come from there, and Domino's
flytekit plugin ships only in Domino's environments: without it flow.py would register plain raw-container
tasks instead of Domino jobs), the stage images pushed for this very code (flow.py's cache_version is the image
version), a built revision of each stage's environment from that push on this deployment (flow.py pins it),
the hardware tiers the registry names, and, when the sources are in a dataset, its snapshot, which the load
tasks then list so that Domino mounts it. Every problem is listed at once, one line each, and nothing is sent
while any remains. Standard library only: it runs with the workspace's Python, which has flytekit and the plugin.

The dataset is handed to flow.py through the environment of `pyflyte run --remote` (STAGEFLOW_DATASET=name:version
and STAGEFLOW_DATASET_ID), read by `pinned_dataset` when pyflyte imports flow.py.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath

from stageflow.domino import api as domino_api, environments
from stageflow.domino.api import Api, DominoError, items, squeeze, unwrap
from stageflow.registry import ROOT, STAGES
from stageflow.runtime import inputs
from stageflow.runtime.schema import SchemaError

WORKSPACE_VARS = ("DOMINO_PROJECT_ID", "DOMINO_PROJECT_OWNER", "DOMINO_PROJECT_NAME", "DOMINO_RUN_ID")  # every run
PLUGIN = "flytekitplugins.domino.helpers"
PLUGIN_TASK = "flytekitplugins.domino.task"  # DatasetSnapshot
DATASET_ENV, DATASET_ID_ENV = "STAGEFLOW_DATASET", "STAGEFLOW_DATASET_ID"
# Where a job finds a dataset (docs/domino.md): git-based projects mount the project's own datasets under
# /mnt/data and shared ones under /mnt/imported/data; Domino File System projects use /domino/datasets/local
# and /domino/datasets. A pinned snapshot has been seen both at <root>/<name> and at
# <root>/snapshots/<name>/<version>: both are accepted.
OWN_ROOTS, SHARED_ROOTS = ("/mnt/data", "/domino/datasets/local"), ("/mnt/imported/data", "/domino/datasets")
# A snapshot's statuses (SnapshotDetailsV1Status in Domino's public API): active once its files are in place;
# pending and copying before; failed; markForDeletion, deletionInProgress and deleted on the way out.
ACTIVE, GOING = "active", ("markForDeletion", "deletionInProgress", "deleted")
# Where a snapshot answer would carry its number: no public answer shows one (SnapshotDetailsV1 has id,
# datasetId, createdAt, creatorId, status, description, lastMounted), so these are read only when present and
# the number is never inferred (from creation order, say: deleted snapshots keep or free theirs, nobody says).
NUMBER_KEYS = ("version", "snapshotVersion", "number")


def plugin_present(module: str = PLUGIN) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # flytekitplugins itself is missing
        return False


def parse_dataset(text: str) -> tuple[str, int | None]:
    """`name` or `name:version` (versions count from 1, as Domino numbers snapshots)."""
    match = re.fullmatch(r"([^:/\s]+)(?::([1-9][0-9]*))?", text.strip())
    if not match:
        raise DominoError(f"DATASET={text}: expected a dataset name and snapshot version, e.g. iris:3 (or iris for "
                          f"its latest snapshot)")
    return match[1], int(match[2]) if match[2] else None


def pinned_dataset(env=os.environ) -> dict | None:
    """The dataset snapshot `stageflow submit` named, as the keywords of Domino's DatasetSnapshot (Name,
    Version and, when known, Id); None when none was named (locally, or sources in the project's code)."""
    if not env.get(DATASET_ENV):
        return None
    name, version = parse_dataset(env[DATASET_ENV])
    return {"Name": name, **({"Version": version} if version else {}),
            **({"Id": env[DATASET_ID_ENV]} if env.get(DATASET_ID_ENV) else {})}


def git_warnings(root: Path) -> list[str]:
    """Uncommitted or unpushed work. Not a reason to refuse: Domino captures flow.py at submission and the
    stages run the code baked into their pinned images; but a commit is the record of what was submitted."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    status = git("status", "--porcelain")
    if status.returncode != 0:
        return []  # no git checkout: a Domino File System project
    changed = status.stdout.splitlines()
    found = []
    if changed:
        listed = ", ".join(line[3:] for line in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        found.append(f"uncommitted changes ({listed}): submitted as they are; commit them to keep a record of what ran")
    ahead = git("rev-list", "--count", "@{upstream}..HEAD")  # fails harmlessly when there is no upstream
    if ahead.returncode == 0 and int(ahead.stdout.strip() or 0):
        found.append(f"{ahead.stdout.strip()} commit(s) not pushed: `git push` to keep a record of what ran")
    return found


def tier_problems(api: Api, project_id: str | None) -> list[str]:
    """The hardware tiers the registry names, by name, against this project's tiers (python-domino reads
    them there: `[{"hardwareTier": {...}}]`; the deployment-wide list is refused to non-admins)."""
    listed = (items(api.get(f"/v4/projects/{project_id}/hardwareTiers"), "hardwareTiers") if project_id
              else items(api.get("/api/hardwaretiers/v1/hardwaretiers"), "hardwareTiers"))
    names = [unwrap(tier, "hardwareTier").get("name") for tier in listed]
    missing = [f"{tier} ({', '.join(name for name, stage in STAGES.items() if stage.tier == tier)})"
               for tier in sorted({stage.tier for stage in STAGES.values()} - set(names))]
    if not missing:
        return []
    return [f"hardware tier{'s' * (len(missing) > 1)} {', '.join(missing)} {'are' if len(missing) > 1 else 'is'} not "
            f"on this deployment (it has {', '.join(map(str, names))}): set `tier` in stageflow/registry.py to one of "
            f"those"]


def number(snapshot: dict) -> int | None:
    value = next((snapshot[key] for key in NUMBER_KEYS if isinstance(snapshot.get(key), int)), None)
    return value if value and value > 0 else None


def find_dataset(api: Api, name: str, project_id: str | None) -> tuple[dict | None, list[str]]:
    """The dataset `name`: this project's own (the public API's projectIdsToInclude filter), else one shared
    with it from another project, as the user can see them all."""
    own = [unwrap(d, "dataset") for d in api.pages("/api/datasetrw/v2/datasets", "datasets",
                                                  **({"projectIdsToInclude": project_id} if project_id else {}))]
    named = [d for d in own if d.get("name") == name]
    if not named and project_id:
        named = [d for d in (unwrap(d, "dataset") for d in api.pages("/api/datasetrw/v2/datasets", "datasets"))
                 if d.get("name") == name]
    if not named:
        return None, [f"no dataset named {name} is visible to this project: create it in Domino (Data > Datasets) or "
                      f"name another one with DATASET=name:version"]
    if len(named) > 1:
        return None, [f"{len(named)} datasets named {name} are visible ({', '.join(str(d.get('id')) for d in named)}): "
                      f"rename or unshare all but one"]
    return named[0], []


def find_snapshot(api: Api, name: str, version: int | None, project_id: str | None) -> tuple[dict, list[str]]:
    """The dataset `name` and what the load tasks pin of it: Name, Version and the dataset's Id, as Domino's
    plugin takes them. Domino numbers snapshots, but its API's snapshot records carry no number; where one does
    (NUMBER_KEYS) the snapshot is checked here, otherwise Domino resolves the version when the run is submitted
    ("Dataset snapshot version 99 not found" is its answer to a wrong one). Returns what was found and the
    problems."""
    dataset, problems = find_dataset(api, name, project_id)
    if dataset is None:
        return {"name": name}, problems
    found = {"name": name, "id": dataset.get("id"),
             "own": dataset.get("projectId") == project_id if dataset.get("projectId") else None}
    snapshots = [unwrap(s, "snapshot") for s in
                 api.pages(f"/api/datasetrw/v1/datasets/{dataset.get('id')}/snapshots", "snapshots")]
    active = [s for s in snapshots if s.get("status") == ACTIVE]
    numbered = {number(s): s for s in snapshots if number(s)}
    if not active:
        said = ", ".join(sorted({str(s.get("status")) for s in snapshots})) or "none taken"
        return found, [f"dataset {name} has no active snapshot ({said}): take one in Domino (the dataset's page, "
                       f"Take snapshot), then name it with DATASET={name}:<version>"]
    if version is None:
        latest = [n for n, s in sorted(numbered.items()) if s.get("status") == ACTIVE]
        if not latest:
            return found, [f"dataset {name}: Domino's API does not say which version its latest snapshot is, so name "
                           f"one: DATASET={name}:<version> (the dataset's page lists them)"]
        return {**found, "version": latest[-1], "checked": True}, []
    if not numbered:
        return {**found, "version": version, "checked": False}, []
    snapshot = numbered.get(version)
    if snapshot is None:
        return found, [f"dataset {name} has no snapshot {version} (it has {', '.join(map(str, sorted(numbered)))}): "
                       f"name one of those (DATASET={name}:<version>) or take a new snapshot in Domino"]
    status = snapshot.get("status")
    if status in GOING:
        return found, [f"snapshot {version} of dataset {name} ({snapshot.get('id')}) is {status}: name another "
                       f"(DATASET={name}:<version>)"]
    if status != ACTIVE:
        return found, [f"snapshot {version} of dataset {name} is {status}, not {ACTIVE}: wait for it or name another"]
    return {**found, "version": version, "checked": True}, []


def mounts(name: str, version: int | None, own: bool | None, env) -> list[PurePosixPath]:
    """Where a job finds dataset `name` (see OWN_ROOTS); `own` None means not known, so both kinds."""
    roots = ([*OWN_ROOTS, env.get("DOMINO_DATASETS_DIR")] if own is not False else []) + \
            ([*SHARED_ROOTS, env.get("DOMINO_IMPORTED_DATA_DIR")] if own is not True else [])
    found = []
    for root in filter(None, dict.fromkeys(roots)):
        found.append(PurePosixPath(root) / name)
        if version:
            found.append(PurePosixPath(root) / "snapshots" / name / str(version))
    return found


def dataset_of(path: PurePosixPath, env) -> str | None:
    """The dataset whose mount holds `path`, if any: such data reaches a job only with its snapshot."""
    roots = [*OWN_ROOTS, *SHARED_ROOTS, env.get("DOMINO_DATASETS_DIR"), env.get("DOMINO_IMPORTED_DATA_DIR")]
    for root in sorted(filter(None, set(roots)), key=len, reverse=True):
        if path.is_relative_to(root):
            parts = [p for p in path.relative_to(root).parts if p not in ("snapshots",)]
            return parts[0] if parts else None
    return None


def path_problems(data_paths: list[str], dataset: dict | None, env) -> list[str]:
    """Each data path must be absolute as a job sees it, and lie under the named dataset's mount (or, with
    no dataset named, outside every dataset mount: a job sees a dataset only if its snapshot is listed)."""
    found = []
    for text in data_paths:
        path = PurePosixPath(text)
        if not path.is_absolute() or ".." in path.parts:
            found.append(f"data path {text} is not absolute as a Domino job sees it (/mnt/data/<dataset>/..., "
                         f"/mnt/code/...): give the full path")
        elif dataset is not None:
            if not dataset.get("name"):
                continue  # DATASET itself is wrong; said already
            roots = mounts(dataset["name"], dataset.get("version"), dataset.get("own"), env)
            if not any(path.is_relative_to(root) and path != root for root in roots):
                found.append(f"data path {text} is not in dataset {dataset['name']}'s mount ({', '.join(map(str, roots[:2]))}"
                             f"/...): give the path under it, or name the dataset that holds it (DATASET=name:version)")
        elif holder := dataset_of(path, env):
            found.append(f"data path {text} is in dataset {holder}, which a job mounts only if its snapshot "
                         f"is named: add DATASET={holder}:<version>")
    return found


def deployment_problems(env, record: dict | None, dataset: dict | None) -> tuple[list[str], dict | None]:
    """What this deployment holds, through its API: the recorded environment revisions, the tiers, the
    dataset (its id, and the snapshot checked where Domino's answer numbers it). Stops at the first refused or
    failed request."""
    api = domino_api.connect(env)
    found = []
    try:
        if record and not environments.record_problems(record, None):
            found += environments.domino_problems(api, record)
        found += tier_problems(api, env.get("DOMINO_PROJECT_ID"))
        if dataset:
            dataset, problems = find_snapshot(api, dataset["name"], dataset.get("version"), env.get("DOMINO_PROJECT_ID"))
            found += problems
    except DominoError as err:
        found.append(f"Domino's API ({api.via}) did not answer as expected, so nothing more could be checked; try "
                     f"again, from a workspace of this deployment: {err}")
    return found, dataset


def check(data_paths: list[str], dataset_text: str | None, env=os.environ) -> tuple[list[str], dict | None]:
    """Every problem that stands between this checkout and a remote run (empty when none does), and the
    dataset snapshot to pin (name, version, id), if one was named."""
    found = []
    missing = [name for name in WORKSPACE_VARS if not env.get(name)]
    if missing:
        found.append(f"not inside a Domino workspace ({', '.join(missing)} unset): open a workspace on this project "
                     f"and run `make submit` there")
    for module in (PLUGIN, PLUGIN_TASK):
        if not plugin_present(module):
            found.append(f"Domino's flytekit plugin ({module}) is not importable by {sys.executable}: use the Python "
                         f"of a Domino environment that ships it (DOMINO_PYTHON=...)")
            break
    found += pyflyte_problems(pyflyte_path())
    pushed = environments.read_record(environments.PUSHED)
    record = environments.read_record(environments.ENVIRONMENTS)
    try:  # the image versions both compare against are hashes over the active schema
        found += environments.push_problems(pushed) + environments.record_problems(record, pushed)
    except (SchemaError, DominoError) as err:
        found.append(str(err))
        record = None  # nothing to compare the deployment against
    dataset = None
    if dataset_text:
        try:
            name, version = parse_dataset(dataset_text)
            dataset = {"name": name, "version": version}
        except DominoError as err:
            found.append(str(err))
            dataset = {}  # named, but wrongly: no snapshot to look up, no mount to check against
    try:
        reachable = domino_api.configured(env)
    except DominoError as err:  # DOMINO_API_HOST that is not a URL: a problem like the others, listed with them
        found.append(str(err))
        reachable = False
    if reachable:
        online, dataset = deployment_problems(env, record, dataset)
        found += online
    return found + path_problems(data_paths, dataset, env), dataset


BOX = " │╭╮╰╯─┃━"  # what rich draws around a traceback, which pyflyte prints


def pyflyte_path() -> str:
    return shutil.which("pyflyte") or str(Path(sys.executable).with_name("pyflyte"))


def pyflyte_problems(pyflyte: str) -> list[str]:
    """Whether pyflyte starts under this Python. flytekit declares the Pythons it supports (1.16.31: 3.10 to
    3.12) and its CLI fails as it starts on another (3.13: no default image for it), which `pyflyte run
    --remote` would show as a traceback after every check had passed."""
    if not os.access(pyflyte, os.X_OK):
        return [f"pyflyte is not installed for {sys.executable}: use the Python of a Domino environment with flytekit "
                f"and Domino's plugin (DOMINO_PYTHON=...)"]
    try:
        proc = subprocess.run([pyflyte, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [f"pyflyte ({pyflyte}) does not start: {err}"]
    if proc.returncode == 0:
        return []
    said = [line.strip(BOX) for line in (proc.stderr + proc.stdout).splitlines() if line.strip(BOX)]
    try:
        supported = f"flytekit {metadata.version('flytekit')} supports Python {metadata.metadata('flytekit')['Requires-Python']}"
    except metadata.PackageNotFoundError:
        supported = "flytekit is not installed for it"
    return [f"pyflyte ({pyflyte}) does not start under Python {platform.python_version()} ({squeeze(said[-1] if said else '', 120)}); "
            f"{supported}: use a workspace Python it supports (DOMINO_PYTHON=python3.12)"]


def command(data_path_a: str, data_path_b: str, settings: dict[str, str | None]) -> list[str]:
    args = [pyflyte_path(), "run", "--remote", "flow.py", "model_training",
            "--data_path_a", data_path_a, "--data_path_b", data_path_b]
    for name, value in settings.items():
        if value is not None:
            args += [f"--{name}", str(value)]
    return args


def setting_problems(settings: dict[str, str | None]) -> list[str]:
    """Each training setting given that the train stage would refuse, by the stage's own rule: said before
    the run, not by train after every stage upstream of it ran."""
    found = []
    for name, value in settings.items():
        try:
            if value is not None:
                inputs.parsed(name, value)
        except inputs.InputError as err:
            found.append(f"--{name.replace('_', '-')}: {err}")
    return found


def submit(data_path_a: str, data_path_b: str, settings: dict[str, str | None] | None = None,
           dataset: str | None = None) -> int:
    settings = settings or {}
    for line in git_warnings(ROOT):
        print(f"warning: {line}", file=sys.stderr)
    found, snapshot = check([data_path_a, data_path_b], dataset)
    found = setting_problems(settings) + found
    if found:
        print("error: not submitting to Domino; to do first:\n" + "\n".join(f"  - {line}" for line in found),
              file=sys.stderr)
        return 2
    pins = {}
    if snapshot:
        pins = {DATASET_ENV: f"{snapshot['name']}:{snapshot['version']}",
                **({DATASET_ID_ENV: str(snapshot["id"])} if snapshot.get("id") else {})}
        resolved = "" if snapshot.get("checked") else ", which Domino resolves when the run is submitted"
        print(f"dataset {snapshot['name']} (id {snapshot.get('id')}): snapshot version {snapshot['version']}{resolved}; "
              f"mounted in the jobs that read the sources", flush=True)
    args = command(data_path_a, data_path_b, settings)
    print("submitting: " + shlex.join([f"{k}={v}" for k, v in pins.items()] + args), flush=True)
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **pins}).returncode
