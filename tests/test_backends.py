"""The host backend starts a stage's process early, while the stages upstream of it run: the process does its
imports, then waits for its tree (contract.wait_for_inputs). What it does must be what a process started late
does, whatever becomes of the run: a stage that does not wait, a failure upstream, the cache, a timeout."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

from stageflow import dag as dag_module
from stageflow.backends import HostBackend
from stageflow.cache import Cache
from stageflow.dag import Dag
from stageflow.runner import Run
from stageflow.runtime import contract

from conftest import ROOT, bad_source, downstream, lock_holders, samples


class Recording(HostBackend):
    """The host backend, noting each process it starts: the stage's name, when, and whether it was started
    early (to wait for its tree) or as the stage started."""

    def __init__(self, commands: dict[str, list[str]] | None = None, early: set[str] = frozenset()):
        self.commands, self.forced = commands or {}, set(early) | set(commands or {})
        self.started: list[tuple[str, float, bool]] = []
        self.begun: dict[str, float] = {}

    def command(self, job):
        return self.commands.get(job.node.name) or super().command(job)

    def starts_early(self, job):
        """Those the registry marks early, and those a test gives a command or names (the same mechanism)."""
        return job.node.name in self.forced or super().starts_early(job)

    def _popen(self, job, tree, extra, **kwargs):
        self.started.append((job.node.name, time.monotonic(), contract.WAIT_ENV in extra))
        return super()._popen(job, tree, extra, **kwargs)

    def start(self, job, tree, timeout, mounts):
        self.begun[job.node.name] = time.monotonic()
        return super().start(job, tree, timeout, mounts)

    def early(self) -> set[str]:
        return {name for name, _, early in self.started if early}


class Late(HostBackend):
    """The host backend without early starts: every stage's process started as the stage starts."""

    def warm(self, job, tree):
        pass


def cut(last: str) -> Dag:
    """The flow up to node `last`."""
    dag = dag_module.load()
    names = [node.name for node in dag.nodes]
    return Dag(dag.nodes[:names.index(last) + 1], dag.inputs, dag.defaults, {}, dag.name, {})


def params(**given) -> dict:
    a, b = samples()
    return {"data_path_a": str(a), "data_path_b": str(b), **given}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stages_downstream_start_early_and_train_the_model_a_late_start_trains(tmp_path):
    dag = dag_module.load()
    roots = [node.name for node in dag.nodes if not node.upstream]
    early = Recording()
    run = Run(dag, tmp_path / "early", early, params(), echo=False)
    assert run.execute(), run.failures()
    assert early.early() == {name for name in downstream(dag, roots) if run.jobs[name].stage.early} != set()
    assert sorted(name for name, _, _ in early.started) == sorted(node.name for node in dag.nodes)  # once each
    last = dag.nodes[-1].name
    started = {name: at for name, at, _ in early.started}
    assert started[last] < min(early.begun[name] for name in dag.node(last).upstream)  # before its inputs existed
    late = Run(dag, tmp_path / "late", Late(), params(), echo=False)
    assert late.execute(), late.failures()
    model = next(name for name in dag.outputs if name == "model")
    assert digest(tmp_path / "early" / "outputs" / f"{model}.skops") == digest(tmp_path / "late" / "outputs" / f"{model}.skops")
    assert lock_holders(tmp_path / "early") == []


def test_a_process_started_early_that_ends_before_it_waits_is_replaced_and_touched_nothing(tmp_path):
    """As a stage whose import fails would: here a command that never enters the contract. Started early it
    cannot know its tree, fails where nothing can be written, and is replaced by a process started as the
    stage starts."""
    dag = cut("merge")
    merge = dag.node("merge")
    first = next(iter(merge.inputs))
    copy = ("import os, shutil, sys; root = os.environ['WORKFLOW_ROOT']; print('tree', root); "
            f"shutil.copy(root + '/inputs/{first}', root + '/outputs/{next(iter(merge.outputs))}')")
    backend = Recording({"merge": [sys.executable, "-c", copy]})
    run = Run(dag, tmp_path / "run", backend, params(), echo=False)
    assert run.execute(), run.failures()
    assert [early for name, _, early in backend.started if name == "merge"] == [True, False]
    tree = tmp_path / "run" / run.folders["merge"]
    assert (tree / "outputs" / next(iter(merge.outputs))).read_bytes() == (tree / "inputs" / first).read_bytes()
    log = (tmp_path / "run" / "logs" / f"{run.folders['merge']}.log").read_text()
    assert log == f"tree {tree}\n"  # only the process that ran as the stage: nothing of the one started early


def test_after_a_failure_upstream_no_process_started_early_is_left(tmp_path):
    dag = dag_module.load()
    broken = tmp_path / "broken.csv"
    error = bad_source(broken)
    backend = Recording()
    run = Run(dag, tmp_path / "run", backend, params(data_path_a=str(broken)), echo=False)
    assert not run.execute()
    first = next(node.name for node in dag.nodes if not node.upstream and "data_path_a" in
                 {src.flow_input for _, src in node.inputs.values()})
    assert error in run.results[first].error
    skipped = downstream(dag, [first])
    assert {run.results[name].status for name in skipped} == {"skipped"}
    assert backend.early() & skipped  # they had been started early, and are gone
    assert lock_holders(tmp_path / "run") == []


def test_stages_taken_from_the_cache_start_nothing_early(tmp_path):
    dag, cache = dag_module.load(), Cache(tmp_path / "cache")
    assert Run(dag, tmp_path / "r1", HostBackend(), params(), echo=False, cache=cache).execute()
    again = Recording()
    assert Run(dag, tmp_path / "r2", again, params(), echo=False, cache=cache).execute()
    assert again.started == []
    last = dag.nodes[-1].name
    epochs = Recording()  # a setting of the last stage changed: it alone runs, started as it starts
    assert Run(dag, tmp_path / "r3", epochs, params(epochs=3), echo=False, cache=cache).execute()
    assert epochs.started[0][0] == last and [early for _, _, early in epochs.started] == [False]


