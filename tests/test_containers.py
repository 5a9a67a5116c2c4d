"""The stages in their real images: docker backend, compose harness, hardening, push to a real registry."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import docker
import pytest

from stageflow import dag as dag_module
from stageflow import images
from stageflow.dag import Dag
from stageflow.runner import Run, RunError
from stageflow import jobs
from stageflow.jobs import TIERS, Tier
from stageflow.registry import STAGES
from stageflow.runtime import inputs

from conftest import ROOT, samples, source_rows

pytestmark = pytest.mark.docker

DATA = dict(zip(("data_path_a", "data_path_b"), map(str, samples())))  # the active schema's samples


@pytest.fixture(scope="module")
def docker_client():
    try:
        return images.client()
    except images.ImageError as err:
        pytest.fail(f"container tests need Docker and the images (`make images`): {err}")


@pytest.fixture(scope="module")
def containers(docker_client):
    from stageflow import containers

    return containers


def run_flow(backend, run_dir, **params):
    run = Run(dag_module.load(), run_dir, backend, {**DATA, **params}, echo=False)
    ok = run.execute()
    return run, ok


def leftover_containers(docker_client, run_dir):
    # sparse: no inspect per container, which fails when a (fast) stage's container is removed in between
    return docker_client.containers.list(all=True, sparse=True, filters={"label": f"io.stageflow.run={run_dir}"})


@pytest.fixture
def removes_leftovers(docker_client, tmp_path):
    """Whatever a test asserts, containers of its run directories do not outlive it."""
    yield
    for container in docker_client.containers.list(all=True, sparse=True, filters={"label": "io.stageflow.run"}):
        # a sparse listing carries the labels as the list API gives them ("Labels"), not under "Config"
        if (container.attrs.get("Labels") or {}).get("io.stageflow.run", "").startswith(str(tmp_path)):
            container.remove(force=True)


def comparable(metrics_path):
    metrics = json.loads(metrics_path.read_text())
    del metrics["seconds"]
    return metrics


@pytest.fixture(scope="module")
def both_runs(containers, tmp_path_factory):
    from stageflow.backends import HostBackend

    process_dir, docker_dir = tmp_path_factory.mktemp("process"), tmp_path_factory.mktemp("docker")
    process_run, ok_p = run_flow(HostBackend(), process_dir)
    docker_run, ok_d = run_flow(containers.DockerBackend(), docker_dir)
    assert ok_p and ok_d, (process_run.failures(), docker_run.failures())
    return process_run, docker_run


def test_docker_backend_gives_the_same_data_and_metrics(both_runs):
    process_run, docker_run = both_runs
    for name in ("merge", "process"):
        assert docker_run.results[name].outputs == process_run.results[name].outputs
    assert docker_run.results["train"].outputs["model"] == process_run.results["train"].outputs["model"]
    assert comparable(docker_run.output_path("metrics")) == comparable(process_run.output_path("metrics"))


def test_docker_backend_records_memory_and_leaves_no_container(both_runs, docker_client):
    _, docker_run = both_runs
    assert all(r.peak_rss_mb and r.peak_rss_mb > 10 for r in docker_run.results.values())
    assert leftover_containers(docker_client, docker_run.run_dir) == []


def test_images_run_as_domino_user_with_exec_entrypoint(docker_client):
    for stage in STAGES.values():
        config = docker_client.images.get(stage.image()).attrs["Config"]
        assert config["User"] == "12574:12574"
        assert config["Entrypoint"] == ["python", f"/opt/stageflow/stages/{stage.name}/main.py"]
        assert "PYTHONUNBUFFERED=1" in config["Env"]
        assert config["Labels"]["org.opencontainers.image.version"] == stage.version


def test_image_holds_only_its_stage_requirements(docker_client):
    out = docker_client.containers.run(STAGES["merge"].image(), entrypoint=["python", "-c",
                                       "import importlib.util as u; print(u.find_spec('sklearn') is None)"],
                                       remove=True, network_mode="none")
    assert out.strip() == b"True"


def test_unchanged_images_are_not_rebuilt(docker_client):
    started = time.perf_counter()
    results = [images.build(tag, dockerfile, version, args) for _, tag, dockerfile, version, args in images.targets()]
    assert results == ["up to date"] * len(images.targets())
    assert time.perf_counter() - started < 30


def test_images_carry_their_version_and_revision_labels(docker_client):
    labels = docker_client.images.get(STAGES["train"].image()).labels
    assert labels["org.opencontainers.image.version"] == STAGES["train"].version
    assert labels["org.opencontainers.image.source"] == "stages/train/Dockerfile"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])


def test_failing_stage_in_a_container_is_reported(containers, tmp_path, docker_client):
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Colour\n1,red\n")
    run, ok = run_flow(containers.DockerBackend(), tmp_path / "run", data_path_b=str(bad))
    assert not ok
    assert run.results["load_b"].error.startswith(f"exit status 1: input data_path: {bad}: missing required column")
    assert run.results["merge"].status == "skipped"
    assert os.listdir(tmp_path / "run" / "load_b" / "outputs") == ["_ERROR"]
    assert leftover_containers(docker_client, tmp_path / "run") == []


def run_load_a(backend, run_dir, data_path):
    """load_a alone, as flow.py wires it (the node compiled from flow.py), on one data path."""
    node = dag_module.load().node("load_a")
    run = Run(Dag([node], {"data_path_a": str}, {}, {}), run_dir, backend, {"data_path_a": str(data_path)},
              echo=False)
    return run, run.execute()


@pytest.fixture
def special_files(tmp_path):
    """Paths that are not regular data files, each with the kind the refusal must name."""
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    link = tmp_path / "socket.csv"
    link.symlink_to("/var/run/docker.sock")
    return {"/var/run/docker.sock": "a socket", str(link): "a link to /run/docker.sock, a socket",
            str(fifo): "a FIFO (named pipe)",
            "/dev/null": "a character device", "/opt": "a directory", str(tmp_path): "a directory"}


@pytest.fixture
def beneath_the_rules(monkeypatch):
    """This project's loads refuse such a path by their data_path rule, before the run (test_flow.py): set the
    rule aside to reach the docker backend's own guard, which every task's host files go through."""
    monkeypatch.setitem(inputs.RULES, "data_path", lambda value: value)


def test_docker_backend_mounts_only_regular_data_files(containers, docker_client, tmp_path, special_files,
                                                       removes_leftovers, beneath_the_rules):
    """The Docker socket, devices, FIFOs and directories are refused before a container exists."""
    for n, (path, kind) in enumerate(special_files.items()):
        run_dir = tmp_path / f"run{n}"
        run, ok = run_load_a(containers.DockerBackend(), run_dir, path)
        assert not ok
        result = run.results["load_a"]
        assert result.error == f"data path {path}: {kind}; only regular files are mounted into a stage container"
        assert result.exit_code is None and not (run_dir / "logs" / "load_a.log").exists()  # never started
        assert leftover_containers(docker_client, run_dir) == []


@pytest.mark.parametrize("path, inside", [("/etc/hostname", "/etc"), ("/usr/share/dict/../../lib/os-release", "/usr")])
def test_docker_backend_never_mounts_over_the_images_directories(containers, docker_client, tmp_path, path, inside,
                                                                 removes_leftovers, beneath_the_rules):
    run, ok = run_load_a(containers.DockerBackend(), tmp_path, path)
    assert not ok
    assert run.results["load_a"].error == (f"data path {path}: inside {inside}, which belongs to the stage image; "
                                           f"move the file elsewhere (e.g. under /home, /mnt or /srv) or use "
                                           f"--backend host")
    assert leftover_containers(docker_client, tmp_path) == []


def test_a_data_path_holding_a_colon_is_mounted(containers, tmp_path):
    source = tmp_path / "a:b" / samples()[0].name
    source.parent.mkdir()
    source.write_bytes(samples()[0].read_bytes())
    run, ok = run_load_a(containers.DockerBackend(), tmp_path / "run:1", source)
    assert ok, run.failures()
    assert run.results["load_a"].rows_out == source_rows(samples()[0])


def test_a_container_that_does_not_start_is_removed(containers, docker_client, tmp_path, monkeypatch,
                                                    removes_leftovers):
    """A stage image with no shell to run its command in: the create succeeds, the start fails."""
    prefix = f"stageflow-test-nostart-{os.getpid()}"
    monkeypatch.setenv("STAGEFLOW_REGISTRY", prefix)
    tag = STAGES["load_a"].image()
    docker_client.images.build(fileobj=__import__("io").BytesIO(b"FROM scratch\nENTRYPOINT [\"/nowhere\"]\n"),
                               tag=tag, rm=True)
    try:
        run, ok = run_load_a(containers.DockerBackend(), tmp_path, samples()[0])
        assert not ok
        error = run.results["load_a"].error
        assert error.startswith("container of task load_a did not start: ") and "/bin/sh" in error, error
        assert "\n" not in error
        assert leftover_containers(docker_client, tmp_path) == []
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_stage_container_nobody_reads_any_more_is_removed(containers, docker_client, tmp_path, removes_leftovers):
    """If the runner stops reading a stage's log (its own failure), the container must not outlive it."""
    for part in ("inputs", "outputs"):
        (tmp_path / "load_a" / part).mkdir(parents=True)
    source = samples()[0]
    (tmp_path / "load_a" / "inputs" / "data_path").write_text(str(source))
    handle = containers.DockerBackend().start(job_of("load_a"), tmp_path / "load_a", 60, [source])
    lines = handle.lines()
    next(lines)
    lines.close()
    assert leftover_containers(docker_client, tmp_path) == []


