"""The CLI as a user meets it: one line for every error, never a traceback, messages that name what was given.

The fuzzer runs every command against bad arguments and bad environments, in this process (cli.main is what
the console script calls), and fails on any traceback or any exit that is not a refusal."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from stageflow import cli
from stageflow.registry import STAGES

from conftest import ROOT, samples

BAD_VALUES = ["", " ", "-", "--", "nan", "inf", "-1", "0", "1e999", "٣", "x" * 5000, "\x1b[31mred", "a=b=c", "=",
              "/dev/null", "/dev/stdin", "/proc/self/mem", "/", "/nonexistent/file.csv", "runs", "~", "$HOME",
              "../../../../etc/passwd", "é", "\t", "NAME=", "=DIR", "file:///etc/passwd"]
COMMANDS = {  # each command with the options it takes, and what makes every case of it harmless
    "run": ["--backend", "--run-dir", "--timeout", "--code", "--environment-image", "--dataset", "--schema",
            "--data-path-a", "--data-path-b", "--epochs", "--batch-size", "--workflow", "--flow"],
    "report": [], "verify-model": [], "check-schema": ["--schema"], "compose-stage": ["--from", "--input", "--timeout"],
    "gc": ["--keep-days"], "submit": ["--data-path-a", "--data-path-b", "--epochs", "--batch-size", "--dataset"],
    "compose-file": [], "environments": ["--visibility", "--organization"],
}
# One of these in every `run`: refused before any work, wherever the other values leave the parse.
CERTAINLY_BAD_RUN = [["--timeout", "nan"], ["--data-path-a", ""], ["--epochs", "-1"], ["--backend", "kubernetes"],
                     ["--environment-image", "="], ["--dataset", "=DIR"], ["--code", "/nonexistent/code"],
                     ["--flow", "/nonexistent.py"], ["--batch-size", "٣"]]
ALWAYS = {"gc": ["--dry-run"], "compose-file": ["--check"]}  # never remove or rewrite anything
BAD_ENVIRONMENTS = [
    {}, {"STAGEFLOW_SCHEMA": "/nonexistent.toml"}, {"STAGEFLOW_SCHEMA": "/dev/null"}, {"STAGEFLOW_CACHE": "/etc"},
    {"DOMINO_API_HOST": "http://[::1"}, {"DOMINO_API_HOST": "not a url", "DOMINO_USER_API_KEY": "k"},
    {"DOCKER_HOST": "unix:///nonexistent.sock"}, {"STAGEFLOW_BACKEND": "kubernetes"}, {"STAGEFLOW_REGISTRY": "::"},
]


def cases(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        command = rng.choice(sorted(COMMANDS))
        argv = [command, *ALWAYS.get(command, [])]
        for _ in range(rng.randint(0, 3)):
            if COMMANDS[command] and rng.random() < 0.7:
                argv.append(rng.choice(COMMANDS[command]))
            argv.append(rng.choice(BAD_VALUES))
        if command == "run":
            argv[1:1] = rng.choice(CERTAINLY_BAD_RUN)
        yield argv, rng.choice(BAD_ENVIRONMENTS)


@pytest.mark.slow
def test_no_command_prints_a_traceback_whatever_it_is_given(tmp_path, monkeypatch, capfd):
    """Every case is refused (or, for a dry run, reports) without a traceback and makes no run directory."""
    from stageflow.domino import environments

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STAGEFLOW_CACHE", str(tmp_path / "cache"))
    for name, path in (("BUILD", tmp_path), ("PUSHED", tmp_path / "pushed.json"),
                       ("ENVIRONMENTS", tmp_path / "environments.json")):  # `environments` writes only here
        monkeypatch.setattr(environments, name, path)
    for key in [k for k in os.environ if k.startswith("DOMINO_")]:
        monkeypatch.delenv(key)
    seen = 0
    for argv, environment in cases(20, 400):
        if argv[0] == "run" and "--run-dir" not in argv:
            argv = [*argv, "--run-dir", str(tmp_path / "never")]
        saved = dict(os.environ)  # a command may set variables for the stages it would start (the schema)
        os.environ.update(environment)
        try:
            status = cli.main(argv)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out, err = capfd.readouterr()
        seen += 1
        assert "Traceback" not in out + err, (argv, environment, err[-2000:])
        assert "a bug in stageflow" not in err, (argv, environment, err[-2000:])  # every refusal is one of ours
        assert status in ((0, 1, 2) if argv[0] in ALWAYS else (1, 2)), (argv, environment, status, err[-500:])
        assert status == 0 or (out + err).strip(), (argv, environment, "refused without a word")
        assert not (tmp_path / "never").exists(), (argv, environment)
    assert seen == 400


def stageflow(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "stageflow", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_version_and_help():
    import tomllib

    proc = stageflow("--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert proc.returncode == 0 and proc.stdout == f"stageflow {version}\n", proc.stdout + proc.stderr
    proc = stageflow("run", "--help")
    assert proc.returncode == 0 and "--data-path-a" in proc.stdout and "--backend" in proc.stdout


def test_a_bad_option_prints_that_commands_usage():
    proc = stageflow("gc", "--keep-dayz", "3")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage: stageflow gc [OPTIONS]") and "Did you mean '--keep-days'" in proc.stderr


def value_option(name: str) -> str:
    """An option of `stageflow NAME` that takes a value (for `run`, one of the run's own)."""
    params = cli.RUN_OPTIONS if cli.cli.commands[name] is cli.run_command else cli.cli.commands[name].params
    return next(p.opts[0] for p in params if isinstance(p, cli.click.Option) and not p.is_flag and p.nargs == 1)


def has_value_option(name: str) -> bool:
    try:
        value_option(name)
    except StopIteration:
        return False
    return True


FLOW_RUN = ["run", "flow.py", "model_training"]  # `stageflow run` given a flow file: it parses the words itself
BAD_USES = (
    [[name, "--no-such-option"] for name in sorted(cli.cli.commands)] + [[*FLOW_RUN, "--no-such-option"]]
    + [[name, value_option(name)] for name in sorted(cli.cli.commands) if has_value_option(name)]
    + [[*FLOW_RUN, "--epochs"], ["run", "--epochs"]])


@pytest.mark.parametrize("argv", BAD_USES, ids=" ".join)
def test_every_command_given_a_bad_option_or_an_option_without_its_value_prints_its_usage(argv, capsys):
    """Whichever the command: its usage line, the problem in one line, where its options are listed. An option
    given no value (`stageflow gc --keep-days`) used to print the problem alone."""
    command = " ".join(argv[:-1])
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    usage, problem, hint = err.splitlines()
    assert usage.startswith(f"Usage: stageflow {command} [OPTIONS]"), err
    assert problem in (f"error: No such option '{argv[-1]}'.", f"error: Option '{argv[-1]}' requires an argument."), err
    assert hint == f"(`stageflow {command} --help` lists its options)"


def test_stageflow_alone_prints_its_help_once():
    """It printed the usage, then `error: ` and the whole help again."""
    proc = stageflow()
    assert proc.returncode == 2 and proc.stderr == ""
    assert proc.stdout.count("Usage: stageflow") == 1 and "error" not in proc.stdout
    assert all(re.search(rf"^  {name} ", proc.stdout, re.M) for name in cli.cli.commands)


def test_a_missing_argument_is_one_line_even_with_a_list_of_choices():
    proc = stageflow("compose-stage")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[1] == f"error: Missing argument 'STAGE'. Choose from: {', '.join(STAGES)}", \
        proc.stderr


def run_json(run_dir, **changes) -> None:
    record = {"flow": "model_training", "backend": "host", "status": "succeeded", "started_at": "2026-01-01T00:00:00+00:00",
              "finished_at": "2026-01-01T00:01:00+00:00", "params": {}, "outputs": {},
              "stages": {"load_a": {"status": "succeeded", "seconds": 1.0, "upstream": []}}}
    record.update(changes)
    (run_dir / "run.json").write_text(changes["raw"] if "raw" in changes else json.dumps(record))


TAMPERED = [
    {"raw": ""}, {"raw": "{"}, {"raw": "[]"}, {"raw": "null"}, {"raw": '"text"'}, {"flow": 3}, {"status": None},
    {"started_at": "yesterday"}, {"finished_at": 5}, {"params": []}, {"params": {"x": 1}}, {"stages": []},
    {"stages": {"a": []}}, {"stages": {"a": {"status": "exploded"}}}, {"stages": {"a": {"status": "failed",
                                                                                          "seconds": -1}}},
    {"stages": {"a": {"status": "failed", "seconds": "fast"}}}, {"stages": {"a": {"status": "failed", "error": 7}}},
    {"stages": {"a": {"status": "failed", "folder": "../../etc"}}}, {"stages": {"a": {"status": "failed",
                                                                                       "upstream": ["nowhere"]}}},
    {"stages": {"a": {"status": "failed", "outputs": {"x": 1}}}}, {"outputs": {"model": "/etc/shadow"}},
    {"outputs": []}, {"stages": {"a": {"status": "failed", "rows_in": "many"}}},
]


@pytest.mark.parametrize("changes", TAMPERED)
def test_report_on_a_tampered_run_record_is_one_line(tmp_path, changes):
    """The issue's example: `stageflow report` on a tampered run.json gave a traceback in 10 of 16 cases."""
    run_json(tmp_path, **changes)
    proc = stageflow("report", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: run record {tmp_path / 'run.json'}: "), proc.stderr
    assert not (tmp_path / "report.html").exists()


def test_report_of_a_good_record_needs_no_flow_file(tmp_path):
    run_json(tmp_path)
    proc = stageflow("report", str(tmp_path), "--flow", "/nonexistent.py")
    assert proc.returncode == 0, proc.stderr
    assert "load_a" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("make, said", [
    (lambda runs: runs.write_text("x"), "{runs}: not a directory, where runs keep their run directories"),
    (lambda runs: (runs / "latest").mkdir(parents=True), "{runs}/latest: a directory where the runner keeps a link"),
    (lambda runs: runs.mkdir() or (runs / "latest").write_text("x"), "{runs}/latest: a file where the runner keeps"),
])
def test_runs_or_runs_latest_in_the_way_is_said_before_anything_is_made(tmp_path, make, said):
    """The issue's example: `runs/latest` a directory or `runs` a file gave a traceback and left an empty run
    directory and a `.latest.<pid>` link behind."""
    from stageflow.rundir import RunError, new_run_dir

    runs = tmp_path / "runs"
    make(runs)
    before = sorted(os.listdir(runs)) if runs.is_dir() else None
    with pytest.raises(RunError, match=re.escape(said.format(runs=runs))):
        new_run_dir(runs=runs)
    assert (sorted(os.listdir(runs)) if runs.is_dir() else None) == before


def test_an_empty_data_path_is_refused_not_taken_for_the_sample(tmp_path):
    """The issue's example: `--data-path-a ""` (an unset variable) trained on the bundled sample."""
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), "--data-path-a", "")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.startswith("error: flow input data_path_a: empty; give a source file"), proc.stderr


