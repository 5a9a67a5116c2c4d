"""Runner backends that run each stage in its real image: through the Docker SDK, or through compose.

A stage's container gets only what a Domino job would: its /workflow tree (inputs read-only), the source
files its inputs name (read-only), no network, the limits of its hardware tier, and no privileges.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Iterator

from stageflow.dag import Dag, Node
from stageflow.images import ImageError, client
from stageflow.runner import Outcome, ProcessHandle, RunError, kill_after, runner_alive, runner_identity
from stageflow.registry import ROOT, STAGES, TIERS, runtime_image

STAGE_UID = 12574  # Domino's ubuntu user, which the images are built for
RUN_LABEL, RUNNER_LABEL = "io.stageflow.run", "io.stageflow.runner"  # the run directory; host:pid:start
TMPFS = "rw,nosuid,nodev,size=1g"
HARDENING = {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
             "network_mode": "none", "tmpfs": {"/tmp": TMPFS}}


def stage_user() -> str:
    """The developer's own uid when not root (outputs stay theirs); Domino's uid when root."""
    uid = os.getuid()
    return f"{STAGE_UID}:{STAGE_UID}" if uid == 0 else f"{uid}:{os.getgid()}"


def prepare_tree(tree: Path) -> None:
    """Let the container's user write its outputs directory (and nothing else)."""
    outputs = tree / "outputs"
    if os.getuid() == 0:
        os.chown(outputs, STAGE_UID, STAGE_UID)


def volumes(tree: Path, mounts: list[Path]) -> dict[str, dict]:
    found = {str(tree / "inputs"): {"bind": "/workflow/inputs", "mode": "ro"},
             str(tree / "outputs"): {"bind": "/workflow/outputs", "mode": "rw"}}
    for path in mounts:
        found[str(path)] = {"bind": str(path), "mode": "ro"}
    return found


