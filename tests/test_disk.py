"""`stageflow gc`: the stage cache and this project's images stay bounded, and nothing else is touched.

The image test works under a registry prefix of its own, on tiny images it makes itself: other checkouts
on the same Docker daemon build under the default prefix, and gc must never reach their images.
"""

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import docker
import pytest

from stageflow import disk, images
from stageflow.cache import MANIFEST, MARK
from stageflow.registry import STAGES

from conftest import ROOT

DAY = 86400


def key(name):
    """A cache entry's name for a test's label: entries are named by a sha256."""
    return name if name.startswith(".") else hashlib.sha256(name.encode()).hexdigest()


def entry(cache, label, used_days_ago, manifest=True):
    name = key(label)
    (cache / name).mkdir(parents=True)
    (cache / MARK).touch()
    (cache / name / "out").write_bytes(b"x" * 5000)
    when = time.time() - used_days_ago * DAY
    if manifest:
        (cache / name / MANIFEST).write_text("{}")
        os.utime(cache / name / MANIFEST, (when, when))
    os.utime(cache / name, (when, when))


def test_cache_entries_stay_when_used_recently_or_by_the_newest_run(tmp_path):
    cache = tmp_path / "cache"
    entry(cache, "recent", 1)
    entry(cache, "newest-run", 9)
    entry(cache, "old", 10)
    entry(cache, ".tmp-cut-short", 20, manifest=False)  # a store that never finished
    entry(cache, ".gc-cut-short", 0)  # a gc that never finished
    for name, days in (("older", 12), ("newest", 9.5)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
        (tmp_path / "runs" / name / "run.json").write_text(json.dumps({"started_at": started.isoformat()}))
    newest = disk.newest_run_start(tmp_path)
    assert newest == pytest.approx(time.time() - 9.5 * DAY, abs=60)
    removed, kept, freed = disk.trim_cache(cache, min(time.time() - 7 * DAY, newest))
    assert sorted(removed) == sorted(map(key, [".gc-cut-short", ".tmp-cut-short", "old"])) and kept == 2
    assert sorted(os.listdir(cache)) == sorted([MARK, key("newest-run"), key("recent")])
    assert freed >= 3 * 5000


def test_a_hard_linked_file_frees_nothing(tmp_path):
    """A cache file that a run directory also links is not counted as freed: the run still holds it."""
    cache = tmp_path / "cache"
    entry(cache, "old", 30)
    os.link(cache / key("old") / "out", tmp_path / "run-output")
    _, _, freed = disk.trim_cache(cache, time.time())
    assert freed < 5000 and (tmp_path / "run-output").stat().st_size == 5000


def test_gc_leaves_a_directory_it_did_not_make_alone(tmp_path, monkeypatch):
    """STAGEFLOW_CACHE pointed at an ordinary folder: its old subdirectories are not stage-cache entries."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")  # this test is about the cache only
    folder = tmp_path / "photos"
    for name in ("2019", hashlib.sha256(b"x").hexdigest()):
        (folder / name).mkdir(parents=True)
        (folder / name / "a.jpg").write_bytes(b"x" * 100)
        os.utime(folder / name, (0, 0))
    lines = disk.gc(keep_days=0, cache_root=folder)
    assert sorted(os.listdir(folder)) == sorted(["2019", hashlib.sha256(b"x").hexdigest()])
    assert "left alone, not made by stageflow" in lines[0]


def stageflow(*args, env):
    proc = subprocess.run([sys.executable, "-m", "stageflow", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def age(cache, days):
    when = time.time() - days * DAY
    for manifest in cache.glob(f"*/{MANIFEST}"):
        os.utime(manifest, (when, when))


@pytest.fixture
def run_dirs():
    """Run directories in runs/, where gc looks for the newest run; removed afterwards."""
    made = []

    def new():
        made.append(ROOT / "runs" / f"gc-test-{os.getpid()}-{len(made)}")
        return str(made[-1])

    yield new
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def test_gc_keeps_what_a_rerun_needs(tmp_path, run_dirs):
    """Entries a run reuses are used again, so they stay; a re-run after gc is served from the cache."""
    cache = tmp_path / "cache"
    env = {**os.environ, "STAGEFLOW_CACHE": str(cache), "STAGEFLOW_REGISTRY": f"stageflow-gctest-{os.getpid()}"}
    stageflow("run", "--run-dir", run_dirs(), "--epochs", "2", env=env)
    age(cache, 30)
    stageflow("run", "--run-dir", run_dirs(), "--epochs", "3", env=env)  # reuses all but train
    make = subprocess.run(["make", "--no-print-directory", "gc", "KEEP_DAYS=7"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert make.returncode == 0, make.stderr
    assert f"stage cache {cache}: removed 1 entries" in make.stdout and "kept 5" in make.stdout
    age(cache, 30)
    rerun = run_dirs()
    stageflow("run", "--run-dir", rerun, "--epochs", "3", env=env)
    record = json.loads((ROOT / "runs" / rerun / "run.json").read_text())
    assert all(stage["cached"] for stage in record["stages"].values())
    out = stageflow("gc", "--keep-days", "0", env=env)  # all older than a day, but the newest run used them
    assert "removed 0 entries" in out and "kept 5" in out
    assert len([entry for entry in cache.iterdir() if entry.name != MARK]) == 5


def test_make_clean_calls_gc():
    out = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "-m stageflow gc" in out


@pytest.fixture
def prefix(monkeypatch):
    """A registry prefix of the test's own; whatever is left under it (or `other`) goes afterwards."""
    name = f"stageflow-gctest-{os.getpid()}"
    monkeypatch.setenv("STAGEFLOW_REGISTRY", name)
    yield name
    client = images.client()
    for container in client.containers.list(all=True, filters={"label": f"io.stageflow.gctest={name}"}):
        container.remove(force=True)
    for image in client.api.images(filters={"label": f"io.stageflow.gctest={name}"}):
        for tag in image.get("RepoTags") or []:
            if tag != "<none>:<none>":
                client.api.remove_image(tag, force=True)
    for image in client.api.images(all=True, filters={"label": f"io.stageflow.gctest={name}"}):
        try:
            client.api.remove_image(image["Id"], force=True)
        except Exception:  # noqa: BLE001 - removed with a child a moment ago
            pass


@pytest.mark.docker
def test_gc_removes_old_images_under_its_prefix_and_nothing_else(prefix, tmp_path):
    client = images.client()
    other, old = f"{prefix}-other", "000000000old"
    made = iter(range(1000))

    def tiny(tag=None, parent="scratch", **labels):
        """An image of no size, unique by its labels; `tag` None leaves it dangling, as a build stage is."""
        labels = {"io.stageflow.gctest": prefix, "n": str(next(made)), **labels}
        text = f"FROM {parent}\n" + "".join(f'LABEL "{k}"="{v}"\n' for k, v in labels.items())
        image, _ = client.images.build(fileobj=io.BytesIO(text.encode()), tag=tag, rm=True)
        return image.id

    current = images.current_images()  # libraries and runtime images, stages, standard environment
    # The shared pair (no stage's own libraries), then one runtime per libraries image: stages whose locks pin
    # the same (the cluster stages) share both.
    runtimes = {images.runtime_image(): images.libraries_image(),
                **{stage.runtime_image(): stage.libraries_image() for stage in STAGES.values()}}
    assert len(runtimes) == 1 + len({stage.libraries_image() for stage in STAGES.values()}) < 1 + len(STAGES)
    assert {*runtimes, *runtimes.values(), images.standard_environment()} < set(current)
    for runtime, libraries in runtimes.items():
        tiny(libraries)
        tiny(runtime, parent=libraries)
    for stage in STAGES.values():
        tiny(stage.image(), parent=stage.runtime_image())
    tiny(images.standard_environment())
    current_build = tiny(parent=STAGES["train"].libraries_image(), **{disk.BUILD_STAGE_OF: STAGES["train"].libraries_image()})
    old_libraries = tiny(f"{prefix}/libraries:{old}")
    old_runtime = tiny(f"{prefix}/runtime:{old}", parent=f"{prefix}/libraries:{old}")
    old_merge = tiny(f"{prefix}/merge:{old}", parent=f"{prefix}/runtime:{old}")
    old_build = tiny(parent=f"{prefix}/libraries:{old}", **{disk.BUILD_STAGE_OF: f"{prefix}/libraries:{old}"})
    tiny(f"{prefix}/standard-environment:{old}")
    tiny(f"{other}/merge:{old}")  # another prefix: not ours
    shared = tiny(f"{prefix}/process:{old}")
    client.images.get(shared).tag(f"{other}/keep", "1")  # also named by someone else
    tiny(f"{prefix}/load-a:{old}")
    client.containers.create(f"{prefix}/load-a:{old}", command=["none"], labels={"io.stageflow.gctest": prefix})

    env = {**os.environ, "STAGEFLOW_CACHE": str(tmp_path / "cache")}
    dry = stageflow("gc", "--dry-run", env=env)
    assert f"images under {prefix}/: would remove 7 not of the current code" in dry, dry
    assert client.images.get(old_merge) and client.images.get(old_build)
    out = stageflow("gc", env=env)

    for tag in current:
        client.images.get(tag)  # raises if gone
    client.images.get(current_build)
    for image_id in (old_libraries, old_runtime, old_merge, old_build):  # gone entirely, not just untagged
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(image_id)
    assert client.images.get(f"{other}/merge:{old}")
    assert client.images.get(f"{other}/keep:1").id == shared
    assert f"{prefix}/process:{old}" not in client.images.get(shared).tags
    assert client.images.get(f"{prefix}/load-a:{old}")  # a container uses it
    assert f"  kept {prefix}/load-a:{old} (" in out
    assert f"{prefix}/standard-environment:{old}" not in [t for i in client.images.list() for t in i.tags]
    assert f"images under {prefix}/: removed 6 not of the current code" in out, out
