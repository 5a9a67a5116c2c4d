"""What a task's Domino job is given, made on this machine: its image, its hardware tier's limits, the project's
code at /mnt/code, its datasets under /mnt/data, and the variables Domino sets in every run.

Sources for what a Domino job sees (docs/any-flow.md lists them): Domino's "Default Domino environment
variables" glossary and "Manage environment variables" pages (DOMINO_IS_WORKFLOW_JOB, DOMINO_PROJECT_OWNER,
DOMINO_PROJECT_NAME, DOMINO_PROJECT_ID, DOMINO_RUN_ID, DOMINO_RUN_NUMBER, DOMINO_STARTING_USERNAME,
DOMINO_USER_NAME, DOMINO_HARDWARE_TIER_ID, DOMINO_WORKING_DIR, DOMINO_IS_GIT_BASED, DOMINO_DATASETS_DIR,
DOMINO_GROUP, DOMINO_GROUP_ID); jobs run as user ubuntu (uid/gid 12574, home /mnt) with the code at /mnt/code;
a dataset is mounted at /mnt/data/<name>, a pinned snapshot also at /mnt/data/snapshots/<name>/<version> (both
seen in public flows, see docs/domino.md).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Callable

from stageflow import registry
from stageflow.dag import Dag, FlowError, Node
from stageflow.registry import Stage

UID = 12574  # Domino's job user, ubuntu
HOME = PurePosixPath("/mnt")
CODE = HOME / "code"
DATA = HOME / "data"
IMAGES_FILE = "environment-images.txt"  # in the code directory: `ENVIRONMENT NAME=IMAGE` per line


@dataclass(frozen=True)
class Tier:
    """A local stand-in for a Domino hardware tier: the limits a task's container gets."""
    cpus: float
    memory: str


# Domino defines tiers per deployment; these are the local limits for the names public flows use (Small,
# Medium, Large in Domino's templates; small-k8s and its siblings as ids). Others get DEFAULT_TIER, with a notice.
TIERS = {"Small": Tier(cpus=1, memory="2g"), "Medium": Tier(cpus=2, memory="4g"), "Large": Tier(cpus=2, memory="8g")}
TIERS.update({f"{name.lower()}-k8s": tier for name, tier in list(TIERS.items())})
DEFAULT_TIER = "Small"


def parse_mapping(text: str, what: str) -> tuple[str, str]:
    """`NAME=VALUE`, split at the last `=` (environment names hold spaces, never `=`); one line otherwise."""
    name, sep, value = text.rpartition("=")
    if not sep or not name.strip() or not value.strip():
        raise FlowError(f"{what} {text!r}: expected NAME=VALUE")
    return name.strip(), value.strip()


@dataclass
class Setup:
    """What a run gives every task: options of `stageflow run`, resolved once."""
    code: Path | None = None  # what tasks see at /mnt/code; None: the flow's own folder's git top level
    images: dict[str, str] = field(default_factory=dict)  # environment name -> local image
    datasets: dict[str, Path] = field(default_factory=dict)  # dataset name -> local folder
    notices: list[str] = field(default_factory=list)
    exclude: list[Path] = field(default_factory=list)  # the run directory and the cache, when inside the code
    dask: int | str | None = None  # --dask: workers to start for the cluster stages, or a scheduler's HOST:PORT

    def with_flow(self, flow_file: Path) -> "Setup":
        """The code directory and the mapping file that go with a flow file, unless given."""
        if self.code is None:
            self.code = git_top(flow_file.resolve().parent) or flow_file.resolve().parent
        mapping = self.code / IMAGES_FILE
        if mapping.is_file():
            for number, line in enumerate(mapping.read_text().splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    name, image = parse_mapping(line, f"{mapping}:{number}:")
                    self.images.setdefault(name, image)
        return self

    @cached_property
    def git_based(self) -> bool:
        """Whether the code directory is a git checkout: asked once a run, though every task's variables say it."""
        return git_top(self.code or Path.cwd()) is not None

    @cached_property
    def code_digest(self) -> str:
        """The content of /mnt/code, as a cache key: every file a task would see, by path and content."""
        digest = hashlib.sha256()
        for relative in code_files(self.code, self.exclude):
            digest.update(relative.encode() + b"\0")
            with open(self.code / relative, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            digest.update(b"\0")
        return digest.hexdigest()

    def dataset_digest(self, names: list[str]) -> str:
        """What the listed datasets hold, by path, size and modification time (not content: a dataset may be
        large, and is mounted read-only)."""
        digest = hashlib.sha256()
        for name in sorted(names):
            root = self.datasets[name]
            digest.update(f"{name}\0".encode())
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    st = path.stat()
                    digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return digest.hexdigest()


def git_top(folder: Path) -> Path | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True)
    except OSError:
        return None
    return Path(found.stdout.strip()) if found.returncode == 0 and found.stdout.strip() else None


def code_files(code: Path, exclude: list[Path] = ()) -> list[str]:
    """The files of the code directory a Domino job would have: in a git checkout, those git tracks or would
    track (not what .gitignore leaves out: a job checks out the repository); elsewhere, every file. Never the
    run's own directory or the cache, should they lie inside it."""
    if git_top(code):
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=code,
                                capture_output=True, check=True).stdout.split(b"\0")
        found = sorted(os.fsdecode(name) for name in listed if name)
    else:
        found = sorted(str(p.relative_to(code)) for p in code.rglob("*"))
    skipped = [Path(os.path.abspath(path)) for path in exclude]
    return [name for name in found if os.path.isfile(code / name) and not os.path.islink(code / name)
            and not any((code / name).absolute().is_relative_to(path) for path in skipped)]


