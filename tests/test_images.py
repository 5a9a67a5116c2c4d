"""The images: Dockerfiles, versions, docker-compose.yml, the Makefile; and, with Docker, what a rebuild after an
edit redoes, what Domino's environment layers keep of a stage image, and the local standard environment."""

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from stageflow import images, jobs, registry
from stageflow.domino import environments
from stageflow.registry import STAGES
from stageflow.runtime import schema as schemas

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from bench_images import copy_checkout, layers, remove_images  # noqa: E402


def test_each_stage_folder_holds_its_dockerfile_and_script():
    for name in STAGES:
        for part in ("Dockerfile", "main.py"):
            assert (ROOT / "stages" / name / part).is_file(), f"stages/{name}/{part}"


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_dockerfile_adds_only_its_script_to_its_runtime_image(name):
    """Everything stages share, their libraries included, is in stages/Dockerfile: a stage's own Dockerfile
    copies its script, nothing else, so no block of it is repeated in another stage's."""
    text = (ROOT / "stages" / name / "Dockerfile").read_text()
    assert re.findall(r"^FROM .*", text, re.M) == ["FROM ${RUNTIME_IMAGE}"]
    assert re.findall(r"^COPY .*", text, re.M) == [f"COPY stages/{name}/main.py /opt/stageflow/stages/{name}/main.py"]
    assert f'ENTRYPOINT ["python", "/opt/stageflow/stages/{name}/main.py"]' in text
    assert not re.search(r"^(RUN|USER|ENV)\b", text, re.M)


def test_each_stage_with_libraries_of_its_own_has_libraries_and_runtime_images_of_its_own():
    """A stage's own libraries (train's, merge's, the cluster stages' Dask) are installed in its libraries
    image, below the runtime code; stages whose locks are the same share one of each (and stages without one
    the shared ones), and the build makes each image once, parents first."""
    built = images.targets()
    tags = [tag for _, tag, *_ in built]
    locks = {s.name: [line for line in s.requirements.read_text().splitlines() if "==" in line] if s.requirements
             else None for s in STAGES.values()}
    distinct = {tuple(pins) for pins in locks.values() if pins is not None}
    assert len(tags) == len(set(tags)) == 2 * (1 + len(distinct)) + len(STAGES)
    args = {tag: buildargs for _, tag, _, _, buildargs in built}
    for stage in STAGES.values():
        runtime, libraries = stage.runtime_image(), stage.libraries_image()
        assert args[stage.image()]["RUNTIME_IMAGE"] == runtime and args[runtime]["LIBRARIES_IMAGE"] == libraries
        assert tags.index(libraries) < tags.index(runtime) < tags.index(stage.image())
        installed = args[libraries].get("REQUIREMENTS")  # a lock pinning what the stage's pins (maybe another's)
        assert (installed is None) == (stage.requirements is None)
        if installed:
            assert [line for line in (ROOT / installed).read_text().splitlines() if "==" in line] == locks[stage.name]
    for one in STAGES.values():
        for other in STAGES.values():
            assert (one.runtime_image() == other.runtime_image()) == (locks[one.name] == locks[other.name])
        assert (one.runtime_image() == registry.runtime_image()) == (locks[one.name] is None)
    assert len({s.runtime_image() for s in STAGES.values()}) < len(STAGES)  # some share (the cluster stages)


@pytest.mark.parametrize("dockerfile, needle", [
    ("libraries.Dockerfile", "ARG BASE_IMAGE=python:3.11-slim-bookworm"), ("libraries.Dockerfile", "ARG UID=12574"),
    ("libraries.Dockerfile", "PYTHONUNBUFFERED=1"), ("libraries.Dockerfile", "--no-index --find-links=/tmp/wheels"),
    ("Dockerfile", "ARG UID=12574"), ("Dockerfile", "USER ${UID}:${UID}"),
    ("Dockerfile", "COPY --chown=root:root stageflow/runtime/ /opt/stageflow/stageflow/runtime/"),
])
def test_runtime_dockerfiles_follow_the_rules(dockerfile, needle):
    assert needle in (ROOT / "stages" / dockerfile).read_text()


