"""Images: the wheelhouse, the builds (through the Docker SDK) and the push to a registry, of the stage images
and of the local standard environment.

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

from stageflow.registry import (ROOT, STAGES, content_hash, libraries_image, libraries_version, registry_prefix,
                                runtime_image, runtime_version)
from stageflow.runtime.contract import StageError

WHEELS = ROOT / "wheels"
BUILD = ROOT / "build"
PUSHED = BUILD / "pushed.json"
DEFAULT_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "stageflow-base:bookworm-py311"
BASE_ENV = "BASE_IMAGE"
STANDARD = ROOT / "environments" / "standard"  # the local standard environment: its Dockerfile and lock


class ImageError(StageError):
    """A build or push problem, reported as one line."""

    exit_status = 1


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
    return [ROOT / "stages" / "requirements.txt"] + [stage.requirements for stage in STAGES.values() if stage.requirements]


def locks_of(dockerfile: str) -> list[Path]:
    """The locks whose wheels a Dockerfile installs. Every libraries image is given those of all the stages, so
    that the build stage of the shared libraries is the same one for all of them; runtime and stage images
    install none."""
    if dockerfile == "stages/libraries.Dockerfile":
        return requirement_files()
    if dockerfile == (STANDARD / "Dockerfile").relative_to(ROOT).as_posix():
        return [STANDARD / "requirements.txt"]
    return []


def download_wheels(dest: Path = WHEELS) -> None:
    """Fetch every image's pinned wheels for the images' platform (CPython 3.11 on manylinux).

    Skipped when the wheelhouse already holds every pin: asking the index again costs ~15 s and would
    fail on an air-gapped machine where the wheelhouse was copied in."""
    locks = requirement_files() + [STANDARD / "requirements.txt"]
    if dest == WHEELS and WHEELS.is_dir() and not missing_wheels(locks):
        return
    machine = platform.machine()
    platforms = [f"--platform=manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28")]
    args = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest),
            "--only-binary=:all:", "--python-version=3.11", "--implementation=cp", "--abi=cp311", *platforms]
    for req in locks:
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


def missing_wheels(locks: list[Path]) -> list[str]:
    """Pinned requirements of `locks` with no wheel in the wheelhouse: the build would fail later, less clearly."""
    return sorted(pins(locks) - {wheel_pin(path) for path in WHEELS.glob("*.whl")})


def pins(locks: list[Path]) -> set[str]:
    found = set()
    for req in locks:
        for line in req.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                found.add(pin(*line.split("==")))
    return found


def wheel_pin(path: Path) -> str:
    return pin(*path.name.split("-")[:2])


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
    missing = missing_wheels(locks_of(dockerfile))
    if missing:
        raise ImageError(f"wheelhouse {WHEELS} lacks {', '.join(missing[:5])}; run `make wheels` first")
    # OCI labels come from here, not the Dockerfiles: one place, and a new revision never busts a layer.
    labels = {"org.opencontainers.image.title": tag.rsplit("/", 1)[-1].split(":")[0],
              "org.opencontainers.image.source": dockerfile, "org.opencontainers.image.version": version,
              "org.opencontainers.image.revision": revision()}
    print(f"building {tag} from {dockerfile}", flush=True)
    try:
        docker_client.images.build(fileobj=context(dockerfile), custom_context=True, dockerfile=dockerfile, tag=tag,
                                   rm=True, forcerm=True, buildargs=buildargs, labels=labels)
    except docker.errors.BuildError as err:
        log = "".join(chunk.get("stream", "") for chunk in err.build_log)[-2000:]
        raise ImageError(f"build of {tag} failed: {err.msg}\n{log}") from None
    except docker.errors.APIError as err:  # refused before building: a Dockerfile missing from the context...
        raise ImageError(f"build of {tag} refused by Docker: {' '.join(str(err.explanation or err).split())}") from None
    return "built"


def context(dockerfile: str):
    """The build context: the repository as .dockerignore leaves it, with only the wheels of the Dockerfile's
    locks. Any other wheel (another image's, an older pin's) would change what `COPY wheels/` copies, and so
    install the libraries again for nothing; and sending 150 MB of wheels to build a stage's script would cost
    a second or two every time."""
    from docker.utils import tar

    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    wanted = pins(locks_of(dockerfile))
    ignored += [f"wheels/{path.name}" for path in WHEELS.glob("*.whl") if wheel_pin(path) not in wanted]
    return tar(str(ROOT), exclude=[line for line in ignored if line and not line.startswith("#")],
               dockerfile=(dockerfile, None))


def targets() -> list[tuple[str, str, str, str, dict[str, str]]]:
    """What `make images` builds, in order: (name, tag, Dockerfile, version, build args) of each libraries
    image, then each runtime image on it (the shared ones first, then one per stage with libraries of its own),
    then each stage's image on its runtime image. IMAGE: the tag a Dockerfile's build stages are labelled with,
    for `stageflow gc`."""
    base = base_image()
    sets = {None: "", **{stage.requirements: f"+{stage.name}" for stage in STAGES.values() if stage.requirements}}
    libraries, runtimes = {}, {}
    for lock, suffix in sets.items():
        own = {"REQUIREMENTS": lock.relative_to(ROOT).as_posix()} if lock else {}
        tag = libraries_image(requirements=lock)
        libraries.setdefault(tag, (f"libraries{suffix}", tag, "stages/libraries.Dockerfile", libraries_version(lock),
                                   {"BASE_IMAGE": base, "IMAGE": tag, **own}))
        runtimes.setdefault(runtime_image(requirements=lock), (
            f"runtime{suffix}", runtime_image(requirements=lock), "stages/Dockerfile", runtime_version(lock),
            {"LIBRARIES_IMAGE": tag}))
    return [*libraries.values(), *runtimes.values()] + [
        (stage.name, stage.image(), f"stages/{stage.name}/Dockerfile", stage.version,
         {"RUNTIME_IMAGE": stage.runtime_image(), "IMAGE": stage.image()}) for stage in STAGES.values()]


def build_shown(name: str, tag: str, dockerfile: str, version: str, buildargs: dict[str, str], force: bool) -> str:
    """build(), with one line saying what happened, how long it took and the image's size."""
    started = time.perf_counter()
    what = build(tag, dockerfile, version, buildargs, force)
    size = client().images.get(tag).attrs["Size"] / 1e6
    print(f"{name:16} {tag}  {what} ({time.perf_counter() - started:.1f} s, {size:.0f} MB)", flush=True)
    return tag


