"""Stage images: the wheelhouse, the builds (through the Docker SDK) and the push to a registry.

Builds never reach PyPI or a container registry: wheels are downloaded on the host first (`make wheels`)
and installed from there with --no-index, and the base image may be one built locally from Debian's
packages (`make base-image`). That is the air-gapped path, and the only one this project tests.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from stageflow.registry import ROOT, STAGES, runtime_image, runtime_version, schema_file

WHEELS = ROOT / "wheels"
BUILD = ROOT / "build"
PUSHED = BUILD / "pushed.json"
DEFAULT_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "stageflow-base:bookworm-py311"
BASE_ENV = "BASE_IMAGE"


class ImageError(Exception):
    """A build or push problem, reported as one line."""


def client():
    """A Docker client, or a clear error naming what to do when no daemon answers."""
    import docker

    try:
        found = docker.from_env()
        found.ping()
        return found
    except Exception as err:  # noqa: BLE001 - any failure here means the same thing to the user
        raise ImageError(f"no Docker daemon reachable ({' '.join(str(err).split())[:160]}); "
                         f"start one (scripts/docker-up.sh does it on Debian)") from None


def requirement_files() -> list[Path]:
    """The runtime's requirements and those of each stage that installs libraries of its own."""
    found = [ROOT / "stages" / "requirements.txt"] + [stage.folder / "requirements.txt" for stage in STAGES.values()]
    return [path for path in found if path.is_file()]


def download_wheels(dest: Path = WHEELS) -> None:
    """Fetch every stage's pinned wheels for the images' platform (CPython 3.11 on manylinux).

    Skipped when the wheelhouse already holds every pin: asking the index again costs ~15 s and would
    fail on an air-gapped machine where the wheelhouse was copied in."""
    if dest == WHEELS and WHEELS.is_dir() and not missing_wheels():
        return
    machine = platform.machine()
    platforms = [f"--platform=manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28")]
    args = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest),
            "--only-binary=:all:", "--python-version=3.11", "--implementation=cp", "--abi=cp311", *platforms]
    for req in requirement_files():
        args += ["-r", str(req)]
    dest.mkdir(exist_ok=True)
    print(f"wheels: fetching the images' pinned wheels (CPython 3.11, manylinux) into {dest} with pip "
          f"(a minute or more on an empty cache)", flush=True)
    subprocess.run(args, check=True)


def base_image() -> str:
    """BASE_IMAGE if set; else the local Debian-built base when present; else the public default."""
    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV]
    try:
        client().images.get(LOCAL_BASE)
        return LOCAL_BASE
    except Exception:  # noqa: BLE001 - not there (or no daemon): the public default it is
        return DEFAULT_BASE


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def missing_wheels() -> list[str]:
    """Pinned requirements with no wheel in the wheelhouse: the build would fail later, less clearly."""
    have = {pin(*p.name.split("-")[:2]) for p in WHEELS.glob("*.whl")}
    wanted = set()
    for req in requirement_files():
        for line in req.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                wanted.add(pin(*line.split("==")))
    return sorted(wanted - have)


def pin(name: str, version: str) -> str:
    """`name==version` with the name as PEP 503 compares it: a lock spells `jaraco-classes`, a wheel may
    spell `jaraco.classes` or `jaraco_classes`."""
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def build(tag: str, dockerfile: str, version: str, buildargs: dict[str, str], force: bool = False) -> str:
    """Build one image unless its version tag already exists; returns what happened. A build can take minutes
    and prints nothing until it ends, so its start is said first."""
    import docker

    docker_client = client()
    if not force:
        try:
            docker_client.images.get(tag)
            return "up to date"
        except docker.errors.ImageNotFound:
            pass
    # OCI labels come from here, not the Dockerfiles: one place, and a new revision never busts a layer.
    labels = {"org.opencontainers.image.title": tag.rsplit("/", 1)[-1].split(":")[0],
              "org.opencontainers.image.source": dockerfile, "org.opencontainers.image.version": version,
              "org.opencontainers.image.revision": revision()}
    print(f"building {tag} from {dockerfile}", flush=True)
    try:
        docker_client.images.build(path=str(ROOT), dockerfile=dockerfile, tag=tag, rm=True, forcerm=True,
                                   buildargs=buildargs, labels=labels)
    except docker.errors.BuildError as err:
        log = "".join(chunk.get("stream", "") for chunk in err.build_log)[-2000:]
        raise ImageError(f"build of {tag} failed: {err.msg}\n{log}") from None
    return "built"