def test_no_code_is_copied_into_a_libraries_image():
    """An edit of the code must never rebuild the libraries: their image holds none of it."""
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", (ROOT / "stages" / "libraries.Dockerfile").read_text(), re.M)
    assert copied == ["wheels/", "stages/requirements.txt", "${REQUIREMENTS}"]


def test_dockerignore_keeps_data_tests_runs_git_and_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("data", "tests", "runs", ".git", ".venv"):
        assert entry in ignored


@pytest.fixture
def tree_copy(tmp_path, monkeypatch):
    """A copy of the checkout, with the registry reading versions (and the default schema) from it."""
    subprocess.run(f"git ls-files -z | xargs -0 cp --parents -t {tmp_path}", shell=True, cwd=ROOT, check=True)
    monkeypatch.setattr(registry, "ROOT", tmp_path)
    monkeypatch.setattr(schemas, "DEFAULT", tmp_path / "schema.toml")
    monkeypatch.delenv(schemas.ENV, raising=False)
    registry._runtime_version.cache_clear()
    yield tmp_path
    registry._runtime_version.cache_clear()


def versions():
    registry._runtime_version.cache_clear()
    return {name: registry.Stage(name, s.tier, s.description).version for name, s in STAGES.items()}


@pytest.mark.parametrize("edit, changed", [
    ("stages/load_a/main.py", {"load_a"}),
    ("stages/train/requirements.txt", {"train"}),
    ("stages/train/Dockerfile", {"train"}),
    ("stageflow/runtime/contract.py", set(STAGES)),
    ("stages/Dockerfile", set(STAGES)),
    ("stages/libraries.Dockerfile", set(STAGES)),
    ("stages/requirements.txt", set(STAGES)),
    ("stages/train/requirements.in", set()),  # the lock's source: the image installs the lock
    ("schema.toml", set()),  # the active schema: the stages are given its text as an input, no image holds it
    ("examples/wine/schema.toml", set()),  # a schema not in use
])
def test_version_changes_exactly_when_the_image_content_does(tree_copy, edit, changed):
    before = versions()
    assert versions() == before  # stable
    with open(tree_copy / edit, "a") as handle:
        handle.write("\n# changed\n")
    after = versions()
    assert {name for name in STAGES if after[name] != before[name]} == changed


def test_host_side_edits_change_no_image_version(tree_copy):
    """The runner, CLI, docs, tests and scripts are not in any image: editing them must not rebuild one,
    nor make Domino's cache (keyed on the version) miss."""
    before = versions()
    host_files = [path for path in tree_copy.rglob("*") if path.is_file() and not path.is_relative_to(tree_copy / "stages")
                  and not path.is_relative_to(tree_copy / "stageflow" / "runtime")
                  and path not in (tree_copy / "stageflow" / "__init__.py", tree_copy / "schema.toml")]
    assert {"README.md", "Makefile", "flow.py", "stageflow/cli.py", "stageflow/runner.py", "tests/conftest.py",
            "scripts/bench.py", "pyproject.toml"} <= {path.relative_to(tree_copy).as_posix() for path in host_files}
    for path in host_files:
        with open(path, "a") as handle:
            handle.write("\n# changed\n")
    (tree_copy / "stages" / "load_a" / "__pycache__").mkdir()
    (tree_copy / "stages" / "load_a" / "__pycache__" / "main.pyc").write_bytes(b"x")
    assert versions() == before


