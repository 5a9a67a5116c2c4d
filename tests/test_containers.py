"""The stages in their real images: docker backend, compose harness, hardening, push to a real registry."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from stageflow import dag as dag_module
from stageflow import images
from stageflow.runner import Run, RunError
from stageflow.registry import STAGES, TIERS, Tier

from conftest import ROOT

pytestmark = pytest.mark.docker

DATA = {"data_path_a": str(ROOT / "data" / "source_a.csv"), "data_path_b": str(ROOT / "data" / "source_b.jsonl")}


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


def comparable(metrics_path):
    metrics = json.loads(metrics_path.read_text())
    del metrics["seconds"]
    return metrics


@pytest.fixture(scope="module")
def both_runs(containers, tmp_path_factory):
    from stageflow.runner import HostBackend

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
    assert results == ["up to date"] * (len(STAGES) + 1)
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


def test_timeout_is_reported_as_such(containers, tmp_path):
    # 0.05 s: load_a snapshots the bundled 75 rows in well under 0.3 s, so a 0.3 s limit was sometimes met
    run = Run(dag_module.load(), tmp_path, containers.DockerBackend(), DATA, timeout=0.05, echo=False)
    assert not run.execute()
    assert run.results["load_a"].error == "timed out after 0.05 s"


def test_memory_limit_is_enforced_and_reported_as_oom(containers, tmp_path, monkeypatch):
    monkeypatch.setitem(TIERS, "Small", Tier(cpus=1, memory="10m"))  # less than importing pyarrow needs
    run, ok = run_flow(containers.DockerBackend(), tmp_path)
    assert not ok
    assert run.results["load_a"].error == "killed: out of memory (the hardware tier's memory limit)"


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
        volumes=containers.volumes(tmp_path, []), **containers.HARDENING).decode()
    assert "uid 12574" in out or f"uid {os.getuid()}" in out
    assert "caps 0000000000000000" in out
    assert "ro /opt/x 30" in out and "ro /workflow/inputs/x 30" in out  # EROFS
    assert "ifaces ['lo']" in out
    assert (tmp_path / "outputs" / "ok").read_text() == "x"


def test_train_image_draws_with_the_font_cache_it_was_built_with(containers, docker_client):
    """A fresh read-only container would scan the fonts again (0.5-0.8 s); the report uses the image's list."""
    script = ("import os\n"
              "from stageflow.runtime import report\n"
              "report.ensure_mpl_config_dir()\n"
              "from matplotlib import font_manager\n"
              "font_manager.fontManager.findfont('DejaVu Sans')\n"
              "for name, path in (('baked', os.environ['STAGEFLOW_MPL_CACHE']), ('used', os.environ['MPLCONFIGDIR'])):\n"
              "    print(name, sorted((f, os.stat(os.path.join(path, f)).st_mtime) for f in os.listdir(path)))\n")
    out = docker_client.containers.run(STAGES["train"].image(), entrypoint=["python", "-c", script], remove=True,
                                       user=containers.stage_user(), **containers.HARDENING).decode()
    baked, used = (line.split(" ", 1)[1] for line in out.splitlines())
    assert "fontlist-" in baked and used == baked  # the same file, untouched: copied, not rebuilt


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
    assert "interrupted; stopped every running stage" in err
    assert leftover_containers(docker_client, tmp_path) == []
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "interrupted"


def test_missing_daemon_is_a_clear_error(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--backend", "docker", "--run-dir",
                           str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no Docker daemon reachable (")
    assert "Traceback" not in proc.stderr


def test_missing_image_names_the_make_target(containers, tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEFLOW_REGISTRY", "stageflow-nowhere")
    with pytest.raises(RunError, match=r"image stageflow-nowhere/load-a:\w+ for stage load_a is missing; "
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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry on 127.0.0.1 only, torn down whatever happens."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: warn\nstorage:\n"
                      f"  filesystem:\n    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "registry did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_push_prints_digests_and_pulls_back_by_digest(registry, docker_client, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(images, "PUSHED", tmp_path / "pushed.json")
    pushed = images.push_all(f"{registry}/stageflow")
    out = capsys.readouterr().out
    assert set(pushed) == set(STAGES)
    for name, ref in pushed.items():
        digest = ref.split("@")[1]
        assert digest.startswith("sha256:") and digest in out
        docker_client.images.remove(ref.split("@")[0] + ":" + STAGES[name].version)  # drop the pushed tag
        pulled = docker_client.images.pull(ref)
        assert pulled.id == docker_client.images.get(STAGES[name].image()).id
    assert json.loads((tmp_path / "pushed.json").read_text())["images"] == pushed


SECRET = __import__("re").compile(
    r"(?i)(password|passwd|secret|token|api[_-]?key|access[_-]?key|DOMINO_USER_API_KEY)\s*[=:]\s*\S+"
    r"|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_secret_in_any_image(docker_client):
    for stage in STAGES.values():
        image = docker_client.images.get(stage.image())
        texts = [step.get("CreatedBy", "") for step in image.history()] + image.attrs["Config"]["Env"]
        found = [text for text in texts if SECRET.search(text)]
        assert found == [], f"{stage.name}: {found}"