def test_compose_backend_refuses_a_data_path_holding_a_colon(containers, tmp_path):
    source = tmp_path / f"a:b{samples()[0].suffix}"
    source.write_bytes(samples()[0].read_bytes())
    run, ok = run_load_a(containers.ComposeBackend(), ROOT / ".workflow", source)
    assert not ok
    assert run.results["load_a"].error == (f"data path {source}: holds ':', which `docker compose run -v` reads "
                                           f"as a separator; rename it or use --backend docker")


def test_timeout_is_reported_as_such(containers, tmp_path):
    # 0.05 s: load_a snapshots the bundled 75 rows in well under 0.3 s, so a 0.3 s limit was sometimes met
    run = Run(dag_module.load(), tmp_path, containers.DockerBackend(), DATA, timeout=0.05, echo=False)
    assert not run.execute()
    assert run.results["load_a"].error == "timed out after 0.05 s"


def test_memory_limit_is_enforced_and_reported_as_oom(containers, tmp_path, monkeypatch):
    monkeypatch.setitem(TIERS, "Small", Tier(cpus=1, memory="10m"))  # less than importing pyarrow needs
    run, ok = run_flow(containers.DockerBackend(), tmp_path)
    assert not ok
    assert run.results["load_a"].error == "killed: out of memory (the hardware tier's memory limit, 10m)"


