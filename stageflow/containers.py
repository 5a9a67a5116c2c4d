"""Runner backends that run each task in its real image: through the Docker SDK, or through compose.

A task's container gets only what a Domino job would: its command run by a shell as Domino's job user, its
/workflow tree (inputs read-only), /mnt as the job's home with the project's code at /mnt/code (a copy of its
own) and its datasets under /mnt/data (read-only), the source files its inputs name (read-only), Domino's job
variables, no network, the limits of its hardware tier, and no privileges.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Iterator

from stageflow.dag import Dag, normalise
from stageflow.backends import Outcome, ProcessHandle, kill_after, runner_alive, runner_identity
from stageflow.images import ImageError, client
from stageflow.jobs import CODE, HOME, TIERS, Job
from stageflow.registry import ROOT, STAGES
from stageflow.rundir import RunError
from stageflow.runtime.contract import StageError, not_a_regular_file

COMPOSE_DIR = ROOT / ".workflow"  # where docker-compose.yml mounts each stage's tree from

STAGE_UID = 12574  # Domino's ubuntu user, which the images are built for
RUN_LABEL, RUNNER_LABEL = "io.stageflow.run", "io.stageflow.runner"  # the run directory; host:pid:start
TMPFS = "rw,nosuid,nodev,size=1g"
HOME_BYTES = 1 << 30  # the job's home, /mnt: what a task writes beside its code and outputs
HARDENING = {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
             "network_mode": "none", "tmpfs": {"/tmp": TMPFS}}


def stage_uid() -> int:
    """The developer's own uid when not root (outputs stay theirs); Domino's uid when root."""
    return STAGE_UID if os.getuid() == 0 else os.getuid()


def stage_user() -> str:
    uid = stage_uid()
    return f"{uid}:{STAGE_UID if uid == STAGE_UID else os.getgid()}"


def prepare_tree(tree: Path) -> None:
    """Let the container's user write its outputs directory (and nothing else)."""
    outputs = tree / "outputs"
    if os.getuid() == 0:
        os.chown(outputs, STAGE_UID, STAGE_UID)


# A data file is mounted at the path the user gave, so that every message and the snapshot's provenance
# name that path (as on Domino, where a job sees /mnt/data/... at its own path). These directories belong to
# the image: a file mounted in one would hide the image's own file of that name (system and code
# directories, the contract's tree) or be out of the stage user's reach (/root is closed to it).
IMAGE_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
              "/sbin", "/sys", "/usr", "/var", "/opt/stageflow", "/opt/venv", "/opt/stage", "/workflow")


def data_file(path: Path) -> Path:
    """The real file behind a data path a stage container may be given, or a one-line refusal.

    Only a regular file (after following links) is mounted, read-only: never a socket (the Docker socket
    would hand the stage the daemon), a device, a FIFO or a directory."""
    what = not_a_regular_file(path)
    if what:
        raise StageError(f"data path {path}: {what}; only regular files are mounted into a stage container")
    target = PurePosixPath(os.path.normpath(path))
    inside = next((d for d in IMAGE_DIRS if target.is_relative_to(d)), None)
    if inside:
        raise StageError(f"data path {path}: inside {inside}, which belongs to the stage image; move the file "
                         f"elsewhere (e.g. under /home, /mnt or /srv) or use --backend host")
    return Path(os.path.realpath(path))


def mounts(job: Job, tree: Path, files: list[Path]) -> list:
    """The task's tree at /workflow (inputs read-only), its home /mnt (a tmpfs, as a job's is its own) with its
    copy of the code at /mnt/code and its datasets read-only under /mnt/data, and each data file read-only at
    its own path. Docker mounts them parents first.

    Mount objects, not `src:dst:mode` strings: a path holding `:` is then just a path."""
    from docker.types import Mount

    found = [Mount("/workflow/inputs", str(tree / "inputs"), type="bind", read_only=True),
             Mount("/workflow/outputs", str(tree / "outputs"), type="bind"),
             Mount(str(HOME), None, type="tmpfs", tmpfs_size=HOME_BYTES, tmpfs_mode=0o1777)]
    if job.sees_code:
        found.append(Mount(str(CODE), str(tree / "code"), type="bind"))
    found += [Mount(str(inside), str(folder), type="bind", read_only=True) for folder, inside in job.datasets]
    return found + [Mount(str(path), str(data_file(path)), type="bind", read_only=True) for path in files]