def copy_code(code: Path, target: Path, owner: int | None, exclude: list[Path] = ()) -> None:
    """The code directory's files copied to `target` (reflinks where the file system has them), for one task
    to see and change as on Domino: nothing it writes reaches the user's checkout."""
    target.mkdir()
    for relative in code_files(code, exclude):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(code / relative, destination)
    if owner is not None:
        for path in [target, *target.rglob("*")]:
            os.chown(path, owner, owner, follow_symlinks=False)


@dataclass
class Job:
    """One node as the Domino job it becomes here."""
    node: Node
    image: str
    stage: Stage | None  # this project's stage, when the task is one: its code is in its image
    tier_name: str
    environment: dict[str, str]
    datasets: list[tuple[Path, PurePosixPath]]  # local folder, where the job sees it

    @property
    def tier(self) -> Tier:
        return TIERS[self.tier_name]

    @property
    def sees_code(self) -> bool:
        """/mnt/code for every task but this project's stages, which run the code their image holds (so that
        an edit elsewhere in the checkout changes neither their image nor their cache key)."""
        return self.stage is None

    @property
    def command(self) -> list[str]:
        return ["/bin/sh", "-c", self.node.task.command]


def plan(dag: Dag, setup: Setup, run_id: str, standard: Callable[[], str] | None) -> dict[str, Job]:
    """Each node's Job. Refuses, in one line and before anything runs, what no local run can give a task:
    a dataset snapshot it lists that no --dataset maps, or a Domino feature marked unsupported. Notices (the
    standard environment taking an unmapped environment, a tier not in the table) are said once each."""
    jobs, folders = {}, dag.folders()
    for number, node in enumerate(dag.nodes, 1):
        task = node.task
        for feature in task.unsupported:
            raise FlowError(f"task {node.name}: {feature}")
        missing = [name for name, _ in task.datasets if name not in setup.datasets]
        if missing:
            raise FlowError(f"task {node.name}: lists dataset snapshot {', '.join(missing)}, which this run does not "
                            f"have; give --dataset {missing[0]}=DIR (a local folder standing in for it)")
        stage = registry.by_task(task.name, task.command, task.environment)
        image = stage.image() if stage else setup.images.get(task.environment or "")
        if image is None:
            if standard is None:
                raise FlowError(f"task {node.name}: environment {task.environment!r} has no local image; map it "
                                f"with --environment-image \"{task.environment}=IMAGE\"")
            image = standard()
            notice = (f"environment {task.environment!r} has no local image: its tasks run on the standard "
                      f"environment {image}; map it with --environment-image \"{task.environment}=IMAGE\"")
            if task.environment and notice not in setup.notices:
                setup.notices.append(notice)
        tier = task.tier if task.tier in TIERS else DEFAULT_TIER
        if task.tier not in TIERS:
            notice = (f"hardware tier {task.tier!r} is not in the local table ({', '.join(TIERS)}): its tasks get "
                      f"the limits of {DEFAULT_TIER} (docs/any-flow.md)")
            if notice not in setup.notices:
                setup.notices.append(notice)
        mounts = [(setup.datasets[name], DATA / name) for name in sorted(setup.datasets)]
        mounts += [(setup.datasets[name], DATA / "snapshots" / name / str(version))
                   for name, version in task.datasets if version is not None]
        jobs[node.name] = Job(node, image, stage, tier, variables(setup, run_id, folders[node.name], number, tier),
                              mounts)
    return jobs


def user_name() -> str:
    """Who runs this, as a project owner's name; a uid with no entry in /etc/passwd (a container's) by number."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def variables(setup: Setup, run_id: str, folder: str, number: int, tier: str) -> dict[str, str]:
    """The variables Domino sets in a flow's job, with local values: the project is the code directory."""
    owner = os.environ.get("DOMINO_PROJECT_OWNER") or user_name()
    code = setup.code or Path.cwd()
    return {
        "DOMINO_IS_WORKFLOW_JOB": "true",
        "DOMINO_PROJECT_OWNER": owner,
        "DOMINO_PROJECT_NAME": code.name,
        "DOMINO_PROJECT_ID": hashlib.sha256(str(code).encode()).hexdigest()[:24],
        "DOMINO_RUN_ID": hashlib.sha256(f"{run_id}\0{folder}".encode()).hexdigest()[:24],
        "DOMINO_RUN_NUMBER": str(number),
        "DOMINO_STARTING_USERNAME": owner,
        "DOMINO_USER_NAME": owner,
        "DOMINO_HARDWARE_TIER_ID": tier,
        "DOMINO_WORKING_DIR": str(CODE),
        "DOMINO_IS_GIT_BASED": "true" if setup.git_based else "false",
        "DOMINO_DATASETS_DIR": str(DATA),
        "DOMINO_GROUP": "ubuntu",
        "DOMINO_GROUP_ID": str(UID),
        "HOME": str(HOME),
        "WORKFLOW_ROOT": "/workflow",
    }