def targets() -> list[tuple[str, str, str, str, dict[str, str]]]:
    """What `make images` builds, in order: (name, tag, Dockerfile, version, build args) of the runtime image,
    then of each stage's image on top of it."""
    runtime = runtime_image()  # IMAGE: the tag a Dockerfile's build stage is labelled with, for `stageflow gc`
    found = [("runtime", runtime, "stages/Dockerfile", runtime_version(),
              {"BASE_IMAGE": base_image(), "IMAGE": runtime, "SCHEMA": schema_in_context()})]
    return found + [(stage.name, stage.image(), f"stages/{stage.name}/Dockerfile", stage.version,
                     {"RUNTIME_IMAGE": runtime, "IMAGE": stage.image()}) for stage in STAGES.values()]


def schema_in_context() -> str:
    """The active schema's path in the build context (the repository root), for the runtime image's COPY."""
    path = schema_file().resolve()
    if not path.is_relative_to(ROOT):
        raise ImageError(f"schema {path} is outside the repository {ROOT}, the images' build context; move it "
                         f"into the repository (e.g. examples/<name>/schema.toml) to build images with it")
    relative = path.relative_to(ROOT).as_posix()
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    if relative.split("/")[0] in ignored:
        raise ImageError(f"schema {path} is in {relative.split('/')[0]}/, which .dockerignore keeps out of the "
                         f"build context; put it elsewhere in the repository (e.g. examples/<name>/schema.toml)")
    return relative


def build_all(force: bool = False) -> list[str]:
    missing = missing_wheels()
    if missing:
        raise ImageError(f"wheelhouse {WHEELS} lacks {', '.join(missing[:5])}; run `make wheels` first")
    tags = []
    for name, tag, dockerfile, version, buildargs in targets():
        started = time.perf_counter()
        what = build(tag, dockerfile, version, buildargs, force)
        size = client().images.get(tag).attrs["Size"] / 1e6
        print(f"{name:8} {tag}  {what} ({time.perf_counter() - started:.1f} s, {size:.0f} MB)", flush=True)
        tags.append(tag)
    return tags


def push_all(registry: str) -> dict[str, str]:
    """Tag each stage image into `registry` and push it; returns and records {stage: image@digest}."""
    docker_client = client()
    pushed = {}
    for stage in STAGES.values():
        local, remote = stage.image(), stage.image(registry)
        try:
            image = docker_client.images.get(local)
        except Exception:  # noqa: BLE001
            raise ImageError(f"image {local} is missing; build it with `make images`") from None
        repo, tag = remote.rsplit(":", 1)
        image.tag(repo, tag)
        digest = None
        for event in docker_client.images.push(repo, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise ImageError(f"push of {remote} failed: {event['error']}")
            digest = event.get("aux", {}).get("Digest", digest)
        # The registry holds it now: a local tag under the registry's name would keep this version alive
        # after `stageflow gc` drops it (a tag costs no space, but the image it names does).
        if remote != local:
            docker_client.images.remove(remote)
        if not digest:
            raise ImageError(f"push of {remote} reported no digest")
        pushed[stage.name] = f"{repo}@{digest}"
        print(f"{stage.name:8} {remote}  {digest}", flush=True)
    BUILD.mkdir(exist_ok=True)
    record = {"registry": registry, "images": pushed,
              "versions": {name: stage.version for name, stage in STAGES.items()}}
    PUSHED.write_text(json.dumps(record, indent=2) + "\n")
    return pushed
