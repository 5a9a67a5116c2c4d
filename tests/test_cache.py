"""The stage cache: reuse when nothing changed, rerun exactly what a change touches, never use a bad entry."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stageflow import dag as dag_module
from stageflow.cache import Cache
from stageflow.files import place
from stageflow.registry import STAGES
from stageflow.backends import HostBackend
from stageflow.runner import Run
from stageflow.runtime import dataset, schema as schemas

from conftest import ROOT, drop_last_row, samples


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "STAGEFLOW_CACHE": str(tmp_path / "cache")}


def run(env, run_dir, *args):
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_dir / "run.json").read_text())
    return {name: stage["cached"] for name, stage in record["stages"].items()}, record


@pytest.fixture
def sources(tmp_path):
    """Copies of the active schema's samples (iris: data/source_a.csv, data/source_b.jsonl), free to edit."""
    a, b = (shutil.copy(path, tmp_path / path.name) for path in samples())
    return ["--data-path-a", a, "--data-path-b", b]


ALL = set(STAGES)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One first run for the tests that start from a warm cache and change no source: its sources, its run
    directory and record, and its cache, which `warm` copies for each test (a test may damage its copy)."""
    where = tmp_path_factory.mktemp("first")
    a, b = (shutil.copy(path, where / path.name) for path in samples())
    env = {**os.environ, "STAGEFLOW_CACHE": str(where / "cache")}
    sources = ["--data-path-a", a, "--data-path-b", b]
    states, record = run(env, where / "r1", *sources)
    assert cached_stages(states) == set()
    return {"sources": sources, "record": record, "run_dir": where / "r1", "cache": where / "cache"}


@pytest.fixture
def warm(first_run, env, tmp_path):
    """`env` with a copy of the first run's cache."""
    shutil.copytree(first_run["cache"], tmp_path / "cache", symlinks=True)
    return env


def cached_stages(states):
    return {name for name, cached in states.items() if cached}


def test_second_run_reuses_every_stage_with_the_same_outputs(warm, tmp_path, first_run):
    record1 = first_run["record"]
    second, record2 = run(warm, tmp_path / "r2", *first_run["sources"])
    assert cached_stages(second) == ALL
    for name in ALL:
        assert record2["stages"][name]["outputs"] == record1["stages"][name]["outputs"]
        assert record2["stages"][name]["rows_out"] == record1["stages"][name]["rows_out"]
    assert (tmp_path / "r2" / "train" / "outputs" / "model").read_bytes() == \
        (first_run["run_dir"] / "train" / "outputs" / "model").read_bytes()


def test_changing_epochs_reruns_only_train(warm, tmp_path, first_run):
    states, _ = run(warm, tmp_path / "r2", *first_run["sources"], "--epochs", "3")
    assert cached_stages(states) == ALL - {"train"}


def test_editing_one_source_reruns_its_load_and_everything_downstream(env, tmp_path, sources):
    _, before = run(env, tmp_path / "r1", *sources)
    drop_last_row(Path(sources[3]))  # same path, new content
    states, record = run(env, tmp_path / "r2", *sources)
    assert cached_stages(states) == {"load_a"}
    assert record["stages"]["merge"]["rows_out"] == before["stages"]["merge"]["rows_out"] - 1


def test_no_cache_forces_a_full_run(warm, tmp_path, first_run):
    states, _ = run(warm, tmp_path / "r2", *first_run["sources"], "--no-cache")
    assert cached_stages(states) == set()


@pytest.mark.parametrize("damage", ["corrupt", "delete", "manifest"])
def test_damaged_cache_entry_is_detected_and_rerun(warm, tmp_path, first_run, damage):
    record = first_run["record"]
    entries = [p for p in (tmp_path / "cache").iterdir() if (p / "processed_data").exists()]
    assert len(entries) == 1
    target = entries[0] / "processed_data"
    if damage == "corrupt":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.chmod(0o644)
        target.write_bytes(bytes(data))  # the cache's own copy, as a disk fault would
    elif damage == "delete":
        target.unlink()
    else:
        (entries[0] / "manifest.json").write_text("{not json")
    states, record2 = run(warm, tmp_path / "r2", *first_run["sources"])
    # process runs again and writes the same bytes, so train's inputs are unchanged: train stays cached
    assert cached_stages(states) == ALL - {"process"}
    assert record2["stages"]["process"]["outputs"] == {"processed_data": record["stages"]["process"]["outputs"][
        "processed_data"]}


def other_first_feature(csv: bytes) -> bytes:
    """The CSV with the first digit of the first feature in the first row changed: same size, other content."""
    header, row, _ = csv.split(b"\n", 2)
    column = header.split(b",").index(next(iter(schemas.active().features)).encode())
    at = len(header) + 1 + len(b",".join(row.split(b",")[:column])) + (column > 0)
    digit = csv[at]
    return csv[:at] + bytes([digit + 1 if digit < ord("9") else digit - 1]) + csv[at + 1:]