def _peak_memory_mb(container_id: str) -> float | None:
    """The cgroup's high-water mark (cgroup v1 or v2), readable until the container is removed."""
    for path in (f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak"):
        try:
            return round(int(Path(path).read_text()) / 2**20, 1)
        except (OSError, ValueError):
            continue
    return None


# The reaper: a shell of its own session (Ctrl-C to the runner's terminal does not reach it) that waits for its
# stdin to close, which happens when the runner closes it or dies in any way, then removes every container the
# runner's label names. The docker CLI in a shell: it needs no Python (nor the runner's), and starts at once.
REAPER = 'cat >/dev/null; ids=$(docker ps -aq --filter "label=$1"); [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1'


class DockerBackend:
    """Each stage in its image, started through the Docker SDK."""

    name = "docker"

    def __init__(self):
        try:
            self.client = client()
        except ImageError as err:
            raise RunError(str(err)) from None

    def check(self, jobs: list[Job]) -> None:
        """Every image must be there before the first task starts, not discovered missing halfway."""
        self.ids = {}
        for job in jobs:
            if job.image not in self.ids:
                self.ids[job.image] = self.image_id(job.image, f"task {job.node.name}")

    def image_id(self, image: str, user: str = "a task") -> str:
        import docker

        if image in getattr(self, "ids", {}):
            return self.ids[image]
        try:
            return self.client.images.get(image).id
        except docker.errors.ImageNotFound:
            how = ("`make images`" if image.split(":")[0] in {stage.image().split(":")[0] for stage in STAGES.values()}
                   else "`make standard-environment`" if "standard-environment" in image
                   else f"`docker build -t {image} ...` (or `docker load`)")
            raise RunError(f"image {image} for {user} is missing; build it with {how}") from None
        except docker.errors.APIError as err:
            raise RunError(f"image {image} for {user}: {' '.join(str(err.explanation or err).split())[:200]}") from None

    def owner(self) -> int | None:
        return STAGE_UID if os.getuid() == 0 else None

    def warm(self, job: Job, tree: Path) -> None:
        """A container starts when its task does: its tree is mounted when it is created."""

    def finish_run(self) -> None:
        """The run is over: the reaper finds nothing of it left and ends."""
        reaper, self.reaper = getattr(self, "reaper", None), None
        if reaper is not None:
            reaper.stdin.close()
            reaper.wait()

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        """Before the first stage: start the reaper that removes this runner's containers the moment it ends
        however it ends (kill -9 included: containers are the daemon's children, not ours, so no signal reaches
        them when we die); then remove the containers a dead runner left on this directory."""
        self.reaper = subprocess.Popen(["sh", "-c", REAPER, "reaper", f"{RUNNER_LABEL}={runner_identity()}"],
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        for container in self.client.containers.list(all=True, sparse=True,
                                                     filters={"label": f"{RUN_LABEL}={run_dir}"}):
            if not runner_alive((container.attrs.get("Labels") or {}).get(RUNNER_LABEL)):
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001 - already gone is fine
                    pass

    def start(self, job: Job, tree: Path, timeout: float, files: list[Path]) -> "ContainerHandle":
        import docker

        given = mounts(job, tree, files)  # refuses a bad data path before any container exists
        prepare_tree(tree)
        tier = job.tier
        hardening = {**HARDENING, "tmpfs": {"/tmp": TMPFS}}
        container = self.client.containers.create(
            job.image, entrypoint=job.command, command=[], user=stage_user(), mounts=given,
            working_dir=str(CODE) if job.sees_code else None, environment=job.environment,
            mem_limit=tier.memory, memswap_limit=tier.memory, nano_cpus=int(tier.cpus * 1e9),
            labels={RUN_LABEL: str(tree.parent), RUNNER_LABEL: runner_identity()}, **hardening)
        try:
            container.start()
        except BaseException as err:
            container.remove(force=True)  # a container that never ran must not stay behind as `Created`
            if isinstance(err, docker.errors.APIError):
                reason = " ".join(str(err.explanation or err).split())
                raise StageError(f"container of task {job.node.name} did not start: {reason}") from None
            raise
        return ContainerHandle(container, timeout)


class ContainerHandle:
    def __init__(self, container, timeout: float):
        self.container = container
        self.killed_for: str | None = None
        self.peak: float | None = None
        self.timer = kill_after(timeout, self.kill)

    def lines(self) -> Iterator[str]:
        pending = ""
        try:
            for chunk in self.container.logs(stream=True, follow=True):
                pending += chunk.decode("utf-8", "replace")
                *complete, pending = pending.split("\n")
                for line in complete:
                    yield line + "\n"
                self.peak = _peak_memory_mb(self.container.id) or self.peak
        except GeneratorExit:  # the reader gave up on the stage (its own error): nobody will wait() for it
            self.kill("abandoned")
            self._remove()
            raise
        if pending:
            yield pending

    def wait(self) -> Outcome:
        try:
            status = self.container.wait()["StatusCode"]
            self.peak = _peak_memory_mb(self.container.id) or self.peak
            self.container.reload()
            oom = self.container.attrs["State"].get("OOMKilled")
        finally:
            self._remove()
        return Outcome(status, self.killed_for or ("oom" if oom else None), self.peak)

    def _remove(self) -> None:
        import docker

        self.timer.cancel()
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:  # already removed
            pass

    def kill(self, reason: str = "interrupted") -> None:
        self.killed_for = self.killed_for or reason
        try:
            self.container.kill()
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


class ComposeBackend:
    """Each of this project's stages as `docker-compose run` of its service in docker-compose.yml (v1 or v2),
    which is generated from the stage registry: a task of another flow has no service there."""

    name = "compose"

    def __init__(self):
        self.command = compose_command()
        self.docker = DockerBackend()

    def check(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.stage is None:
                raise RunError(f"task {job.node.name} is not one of this project's stages, so docker-compose.yml "
                               f"has no service for it: use --backend docker")
        self.docker.check(jobs)

    def finish_run(self) -> None:
        self.docker.finish_run()

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        if run_dir.resolve() != COMPOSE_DIR.resolve():
            raise RunError(f"the compose backend runs in {COMPOSE_DIR}, where docker-compose.yml mounts the trees; "
                           f"leave out --run-dir (or give --run-dir {os.path.relpath(COMPOSE_DIR)})")
        self.docker.prepare_run(run_dir, lock_fd)

    def owner(self) -> int | None:
        return self.docker.owner()

    def warm(self, job: Job, tree: Path) -> None:
        self.docker.warm(job, tree)

    def image_id(self, image: str) -> str:
        return self.docker.image_id(image)

    def start(self, job: Job, tree: Path, timeout: float, files: list[Path]) -> "ComposeHandle":
        name = f"stageflow-{job.stage.name}-{os.getpid()}"
        variables = [arg for key, value in job.environment.items() for arg in ("-e", f"{key}={value}")]
        args = [*self.command, "run", "--rm", "-T", "--name", name, "-l", f"{RUN_LABEL}={tree.parent}",
                "-l", f"{RUNNER_LABEL}={runner_identity()}", *variables, *data_volumes(files)]
        prepare_tree(tree)
        proc = subprocess.Popen([*args, job.stage.name], cwd=ROOT, env={**os.environ, **compose_env()},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        return ComposeHandle(proc, name, timeout)


def data_volumes(files: list[Path]) -> list[str]:
    """`-v` options giving a compose service each data file read-only at its own path (see mounts())."""
    args = []
    for path in files:
        if ":" in str(path):
            raise StageError(f"data path {path}: holds ':', which `docker compose run -v` reads as a "
                             f"separator; rename it or use --backend docker")
        args += ["-v", f"{data_file(path)}:{path}:ro"]
    return args


class ComposeHandle(ProcessHandle):
    """The compose client as a process; its container is what must go when the stage is stopped."""

    def __init__(self, proc: subprocess.Popen, name: str, timeout: float):
        self.name = name
        super().__init__(proc, timeout)

    def wait(self) -> Outcome:
        outcome = super().wait()
        outcome.peak_rss_mb = None  # that of the compose client, not of the stage
        return outcome

    def kill(self, reason: str = "interrupted") -> None:
        """Killing the compose client would leave its container running: remove the container itself."""
        self.killed_for = self.killed_for or reason
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)


def one_stage(dag: Dag, name: str, run_dir: Path | None, given: dict[str, str], params: dict[str, str]) -> Dag:
    """Stage `name` of the flow alone, each input taken from `given` (NAME=VALUE), else from `run_dir`:
    an upstream stage's output there, or a flow input as that run had it (run.json), else from `params`."""
    from stageflow import records

    node = dag.node(name)
    unknown = sorted(set(given) - set(node.inputs))
    if unknown:
        raise RunError(f"input {', '.join(unknown)}: not an input of stage {name} ({', '.join(node.inputs)})")
    if run_dir is not None and not run_dir.is_dir():
        raise RunError(f"run directory {run_dir}: not found")
    if run_dir is not None and (run_dir / "run.json").is_file():
        params = {**params, **records.read(run_dir).get("params", {})}
    values, folders = {}, dag.folders()
    for key, (kind, src) in node.inputs.items():
        if key in given:
            value = given[key]
        elif src.stage:
            if run_dir is None:
                raise RunError(f"input {key}: give a run directory holding {src.stage}'s outputs (--from) or "
                               f"--input {key}=PATH")
            value = run_dir / folders[src.stage] / "outputs" / src.output
            if not value.is_file():
                raise RunError(f"input {key}: {value} is not a file; run the flow first (`make run`) or give "
                               f"--input {key}=PATH")
        elif src.flow_input:
            value = params.get(src.flow_input, dag.defaults.get(src.flow_input))
        else:
            value = src.value
        if value is None:
            raise RunError(f"input {key}: no value; give --input {key}=VALUE")
        if kind is str and isinstance(value, str) and value and os.path.isfile(value):
            value = os.path.abspath(value)  # a data path: absolute, since the stage runs from another directory
        values[key] = normalise(f"input {key}", kind, value)
    return dag.only(name, values)


def by_hand(dag: Dag) -> str:
    """The shell command that runs a one-stage DAG's stage again, once compose_stage has prepared its tree."""
    node = dag.nodes[0]
    files = [Path(src.value) for kind, src in node.inputs.values() if kind is str and os.path.isfile(src.value)]
    python = os.path.relpath(sys.executable)
    return (f'eval "$({python} -m stageflow compose-env)" && '
            + shlex.join([*compose_command(), "run", "--rm", *data_volumes(files), node.name]))


def compose_stage(dag: Dag, timeout: float):
    """Run a one-stage DAG through docker-compose.yml in .workflow/, as the runner runs any stage: its tree
    prepared (inputs in place, outputs writable by the container's user), its outcome checked."""
    from stageflow.runner import Run

    run = Run(dag, COMPOSE_DIR, ComposeBackend(), {}, timeout=timeout)
    run.execute()
    return run


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else Debian's `docker-compose` (v1.29)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if subprocess.run(["docker-compose", "version"], capture_output=True).returncode == 0:
        return ["docker-compose"]
    raise RunError("neither `docker compose` nor `docker-compose` is installed")


def image_variable(name: str) -> str:
    return f"{name.upper()}_IMAGE"


def compose_env() -> dict[str, str]:
    """Image tags for docker-compose.yml, from the stage registry (the file itself holds no versions)."""
    env = {image_variable(name): stage.image() for name, stage in STAGES.items()}
    env["STAGE_USER"] = stage_user()
    return env


def shell_env() -> str:
    """`export` lines for using docker-compose.yml by hand with this checkout's image tags."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in compose_env().items())


# What compose says when the tags are not set (compose interpolates the message as it is, `$` included).
TAGS_UNSET = ("image tags not set (make compose sets them); by hand: "
              "eval \"`.venv/bin/python -m stageflow compose-env`\"")
# What `docker compose up` says instead of starting every stage at once: none would find its inputs yet.
UP_REFUSED = ("docker compose up does not run this flow: it would start every stage at once, before its inputs "
              "exist. Run the flow with `make compose` (each stage once its inputs are ready), one stage with "
              "`make compose-stage STAGE=merge`, or by hand `docker compose run --rm STAGE`")


def compose_spec() -> dict:
    """docker-compose.yml, generated from the stage registry so tiers and names have one source.

    A service per stage, started only one at a time (`run`): the stages are in a profile, which `up` leaves
    out, since their inputs are prepared stage by stage by the runner (`make compose`), not by compose; `up`
    starts only a service saying so. Each image is the tag its version names, from the environment
    (compose_env: `make compose` and `make compose-stage` set it), so no tag is written here that a build
    did not make; compose builds nothing (an image tag is the hash of its content, which `make images` puts
    there), nor pulls."""
    def hardened(tier) -> dict:
        return {"user": f"${{STAGE_USER:-{STAGE_UID}:{STAGE_UID}}}", "network_mode": "none", "read_only": True,
                "tmpfs": [f"/tmp:{TMPFS}"], "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
                "mem_limit": tier.memory, "memswap_limit": tier.memory, "cpus": tier.cpus}

    first = next(iter(STAGES))
    services = {"up": {"image": f"${{{image_variable(first)}:?{TAGS_UNSET}}}", "pull_policy": "never",
                       "entrypoint": ["python", "-c", f"import sys; sys.exit({UP_REFUSED!r})"],
                       **hardened(TIERS[STAGES[first].tier])}}
    for name, stage in STAGES.items():
        services[name] = {
            "image": f"${{{image_variable(name)}:?{TAGS_UNSET}}}",
            "pull_policy": "never",
            "profiles": ["stage"],
            "environment": {"WORKFLOW_ROOT": "/workflow"},
            **hardened(TIERS[stage.tier]),
            "volumes": [f"./.workflow/{name}/inputs:/workflow/inputs:ro",
                        f"./.workflow/{name}/outputs:/workflow/outputs"],
        }
    return {"services": services}


COMPOSE_HEADER = """\
# Generated by `stageflow compose-file` from stageflow/registry.py: edit that, then regenerate.
# One service per stage, each with a fake /workflow tree under .workflow/<stage>/ (inputs read-only), run one
# at a time: `make compose` runs the whole flow through it, each stage once its inputs are ready (`docker
# compose up` does not: it says so); `make compose-stage STAGE=merge` runs one stage, its tree prepared from
# runs/latest (or FROM=RUN_DIR, INPUTS="name=path ..."). The image tags come from the environment; by hand:
#   eval "$(.venv/bin/python -m stageflow compose-env)" && docker compose run --rm merge   (compose v1: docker-compose)
"""


def compose_file() -> str:
    import yaml

    return COMPOSE_HEADER + yaml.safe_dump(compose_spec(), sort_keys=False, width=110)