@pytest.mark.parametrize("edit, changes", [
    ("environments/standard/requirements.txt", True),
    ("environments/standard/Dockerfile", True),
    ("environments/standard/requirements.in", False),  # the lock's source
    ("stageflow/runtime/contract.py", False),  # the stages' code: not in that image
    ("stages/train/requirements.txt", False),
])
def test_the_standard_environment_version_changes_exactly_when_its_content_does(tree_copy, monkeypatch, edit, changes):
    monkeypatch.setattr(images, "STANDARD", tree_copy / "environments" / "standard")
    before = images.standard_environment()
    assert re.fullmatch(r"stageflow/standard-environment:[0-9a-f]{12}", before)
    with open(tree_copy / edit, "a") as handle:
        handle.write("\n# changed\n")
    assert (images.standard_environment() != before) is changes


def test_a_build_context_holds_only_the_wheels_its_dockerfile_installs(tree_copy, monkeypatch):
    """A wheel the image does not install would change what its `COPY wheels/` copies (so its libraries would
    be installed again after `make wheels` fetched another image's), and a stage's script needs none at all."""
    standard = tree_copy / "environments" / "standard"
    for name, value in (("ROOT", tree_copy), ("WHEELS", tree_copy / "wheels"), ("STANDARD", standard)):
        monkeypatch.setattr(images, name, value)
    runtime_locks, standard_lock = images.requirement_files(), [standard / "requirements.txt"]
    (tree_copy / "wheels").mkdir()
    for wanted in images.pins(runtime_locks + standard_lock) | {"unpinned==1.0"}:
        name, version = wanted.split("==")
        (tree_copy / "wheels" / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").touch()

    def members(dockerfile):
        with tarfile.open(fileobj=images.context(dockerfile)) as tar:
            return tar.getnames()

    def wheels(dockerfile):
        return {images.wheel_pin(Path(name)) for name in members(dockerfile) if name.startswith("wheels/")}

    assert wheels("stages/libraries.Dockerfile") == images.pins(runtime_locks)
    assert not wheels("stages/Dockerfile")
    assert wheels("environments/standard/Dockerfile") == images.pins(standard_lock)
    script = members("stages/train/Dockerfile")
    assert "stages/train/main.py" in script and "stages/Dockerfile" in script and not wheels("stages/train/Dockerfile")
    assert not {name.split("/")[0] for name in script} & {"tests", "data", "scripts", ".git", ".venv"}


def test_no_image_holds_the_schema_so_switching_it_changes_no_version(tree_copy, monkeypatch):
    """Another schema is an input of the stages, not other images: no rebuild, no push, no new Domino
    environment revision; Domino's cache still tells the schemas apart by the task input (test_flow.py)."""
    iris = versions()
    monkeypatch.setenv(schemas.ENV, str(tree_copy / "examples" / "wine" / "schema.toml"))
    assert versions() == iris


def test_the_runtime_image_copies_the_runtime_code_and_no_schema():
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+)", (ROOT / "stages" / "Dockerfile").read_text(), re.M)
    assert copied == ["stageflow/__init__.py", "stageflow/runtime/"]
    assert all("SCHEMA" not in buildargs for *_, buildargs in images.targets())