def test_a_stage_that_never_gets_ready_times_out_on_its_own_clock(tmp_path):
    """Its process hangs before it waits (an import that never returns): the task's clock, running from when
    the stage starts, kills it, and no second process is started in its place."""
    dag = cut("merge")
    backend = Recording({"merge": [sys.executable, "-c", "import time; time.sleep(600)"]})
    run = Run(dag, tmp_path / "run", backend, params(), echo=False, timeout=8)  # (the loads, too, must end within it on a busy machine)
    began = time.monotonic()
    assert not run.execute()
    assert time.monotonic() - began < 60
    assert run.results["merge"].error == "timed out after 8 s"
    assert [early for name, _, early in backend.started if name == "merge"] == [True]
    assert lock_holders(tmp_path / "run") == []


def test_the_stage_is_handed_its_tree_and_the_lock_only_by_the_runner_that_started_it(tmp_path):
    """contract.wait_for_inputs as a process sees it: READY on its socket once the imports are done, then its
    tree and the run directory's lock from there; its stdin is /dev/null throughout, as for a stage started any
    other way. A process the variable reached but the runner did not start itself (a child of the stage's) does
    not wait: it was never asked to."""
    lock = tmp_path / "lock"
    lock.write_text("")
    script = ("import sys, os; from stageflow.runtime import contract; contract.wait_for_inputs(['json']); "
              "print(os.environ['WORKFLOW_ROOT']); print(repr(sys.stdin.read())); "
              f"print(any(os.path.realpath('/proc/self/fd/' + fd) == {str(lock)!r} for fd in os.listdir('/proc/self/fd')))")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {**os.environ, contract.WAIT_ENV: f"{theirs.fileno()}:{os.getpid()}", "WORKFLOW_ROOT": "/dev/null/x"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            text=True, env=env, pass_fds=(theirs.fileno(),), cwd=ROOT)
    theirs.close()
    ours.settimeout(60)
    assert ours.recv(64) == contract.READY
    with open(lock) as held:
        socket.send_fds(ours, [json.dumps(str(tmp_path / "tree")).encode()], [held.fileno()])
    out, _ = proc.communicate(timeout=60)
    assert out.splitlines() == [str(tmp_path / "tree"), "''", "True"]
    ours.close()

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env[contract.WAIT_ENV] = f"{theirs.fileno()}:{os.getpid() + 100000}"  # not this process's child's runner
    out = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env=env, pass_fds=(theirs.fileno(),), cwd=ROOT, timeout=60).stdout
    assert out.splitlines() == ["/dev/null/x", "''", "False"]


def test_only_a_script_that_enters_through_the_contract_is_started_early(tmp_path):
    from stageflow.backends import waits_for_its_tree
    from stageflow.registry import STAGES

    assert all(waits_for_its_tree(ROOT / stage.script) for stage in STAGES.values())
    cases = {"own.py": "import os\nprint(open(os.environ['WORKFLOW_ROOT'] + '/inputs/x').read())\n",
             "broken.py": "def main(:\n", "named.py": "from stageflow.runtime.contract import main\nmain(print, [])\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert not waits_for_its_tree(tmp_path / name), name  # (the last one would wait: it starts late all the same)
    assert not waits_for_its_tree(tmp_path / "missing.py")


def test_a_stage_that_prints_much_before_it_waits_is_not_held_up_and_its_log_is_a_late_starts(tmp_path):
    """A pipe holds 64 KiB: a stage printing more before it waits for its tree (noisy imports) would be stuck
    writing, never ready, if nothing read it meanwhile. Its log reads as a late start's would: newlines
    translated alike, the line it was writing at the handover whole. And it reads stdin first: /dev/null."""
    dag = cut("merge")
    noisy = ("import runpy, sys; sys.stdin.read(); sys.stdout.write(''.join(f'noise {i}\\r\\n' for i in range(40000))); "
             "sys.stdout.write('cut '); sys.stdout.flush(); runpy.run_path('stages/merge/main.py', run_name='__main__')")
    backend = Recording({"merge": [sys.executable, "-c", noisy]})
    run = Run(dag, tmp_path / "run", backend, params(), echo=False, timeout=120)
    assert run.execute(), run.failures()
    assert [early for name, _, early in backend.started if name == "merge"] == [True]  # the one started early ran
    with open(tmp_path / "run" / "logs" / f"{run.folders['merge']}.log", newline="") as log:
        text = log.read()
    assert "\r" not in text  # translated, as a late start's output is read
    lines = text.splitlines()
    assert lines[:40000] == [f"noise {i}" for i in range(40000)]
    assert lines[40000].startswith("cut ") and "INFO" in lines[40000]  # the line it was writing, whole
    assert lines[-1].endswith("done: merged_data")


def test_at_most_so_many_stages_wait_at_once(tmp_path, monkeypatch):
    """A wide flow would otherwise start every stage's process at once."""
    from stageflow import backends

    monkeypatch.setattr(backends, "MOST_WAITING", 1)
    dag = dag_module.load()
    roots = [node.name for node in dag.nodes if not node.upstream]
    backend = Recording(early=downstream(dag, roots))
    run = Run(dag, tmp_path / "run", backend, params(), echo=False)
    assert run.execute(), run.failures()
    first_wave = [name for name, at, early in backend.started if early and at < min(backend.begun[n] for n in
                                                                                      downstream(dag, roots))]
    assert len(first_wave) == 1
    assert len(backend.early()) > 1  # the others were started early later, as the stages nearer them ran