def test_other_scripts_digits_are_not_numbers(tmp_path):
    """The issue's example: `--epochs ٣` ran 3 epochs."""
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), "--epochs", "٣")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr == "error: flow input epochs: expected a base-10 integer, found '٣'\n"


def test_compose_elsewhere_than_its_directory_is_said_up_front(tmp_path):
    """The issue's example: `--backend compose` without `--run-dir .workflow` failed each load with a runner error."""
    proc = stageflow("run", "--backend", "compose", "--run-dir", str(tmp_path / "run"), env={"DOCKER_HOST": "x"})
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.startswith("error: --backend compose runs in .workflow, where docker-compose.yml mounts the "
                                  "trees, not in --run-dir"), proc.stderr


def test_terminal_escapes_in_a_tasks_output_are_not_printed_raw(tmp_path):
    """A label or a log line from the data must not drive the terminal (colours, a new title, a cleared screen)."""
    a, b = samples()
    bad = tmp_path / "a.csv"
    lines = a.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + [lines[2].replace(lines[2].split(",")[-1], "\x1b]0;pwned\x07\x1b[2J")]))
    proc = stageflow("run", "--run-dir", str(tmp_path / "run"), "--data-path-a", str(bad), "--data-path-b", str(b))
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout + proc.stderr


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stageflow", "run", "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing, compiling the flow: before any task
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 0, 1), err  # 0/1: it finished (or failed) before the signal came


@pytest.mark.parametrize("host, said", [
    ("http://[::1", "DOMINO_API_HOST=http://[::1: not a URL (Invalid IPv6 URL); expected http(s)://host[:port]"),
    ("not a url", "DOMINO_API_HOST=not a url: not an http(s) URL with a host; expected http(s)://host[:port]"),
    ("ftp://domino", "DOMINO_API_HOST=ftp://domino: not an http(s) URL with a host"),
    ("https://domino:port", "DOMINO_API_HOST=https://domino:port: not a URL (Port could not be cast"),
])
def test_a_malformed_domino_api_host_is_named(tmp_path, host, said):
    """The issue's example: a malformed DOMINO_API_HOST printed a traceback."""
    env = {"DOMINO_API_HOST": host, "DOMINO_USER_API_KEY": "k"}
    proc = stageflow("submit", "--data-path-a", "/mnt/a", "--data-path-b", "/mnt/b", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and f"  - {said}" in proc.stderr, proc.stderr