def test_compose_file_is_generated_from_the_registry():
    proc = subprocess.run([sys.executable, "-m", "stageflow", "compose-file", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_compose_file_hardens_every_service():
    import yaml

    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(spec["services"]) == {"up", *STAGES}
    for name, service in spec["services"].items():
        assert service["network_mode"] == "none" and service["read_only"] is True
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]
        if name in STAGES:
            assert f"./.workflow/{name}/inputs:/workflow/inputs:ro" in service["volumes"]
            assert service["mem_limit"] == jobs.TIERS[STAGES[name].tier].memory


def test_compose_file_names_only_the_tags_the_image_build_makes():
    """Each stage's image is the tag of its version, from a variable compose_env() sets (the file named
    `stageflow/<stage>:dev` defaults, which no build makes, and built every stage FROM one runtime image, which is
    not merge's nor train's); compose neither builds nor pulls. tests/test_containers.py has compose read it."""
    import yaml

    from stageflow import containers

    text = (ROOT / "docker-compose.yml").read_text()
    assert ":dev" not in text and "build" not in text and "RUNTIME_IMAGE" not in text
    env = containers.compose_env()
    for name, service in yaml.safe_load(text)["services"].items():
        variable, message = re.fullmatch(r"\$\{(\w+):\?([^}]+)\}", service["image"]).groups()
        assert env[variable] == STAGES.get(name, STAGES["load_a"]).image() and "compose-env" in message
        assert service["pull_policy"] == "never"


def test_compose_up_starts_no_stage():
    """`docker compose up` would start every stage at once, merge before the loads wrote its inputs: the stages
    are run one at a time (a profile `up` leaves out), and `up` starts only the service that says so."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {name for name, service in services.items() if not service.get("profiles")} == {"up"}
    assert "does not run this flow" in " ".join(services["up"]["entrypoint"])
    assert all(services[name]["profiles"] == ["stage"] and "depends_on" not in services[name] for name in STAGES)


def test_make_help_lists_every_variable_with_its_description():
    """Every variable a user may set (`NAME ?= default`) is listed with a line saying what it is for, and the
    Makefile reads no variable it does not define (RUN_ARGS was read by `make run` and listed nowhere)."""
    text = (ROOT / "Makefile").read_text()
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = dict(re.findall(r"^  ([A-Z_]+) +(.+)$", out.split("\nVariables", 1)[1], re.M))
    settable = re.findall(r"^([A-Z_]+) \?=", text, re.M)
    assert {"RUN_ARGS", "SCHEMA", "PYTEST_ARGS", "REGISTRY", "STAGE"} <= set(settable)
    assert list(listed) == settable
    assert all(len(description.split()) >= 3 for description in listed.values()), listed
    defined = set(re.findall(r"^(?:export )?([A-Z_]+) *[:?]?=", text, re.M)) | {"MAKEFILE_LIST"}
    read = set(re.findall(r"\$\(([A-Z_]+)[:)]", text))
    assert read <= defined, f"the Makefile reads {sorted(read - defined)} without defining them"
    assert re.search(r"^  KEEP_DAYS +.+ \(default 7\)$", out, re.M)


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M)
    assert {"run", "test", "images", "push", "compose", "wheels", "base-image"} <= set(targets)
    for target in targets:
        assert re.search(rf"^  {target} +\S", out, re.M), target


# ------------------------------------------------------------------ with Docker


def image_build(copy, prefix: str) -> list[str]:
    """`python -m stageflow images-build` in a copy of the checkout, as `make images` runs it: what it built."""
    proc = subprocess.run([sys.executable, "-m", "stageflow", "images-build"], cwd=copy, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(copy), "STAGEFLOW_REGISTRY": prefix})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split()[0] for line in proc.stdout.splitlines() if "  built (" in line]


def share_built_images(prefix: str) -> None:
    """This checkout's images, as `make images` built them, tagged under `prefix` too: a copy of the checkout
    then starts up to date, as a user's does, instead of building every libraries image again (minutes)."""
    client, home = images.client(), registry.registry_prefix()
    for name in images.current_images():
        try:
            image = client.images.get(name)
        except Exception:  # noqa: BLE001 - not built: the copy builds it
            continue
        image.tag(*(prefix + name[len(home):]).rsplit(":", 1))


@pytest.mark.docker
def test_a_runtime_edit_rebuilds_only_code_layers_and_a_script_edit_only_its_stage(tmp_path):
    """Libraries sit below the code: after an edit of stageflow/runtime every runtime and stage image is
    rebuilt (its version changed) but no library is installed again, so what the rebuild adds is a few hundred
    KB of code, not train's libraries (which an image FROM the runtime image reinstalled: minutes, and about
    0.9 GB a version)."""
    prefix = f"stageflow-test-{os.getpid()}"
    copy_checkout(ROOT, tmp_path)
    try:
        share_built_images(prefix)
        image_build(tmp_path, prefix)
        before = layers(prefix)
        with open(tmp_path / "stageflow" / "runtime" / "progress.py", "a") as handle:
            handle.write(f"\n# edited {os.getpid()}\n")
        assert image_build(tmp_path, prefix) == [name for name, _, dockerfile, *_ in images.targets()
                                                 if dockerfile != "stages/libraries.Dockerfile"]
        added = {step: size for step, size in layers(prefix).items() if step not in before}
        assert added and sum(added.values()) < 2_000_000, sorted(added.values())
        with open(tmp_path / "stages" / "train" / "main.py", "a") as handle:
            handle.write(f"\n# edited {os.getpid()}\n")
        assert image_build(tmp_path, prefix) == ["train"]
    finally:
        remove_images(prefix)


@pytest.mark.docker
def test_a_build_docker_refuses_is_one_line():
    with pytest.raises(images.ImageError, match=r"^build of stageflow-test/none:1 refused by Docker: .*Dockerfile[^\n]*$"):
        images.build("stageflow-test/none:1", "stages/nowhere/Dockerfile", "1", {})


@pytest.mark.docker
def test_train_keeps_its_libraries_under_dominos_environment_layers():
    """Domino builds an environment FROM the stage image plus the instructions we give it, which restate PATH
    and PYTHONPATH: every library of train's lock must still be found there, at its pinned version."""
    client = images.client()
    stage = STAGES["train"]
    dockerfile = f"FROM {stage.image()}\n{environments.dockerfile_instructions(stage)}"
    tag = f"stageflow-environment-test:{stage.version}"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    pins = [line.split()[0] for line in stage.requirements.read_text().splitlines() if "==" in line]
    script = ("import importlib.metadata as m, sklearn, skops, mlflow\n"
              f"for pin in {pins!r}:\n"
              "    name, version = pin.split('==')\n"
              "    assert m.version(name) == version, pin\n")
    try:
        client.containers.run(tag, entrypoint=["python", "-c", script], remove=True, network_mode="none",
                              read_only=True)
    finally:
        client.images.remove(tag, force=True)


# What a task of a Domino flow runs in: read-only root, a tmpfs /tmp, no network (as the runner runs it).
READ_ONLY = {"read_only": True, "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"}, "network_mode": "none",
             "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "remove": True, "stderr": True}
PLOT = ("import matplotlib, matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2]); plt.savefig('/tmp/plot.png')\n"
        "print(matplotlib.get_backend().lower(), open('/tmp/plot.png', 'rb').read(4) == b'\\x89PNG')\n")


@pytest.mark.docker
def test_the_standard_environment_runs_a_domino_job_as_ubuntu_read_only():
    """`python` and `python3` with the Standard Environment's usual libraries, as uid 12574 with home /mnt in
    /mnt/code, and matplotlib drawing headless (Agg) with no writable HOME and no warning."""
    client = images.client()
    tag = images.build_standard_environment()
    assert tag == images.standard_environment()
    command = ("id -u; echo $HOME; pwd; python3 --version; "
               "python -c 'import numpy, pandas, pyarrow, scipy, sklearn, matplotlib' && echo imported; "
               f'python -c "{PLOT}"')
    out = client.containers.run(tag, ["/bin/sh", "-c", command], user="12574:12574", **READ_ONLY).decode()
    uid, home, cwd, version, imported, plot = out.splitlines()
    assert (uid, home, cwd, imported, plot) == ("12574", "/mnt", "/mnt/code", "imported", "agg True"), out
    assert re.fullmatch(r"Python 3\.\d+\.\d+", version)
    # The runner runs as the developer's uid when it is not root: HOME stays Domino's, plots still work.
    out = client.containers.run(tag, ["/bin/sh", "-c", f'id -u; echo $HOME; python -c "{PLOT}"'], user="4321:4321",
                                **READ_ONLY).decode()
    assert out.splitlines() == ["4321", "/mnt", "agg True"], out