@pytest.mark.parametrize("change", ["replaced", "rewritten"])
def test_a_source_changed_while_its_load_runs_is_not_cached_under_its_old_content(tmp_path, change):
    """The runner hashes a source for the cache key before the stage reads it. A source changed in between
    must not leave a snapshot of the new content cached under the old content's key."""
    source = tmp_path / "a.csv"
    shutil.copy(samples()[0], source)
    original = source.read_bytes()
    changed = other_first_feature(original)  # the same size, other content
    assert changed != original and len(changed) == len(original)

    def write(data):
        if change == "replaced":
            (tmp_path / "new.csv").write_bytes(data)
            os.replace(tmp_path / "new.csv", source)
        else:
            source.write_bytes(data)

    class ChangingSource(HostBackend):
        def start(self, job, tree, timeout, mounts):
            if job.node.name == "load_a":  # after the runner hashed the source, before the stage reads it
                write(changed)
            return super().start(job, tree, timeout, mounts)

    dag, cache = dag_module.load(), Cache(tmp_path / "cache")
    params = {"data_path_a": str(source), "data_path_b": str(samples()[1])}
    first = Run(dag, tmp_path / "r1", ChangingSource(), params, cache=cache, echo=False)
    assert first.execute(), first.failures()
    write(original)
    second = Run(dag, tmp_path / "r2", HostBackend(), params, cache=cache, echo=False)
    assert second.execute(), second.failures()
    snapshot = dataset.Snapshot(second.tree("load_a") / "outputs" / "datasetA", "datasetA")
    assert snapshot.meta["source"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert "changed while the task ran" in (tmp_path / "r1" / "logs" / "load_a.log").read_text()


def test_runs_do_not_share_files_with_the_cache_or_each_other(warm, tmp_path, first_run):
    """Appending to one run's model (as its owner or root may, read-only or not) changes nothing else."""
    record1, sources = first_run["record"], first_run["sources"]
    states, _ = run(warm, tmp_path / "r2", *sources)
    assert cached_stages(states) == ALL
    model = tmp_path / "r2" / "train" / "outputs" / "model"
    model.chmod(0o644)
    with open(model, "ab") as handle:
        handle.write(b"x")
    digest = record1["stages"]["train"]["outputs"]["model"]
    assert hashlib.sha256((first_run["run_dir"] / "train" / "outputs" / "model").read_bytes()).hexdigest() == digest
    states, record3 = run(warm, tmp_path / "r3", *sources)
    assert cached_stages(states) == ALL and record3["stages"]["train"]["outputs"]["model"] == digest
    assert hashlib.sha256((tmp_path / "r3" / "train" / "outputs" / "model").read_bytes()).hexdigest() == digest


def test_a_stage_writing_into_its_input_changes_no_upstream_output_and_no_cache_entry(tmp_path):
    dag, cache = dag_module.load(), Cache(tmp_path / "cache")
    first = dag.nodes[-1]  # a stage fed by another's output: the last

    class WritingIntoInput(HostBackend):
        def start(self, job, tree, timeout, mounts):
            if job.node.name == first.name:  # as the stage itself might, before it runs
                for name, (_, src) in job.node.inputs.items():
                    if src.stage:
                        with open(tree / "inputs" / name, "ab") as handle:
                            handle.write(b"scribble")
            return super().start(job, tree, timeout, mounts)

    params = {"data_path_a": str(samples()[0]), "data_path_b": str(samples()[1])}
    scribbled = Run(dag, tmp_path / "r1", WritingIntoInput(), params, cache=cache, echo=False)
    scribbled.execute()
    upstream = {src.stage for _, src in first.inputs.values() if src.stage}
    assert upstream
    for name in upstream:
        for output, digest in scribbled.results[name].outputs.items():
            assert hashlib.sha256((scribbled.tree(name) / "outputs" / output).read_bytes()).hexdigest() == digest
    second = Run(dag, tmp_path / "r2", HostBackend(), params, cache=cache, echo=False)
    assert second.execute(), second.failures()
    assert all(second.results[name].cached for name in upstream)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.xfs"), reason="mounting an XFS image needs root "
                    "and mkfs.xfs (xfsprogs)")
def test_copies_are_reflinks_where_the_file_system_has_them(tmp_path):
    """On XFS (or btrfs) a copy shares the original's blocks until either is written: no data is copied,
    and a write to one still leaves the other as it was."""
    image, disk = tmp_path / "xfs.img", tmp_path / "disk"
    with open(image, "wb") as handle:
        handle.truncate(300 << 20)  # XFS's smallest
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    disk.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(disk)], check=True)
    try:
        data = os.urandom(8 << 20)
        (disk / "a").write_bytes(data)
        os.sync()
        free = os.statvfs(disk).f_bfree
        place(disk / "a", disk / "b")
        os.sync()
        assert free - os.statvfs(disk).f_bfree < 64  # blocks: the 2,048 of the data are shared, not copied
        os.chmod(disk / "b", 0o644)
        with open(disk / "b", "ab") as handle:
            handle.write(b"x")
        assert (disk / "a").read_bytes() == data and (disk / "b").read_bytes() == data + b"x"
    finally:
        subprocess.run(["umount", str(disk)], check=True)