def test_train_streams_in_its_container_when_its_tier_holds_less_than_its_rows_would_take(containers, tmp_path,
                                                                                          monkeypatch):
    """The container's memory limit is its tier's, and train reads it there: in 512 MiB (three quarters of
    which is less than holding even no rows is estimated to take) it streams, and the model is as good."""
    monkeypatch.setitem(TIERS, "Large", Tier(cpus=2, memory="512m"))
    run, ok = run_flow(containers.DockerBackend(), tmp_path)
    assert ok, run.failures()
    log = (tmp_path / "logs" / "train.log").read_text()
    assert re.search(r"streaming \d+ rows a row group at a time: .* of the 512 MiB train may use \(its memory "
                     r"limit, /sys/fs/cgroup/.*; STAGEFLOW_TRAIN_MEMORY sets another\)", log), log
    assert json.loads((tmp_path / "outputs" / "metrics.json").read_text())["accuracy"] >= 0.9


def job_of(name):
    """A stage's job, as the runner plans it from flow.py."""
    return jobs.plan(dag_module.load(), jobs.Setup(code=ROOT), "test", None)[name]


def test_container_is_hardened(containers, docker_client, tmp_path):
    """What a stage container can do: nothing beyond writing its outputs and /tmp."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()
    containers.prepare_tree(tmp_path)
    script = ("import os, socket\n"
              "print('uid', os.getuid())\n"
              "print('caps', open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
              "for path in ('/opt/x', '/workflow/inputs/x'):\n"
              "    try: open(path, 'w')\n"
              "    except OSError as err: print('ro', path, err.errno)\n"
              "open('/tmp/ok', 'w').write('x'); open('/workflow/outputs/ok', 'w').write('x')\n"
              "try: socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
              "except OSError as err: print('net', err.errno)\n"
              "print('ifaces', sorted(os.listdir('/sys/class/net')))\n")
    out = docker_client.containers.run(
        STAGES["merge"].image(), entrypoint=["python", "-c", script], remove=True, user=containers.stage_user(),
        mounts=containers.mounts(job_of("merge"), tmp_path, []), **containers.HARDENING).decode()
    assert "uid 12574" in out or f"uid {os.getuid()}" in out
    assert "caps 0000000000000000" in out
    assert "ro /opt/x 30" in out and "ro /workflow/inputs/x 30" in out  # EROFS
    assert "ifaces ['lo']" in out
    assert (tmp_path / "outputs" / "ok").read_text() == "x"


def test_ctrl_c_stops_containers_and_leaves_none(docker_client, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stageflow", "run", "--backend", "docker", "--run-dir",
                             str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not leftover_containers(docker_client, tmp_path):
        assert time.monotonic() < deadline and proc.poll() is None, "no stage container started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; stopped every running task" in err
    assert leftover_containers(docker_client, tmp_path) == []
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "interrupted"


def test_containers_die_with_a_killed_runner(docker_client, tmp_path, big_source):
    """kill -9 leaves the runner no chance to stop its containers: its reaper (a process of its own, which
    notices the runner's end) removes them at once, before they can write into the run directory; and the next
    run on the same directory finds nothing of the old one running."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "stageflow", "run", "--backend", "docker", "--no-cache",
                             "--run-dir", str(run_dir), "--data-path-a", str(big_source), "--data-path-b",
                             str(big_source)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(c.attrs["State"] == "running" for c in leftover_containers(docker_client, run_dir)):
        assert time.monotonic() < deadline and proc.poll() is None, "no stage container started"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while leftover_containers(docker_client, run_dir):
        assert time.monotonic() < deadline, "the killed runner's containers are still there"
        time.sleep(0.1)
    assert not (run_dir / "load_a" / "outputs" / "datasetA").exists()  # nothing written after the runner died
    again = subprocess.run([sys.executable, "-m", "stageflow", "run", "--backend", "docker", "--run-dir",
                            str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert leftover_containers(docker_client, run_dir) == []
    record = json.loads((run_dir / "run.json").read_text())
    for name, stage in record["stages"].items():
        for output, digest in stage["outputs"].items():
            assert hashlib.sha256((run_dir / name / "outputs" / output).read_bytes()).hexdigest() == digest


def test_ctrl_c_twice_in_quick_succession_ends_the_run_in_order(docker_client, tmp_path, big_source):
    """Any number of signals at any moment: one line, every container gone, run.json consistent (no task
    left `running`), the report written."""
    proc = subprocess.Popen([sys.executable, "-m", "stageflow", "run", "--backend", "docker", "--no-cache",
                             "--run-dir", str(tmp_path), "--data-path-a", str(big_source), "--data-path-b",
                             str(big_source)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(c.attrs["State"] == "running" for c in leftover_containers(docker_client, tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, "no stage container started"
        time.sleep(0.05)
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("interrupted") == 1, err
    assert leftover_containers(docker_client, tmp_path) == []
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert {stage["status"] for stage in record["stages"].values()} <= {"failed", "skipped", "succeeded"}
    assert (tmp_path / "report.html").is_file()


def test_missing_daemon_is_a_clear_error(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--backend", "docker", "--run-dir",
                           str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no Docker daemon reachable (")
    assert "Traceback" not in proc.stderr


def test_missing_image_names_the_make_target(containers, tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEFLOW_REGISTRY", "stageflow-nowhere")
    with pytest.raises(RunError, match=r"image stageflow-nowhere/load-a:\w+ for task load_a is missing; "
                                       r"build it with `make images`"):
        run_flow(containers.DockerBackend(), tmp_path)


def test_compose_harness_runs_the_flow(both_runs):
    proc = subprocess.run(["make", "--no-print-directory", "compose"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hold-out accuracy" in proc.stdout
    process_run, _ = both_runs
    assert comparable(ROOT / ".workflow" / "train" / "outputs" / "metrics") == \
        comparable(process_run.output_path("metrics"))


def test_compose_reads_the_tags_from_the_environment_and_up_starts_no_stage():
    """As compose itself reads docker-compose.yml: without the tags it refuses, saying how to set them; with
    them each service names its stage's image; `up` starts no stage, only the service saying why."""
    import yaml

    from stageflow import containers as harness

    compose = harness.compose_command()
    env = {**os.environ, **harness.compose_env()}
    bare = {k: v for k, v in os.environ.items() if not k.endswith("_IMAGE")}
    refused = subprocess.run([*compose, "config"], cwd=ROOT, env=bare, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "stageflow compose-env" in refused.stderr, refused.stderr
    config = yaml.safe_load(subprocess.run([*compose, "--profile", "stage", "config"], cwd=ROOT, env=env,
                                           capture_output=True, text=True, timeout=60, check=True).stdout)
    assert {name: service["image"] for name, service in config["services"].items() if name in STAGES} == \
        {name: stage.image() for name, stage in STAGES.items()}
    project = f"stageflow-up-test-{os.getpid()}"
    try:
        up = subprocess.run([*compose, "-p", project, "up"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
        started = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                                  "--format", "{{.Label \"com.docker.compose.service\"}}"], capture_output=True,
                                 text=True, check=True).stdout.split()
        assert started == ["up"], up.stdout + up.stderr
        assert "docker compose up does not run this flow" in up.stdout + up.stderr
    finally:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"{project}_default"], capture_output=True)


def test_push_prints_digests_and_pulls_back_by_digest(registry, docker_client, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(images, "PUSHED", tmp_path / "pushed.json")
    pushed = images.push_all(f"{registry}/stageflow")
    out = capsys.readouterr().out
    assert set(pushed) == set(STAGES)
    try:
        for name, ref in pushed.items():
            digest = ref.split("@")[1]
            assert digest.startswith("sha256:") and digest in out
            with pytest.raises(docker.errors.ImageNotFound):  # push leaves no local tag under the registry's name
                docker_client.images.get(ref.split("@")[0] + ":" + STAGES[name].version)
            pulled = docker_client.images.pull(ref)
            assert pulled.id == docker_client.images.get(STAGES[name].image()).id
        assert json.loads((tmp_path / "pushed.json").read_text())["images"] == pushed
    finally:
        for image in docker_client.api.images():  # what the pulls by digest named; the images stay under theirs
            for ref in image.get("RepoDigests") or []:
                if ref.startswith(registry + "/"):
                    docker_client.api.remove_image(ref)
        for image in docker_client.api.images():
            assert not any(ref.startswith(registry + "/") for ref in (image.get("RepoTags") or [])
                           + (image.get("RepoDigests") or [])), image


SECRET = __import__("re").compile(
    r"(?i)(password|passwd|secret|token|api[_-]?key|access[_-]?key|DOMINO_USER_API_KEY)\s*[=:]\s*\S+"
    r"|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_secret_in_any_image(docker_client):
    for stage in STAGES.values():
        image = docker_client.images.get(stage.image())
        texts = [step.get("CreatedBy", "") for step in image.history()] + image.attrs["Config"]["Env"]
        found = [text for text in texts if SECRET.search(text)]
        assert found == [], f"{stage.name}: {found}"