def _peak_memory_mb(container_id: str) -> float | None:
    """The cgroup's high-water mark (cgroup v1 or v2), readable until the container is removed."""
    for path in (f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak"):
        try:
            return round(int(Path(path).read_text()) / 2**20, 1)
        except (OSError, ValueError):
            continue
    return None


class DockerBackend:
    """Each stage in its image, started through the Docker SDK."""

    name = "docker"

    def __init__(self):
        try:
            self.client = client()
        except ImageError as err:
            raise RunError(str(err)) from None

    def check(self, dag: Dag) -> None:
        """Every image must be there before the first stage starts, not discovered missing halfway."""
        import docker

        for node in dag.nodes:
            try:
                self.client.images.get(node.stage.image())
            except docker.errors.ImageNotFound:
                raise RunError(f"image {node.stage.image()} for stage {node.name} is missing; "
                               f"build it with `make images`") from None

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        """Before the first stage: remove the containers a dead runner (kill -9) left on this directory,
        which would otherwise write into it."""
        for container in self.client.containers.list(all=True, sparse=True,
                                                     filters={"label": f"{RUN_LABEL}={run_dir}"}):
            if not runner_alive((container.attrs.get("Labels") or {}).get(RUNNER_LABEL)):
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001 - already gone is fine
                    pass

    def start(self, node: Node, tree: Path, timeout: float, mounts: list[Path]) -> "ContainerHandle":
        prepare_tree(tree)
        tier = TIERS[node.stage.tier]
        container = self.client.containers.create(
            node.stage.image(), user=stage_user(), volumes=volumes(tree, mounts),
            environment={"WORKFLOW_ROOT": "/workflow"}, mem_limit=tier.memory, memswap_limit=tier.memory,
            nano_cpus=int(tier.cpus * 1e9), labels={RUN_LABEL: str(tree.parent), RUNNER_LABEL: runner_identity()},
            **HARDENING)
        container.start()
        return ContainerHandle(container, timeout)


class ContainerHandle:
    def __init__(self, container, timeout: float):
        self.container = container
        self.killed_for: str | None = None
        self.peak: float | None = None
        self.timer = kill_after(timeout, self.kill)

    def lines(self) -> Iterator[str]:
        pending = ""
        for chunk in self.container.logs(stream=True, follow=True):
            pending += chunk.decode("utf-8", "replace")
            *complete, pending = pending.split("\n")
            for line in complete:
                yield line + "\n"
            self.peak = _peak_memory_mb(self.container.id) or self.peak
        if pending:
            yield pending

    def wait(self) -> Outcome:
        try:
            status = self.container.wait()["StatusCode"]
            self.peak = _peak_memory_mb(self.container.id) or self.peak
            self.container.reload()
            oom = self.container.attrs["State"].get("OOMKilled")
        finally:
            self.timer.cancel()
            self.container.remove(force=True)
        return Outcome(status, self.killed_for or ("oom" if oom else None), self.peak)

    def kill(self, reason: str = "interrupted") -> None:
        self.killed_for = self.killed_for or reason
        try:
            self.container.kill()
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


class ComposeBackend:
    """Each stage as `docker-compose run` of its service in docker-compose.yml (v1 or v2)."""

    name = "compose"

    def __init__(self):
        self.command = compose_command()
        self.docker = DockerBackend()

    def check(self, dag: Dag) -> None:
        self.docker.check(dag)

    def prepare_run(self, run_dir: Path, lock_fd: int) -> None:
        self.docker.prepare_run(run_dir, lock_fd)

    def start(self, node: Node, tree: Path, timeout: float, mounts: list[Path]) -> "ComposeHandle":
        if tree.parent.resolve() != (ROOT / ".workflow").resolve():
            raise RunError("the compose backend runs in .workflow/, where docker-compose.yml mounts the trees")
        prepare_tree(tree)
        name = f"stageflow-{node.name}-{os.getpid()}"
        args = [*self.command, "run", "--rm", "-T", "--name", name, "-l", f"{RUN_LABEL}={tree.parent}",
                "-l", f"{RUNNER_LABEL}={runner_identity()}"]
        for path in mounts:
            args += ["-v", f"{path}:{path}:ro"]
        proc = subprocess.Popen([*args, node.name], cwd=ROOT, env={**os.environ, **compose_env()},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        return ComposeHandle(proc, name, timeout)


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


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else Debian's `docker-compose` (v1.29)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if subprocess.run(["docker-compose", "version"], capture_output=True).returncode == 0:
        return ["docker-compose"]
    raise RunError("neither `docker compose` nor `docker-compose` is installed")


def compose_env() -> dict[str, str]:
    """Image tags for docker-compose.yml, from the stage registry (the file itself holds no versions)."""
    env = {f"{name.upper()}_IMAGE": stage.image() for name, stage in STAGES.items()}
    env["RUNTIME_IMAGE"] = runtime_image()
    env["STAGE_USER"] = stage_user()
    return env


def shell_env() -> str:
    """`export` lines for using docker-compose.yml by hand with this checkout's image tags."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in compose_env().items())


def compose_spec() -> dict:
    """docker-compose.yml, generated from the stage registry so tiers and names have one source."""
    services = {}
    for name, stage in STAGES.items():
        tier = TIERS[stage.tier]
        services[name] = {
            "image": f"${{{name.upper()}_IMAGE:-stageflow/{name.replace('_', '-')}:dev}}",
            "build": {"context": ".", "dockerfile": f"stages/{name}/Dockerfile",
                      "args": {"RUNTIME_IMAGE": "${RUNTIME_IMAGE:-stageflow/runtime:dev}"}},
            "user": f"${{STAGE_USER:-{STAGE_UID}:{STAGE_UID}}}",
            "environment": {"WORKFLOW_ROOT": "/workflow"},
            "network_mode": "none",
            "read_only": True,
            "tmpfs": [f"/tmp:{TMPFS}"],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "mem_limit": tier.memory,
            "memswap_limit": tier.memory,
            "cpus": tier.cpus,
            "volumes": [f"./.workflow/{name}/inputs:/workflow/inputs:ro",
                        f"./.workflow/{name}/outputs:/workflow/outputs"],
        }
    return {"services": services}


COMPOSE_HEADER = """\
# Generated by `stageflow compose-file` from stageflow/registry.py: edit that, then regenerate.
# One service per stage, each with a fake /workflow tree under .workflow/<stage>/ (inputs read-only).
# `make compose` runs the whole flow through it; by hand (after `eval "$(stageflow compose-env)"`):
#   docker compose run --rm merge        (or docker-compose run --rm merge, compose v1)
"""


def compose_file() -> str:
    import yaml

    return COMPOSE_HEADER + yaml.safe_dump(compose_spec(), sort_keys=False, width=110)