def build_all(force: bool = False) -> list[str]:
    return [build_shown(*target, force) for target in targets()]


def standard_environment(registry: str | None = None) -> str:
    """The tag of the local standard environment: the image a task of a Domino flow runs on when its
    environment has no local image. Its version is a hash of what it holds (environments/standard/)."""
    return f"{registry_prefix(registry)}/standard-environment:{content_hash([STANDARD])}"


def build_standard_environment(force: bool = False) -> str:
    """Build the local standard environment unless its version tag exists (`make standard-environment`);
    returns its tag."""
    tag = standard_environment()
    dockerfile = (STANDARD / "Dockerfile").relative_to(ROOT).as_posix()
    return build_shown("standard", tag, dockerfile, tag.rsplit(":", 1)[1],
                       {"BASE_IMAGE": base_image(), "IMAGE": tag}, force)


def current_images(registry: str | None = None) -> list[str]:
    """Every image of the code checked out, under `registry`'s prefix: libraries, runtime and stage images, the
    standard environment. What `stageflow gc` keeps."""
    bases = [(libraries_image(registry), runtime_image(registry))]
    bases += [(stage.libraries_image(registry), stage.runtime_image(registry)) for stage in STAGES.values()]
    return [*dict.fromkeys(tag for pair in bases for tag in pair), *(stage.image(registry) for stage in STAGES.values()),
            standard_environment(registry)]


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
