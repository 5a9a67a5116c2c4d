"""What a stage writes is untrusted: the runner (root on the host) never follows a link, blocks on a FIFO or
reads a file of any size from a stage's outputs or a cache entry, and a failed stage leaves no result behind.

A hostile stage is a real process run by the host backend with its own shell script in place of the stage's
entrypoint (the backend's one hook for what runs); everything after that is the runner's own code.
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stageflow import dag as dag_module, files
from stageflow.backends import HostBackend, ProcessHandle
from stageflow.cache import MANIFEST, Cache
from stageflow.dag import Dag
from stageflow.rundir import RunError
from stageflow.runner import Run

from stageflow.runtime import schema as schemas


class HostileBackend(HostBackend):
    """Runs `scripts[stage]` with sh in the stage's tree ($OUT is its outputs directory); other stages as usual."""

    def __init__(self, scripts: dict[str, str]):
        self.scripts = scripts

    def start(self, job, tree, timeout, mounts):
        if job.node.name not in self.scripts:
            return super().start(job, tree, timeout, mounts)
        proc = subprocess.Popen(["sh", "-c", self.scripts[job.node.name]], env={**os.environ, "OUT": str(tree / "outputs")},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        return ProcessHandle(proc, timeout)


@pytest.fixture
def secret(tmp_path):
    """A host file only root may read, which no stage may reach through the runner."""
    path = tmp_path / "host-secret"
    path.write_text("root's secret\n")
    path.chmod(0o600)
    return path


def first_stages(count: int) -> Dag:
    """The flow cut after its first `count` nodes: a source's load and what follows it."""
    dag = dag_module.load()
    keep = [node for node in dag.nodes[:count]]
    return Dag(keep, dag.inputs, dag.defaults, {}, dag.name, {})


def run(tmp_path, scripts, count=3, cache=None, timeout=60):
    dag = first_stages(count)
    params = {name: str(path) for name, path in schemas.active().samples.items()}
    run = Run(dag, tmp_path / "run", HostileBackend(scripts), params, timeout=timeout, echo=False, cache=cache)
    run.execute()
    return dag, run


def recorded_text(tmp_path) -> str:
    """Everything the run recorded or copied: run.json, logs, every stage's inputs and outputs, the cache."""
    found = []
    for path in [*(tmp_path / "run").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            found.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(found)


def test_a_symlinked_output_is_refused_and_the_host_file_is_untouched(tmp_path, secret):
    """The issue's example: a link at an output made the runner chmod a host file and copy it downstream."""
    dag, result = run(tmp_path, {dag_module.load().nodes[0].name: f'ln -s {secret} "$OUT/{first_output()}"'},
                      cache=Cache(tmp_path / "cache"))
    first = dag.nodes[0].name
    stage = result.record.stages[first]
    assert stage.status == "failed"
    assert stage.error == (f"output {first_output()}: {result.tree(first) / 'outputs' / first_output()} is a symlink "
                           f"(to {secret}), not a regular file; refused")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "root's secret" not in recorded_text(tmp_path)
    assert {n.name: result.record.stages[n.name].status for n in dag.nodes if first in n.upstream} == \
        {n.name: "skipped" for n in dag.nodes if first in n.upstream}


def first_output() -> str:
    return next(iter(dag_module.load().nodes[0].outputs))


def test_a_symlinked_error_file_is_not_printed(tmp_path, secret):
    first = dag_module.load().nodes[0].name
    _, result = run(tmp_path, {first: f'ln -s {secret} "$OUT/_ERROR"; exit 1'})
    error = result.record.stages[first].error
    assert error.startswith("exit status 1: (") and "is a symlink" in error and "root's secret" not in error
    assert "root's secret" not in json.dumps(result.record.as_json())


@pytest.mark.parametrize("kind, make, said", [
    ("fifo", 'mkfifo "$OUT/{name}"', "a FIFO (named pipe)"),
    ("directory", 'mkdir "$OUT/{name}" && echo x > "$OUT/{name}/x"', "a directory"),
    ("dangling link", 'ln -s /nowhere/at/all "$OUT/{name}"', "a symlink (to /nowhere/at/all)"),
    ("link to a device", 'ln -s /dev/zero "$OUT/{name}"', "a symlink (to /dev/zero)"),
])
def test_an_output_that_is_not_a_regular_file_fails_the_stage_in_one_line(tmp_path, kind, make, said):
    first, name = dag_module.load().nodes[0].name, first_output()
    started = time.monotonic()
    _, result = run(tmp_path, {first: make.format(name=name)}, count=1)
    stage = result.record.stages[first]
    assert stage.status == "failed" and said in stage.error and "\n" not in stage.error, stage.error
    assert time.monotonic() - started < 30  # never blocked on the FIFO
    assert os.listdir(result.tree(first) / "outputs") == []


def test_an_output_larger_than_the_bound_is_refused_before_it_is_read(tmp_path):
    """A sparse file of 65 GiB takes no disk but would take hours to hash and copy."""
    first, name = dag_module.load().nodes[0].name, first_output()
    _, result = run(tmp_path, {first: f'truncate -s {files.MAX_FILE_BYTES + 1} "$OUT/{name}"'}, count=1)
    error = result.record.stages[first].error
    assert error.endswith(f"holds {files.MAX_FILE_BYTES + 1:,} bytes, more than the {files.MAX_FILE_BYTES:,} "
                          f"allowed; refused"), error


def test_a_stage_killed_by_a_signal_leaves_no_output(tmp_path):
    """The issue's example: a stage that wrote its whole output, then died by SIGKILL (exit status -9)."""
    first, name = dag_module.load().nodes[0].name, first_output()
    _, result = run(tmp_path, {first: f'echo data > "$OUT/{name}"; kill -9 $$'}, count=1)
    assert result.record.stages[first].error == "exit status -9"
    assert os.listdir(result.tree(first) / "outputs") == []


def test_a_failed_stage_keeps_only_its_error_file(tmp_path):
    first, name = dag_module.load().nodes[0].name, first_output()
    _, result = run(tmp_path, {first: f'echo data > "$OUT/{name}"; echo "it broke" > "$OUT/_ERROR"; exit 3'}, count=1)
    assert result.record.stages[first].error == "exit status 3: it broke"
    assert os.listdir(result.tree(first) / "outputs") == ["_ERROR"]


def cached_entry(tmp_path) -> tuple[Cache, Path]:
    """A cache holding the first stage's outputs from a real run, and that entry's directory."""
    cache = Cache(tmp_path / "cache")
    run(tmp_path, {}, count=1, cache=cache)
    (entry,) = [path for path in cache.root.iterdir() if path.is_dir()]
    return cache, entry


@pytest.mark.parametrize("tamper, said", [
    (lambda entry: (entry / MANIFEST).unlink() or os.mkfifo(entry / MANIFEST), "a FIFO (named pipe)"),
    (lambda entry: (entry / MANIFEST).unlink() or (entry / MANIFEST).symlink_to("/etc/hostname"), "a symlink"),
    (lambda entry: (entry / first_output()).unlink() or (entry / first_output()).symlink_to("/etc/hostname"),
     "a symlink"),
])
def test_a_cache_entry_holding_a_link_or_a_fifo_fails_the_stage_and_is_dropped(tmp_path, tamper, said):
    """The issue's example: a FIFO as a manifest hung the run past --timeout."""
    cache, entry = cached_entry(tmp_path)
    tamper(entry)
    first = dag_module.load().nodes[0].name
    started = time.monotonic()
    _, result = run(tmp_path, {}, count=1, cache=cache, timeout=20)
    assert time.monotonic() - started < 20
    error = result.record.stages[first].error
    assert said in error and error.startswith("cache entry "), error
    assert not entry.exists()  # dropped: the next run makes it again
    _, again = run(tmp_path, {}, count=1, cache=cache)
    assert again.record.stages[first].status == "succeeded" and not again.record.stages[first].cached


@pytest.mark.parametrize("manifest", ['{"outputs": []}', '[]', '"x"', '{"outputs": {"%s": 5}}',
                                      '{"outputs": {"%s": "%s"}, "rows_in": "many"}'])
def test_a_manifest_of_the_wrong_shape_is_dropped_and_the_stage_runs(tmp_path, manifest):
    """The issue's example: valid JSON of the wrong shape raised TypeError in every later run."""
    cache, entry = cached_entry(tmp_path)
    name = first_output()
    text = manifest % ((name,) if manifest.count("%s") == 1 else (name, "0" * 64)) if "%s" in manifest else manifest
    (entry / MANIFEST).chmod(0o644)
    (entry / MANIFEST).write_text(text)
    _, result = run(tmp_path, {}, count=1, cache=cache)
    first = dag_module.load().nodes[0].name
    assert result.record.stages[first].status == "succeeded" and not result.record.stages[first].cached
    assert not entry.exists() or json.loads((entry / MANIFEST).read_text())["outputs"].keys() == {name}


def test_a_store_racing_restores_of_the_same_entry_never_raises(tmp_path):
    """The issue's example: one writer and two readers of one key raised FileNotFoundError 16 times in 20 s."""
    cache, entry = cached_entry(tmp_path)
    name = first_output()
    hashes = json.loads((entry / MANIFEST).read_text())["outputs"]
    source = tmp_path / "made"
    source.mkdir()
    files.place(entry / name, source / name)
    errors, stop = [], time.monotonic() + 4

    def keep(work):
        try:
            while time.monotonic() < stop:
                work()
        except Exception as err:  # noqa: BLE001 - what the test counts
            errors.append(repr(err))

    def store():
        cache.drop(entry)
        cache.store(entry.name, source, hashes)

    def restore(n):
        def once():
            out = tmp_path / f"out{n}"
            out.mkdir(exist_ok=True)
            for found in out.iterdir():
                found.unlink()
            cache.restore(entry.name, [name], out)
        return once

    threads = [threading.Thread(target=keep, args=(work,)) for work in (store, restore(1), restore(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_cache_directory_that_holds_other_files_is_refused(tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("x")
    with pytest.raises(RunError, match=r"stage cache .*documents \(STAGEFLOW_CACHE\): not made by stageflow "
                                       r"\(it holds thesis.tex\); point STAGEFLOW_CACHE at a new or empty directory"):
        run(tmp_path, {}, count=1, cache=Cache(folder))
    assert os.listdir(folder) == ["thesis.tex"]


def test_files_opened_refuses_a_link_in_place_of_the_directory(tmp_path, secret):
    (tmp_path / "outputs").symlink_to(secret.parent)
    with pytest.raises(files.UnsafeFile, match="not a plain directory"):
        files.read_bytes(tmp_path / "outputs" / secret.name)

