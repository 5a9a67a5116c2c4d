"""`stageflow`: run a Domino flow locally and inspect its results (`stageflow run`, `stageflow report`), build
and push the stage images, and check and submit the flow to Domino.

Built on click, which flytekit already brings and which pyflyte builds a workflow's options with: `stageflow run
FLOW.py WORKFLOW --INPUT VALUE ...` takes the words of `pyflyte run --remote` and its options come from the
workflow's signature. Every error of the project's own (stageflow.runtime.contract.StageError) is caught in
one place, `main`, and printed as one line; so is anything unexpected: no command prints a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from importlib import metadata
from pathlib import Path

import click

from stageflow import run_report
from stageflow.rundir import RunError, os_error, write_atomic
from stageflow.registry import ROOT, STAGES
from stageflow.run_report import rows_cell, seconds
from stageflow.runtime import contract, schema as schemas
from stageflow.runtime.contract import StageError
from stageflow.runtime.report import DASH, fmt

FLOW = ROOT / "flow.py"


def version() -> str:
    try:
        return metadata.version("stageflow")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def summary(record: dict) -> str:
    """The per-task table printed at the end of every run, from its run.json."""
    rows = [("task", "status", "seconds", "rows", "cached")]
    rows += [(name, stage.get("status", DASH), fmt(seconds(stage), ".2f"), rows_cell(stage),
              fmt(stage.get("cached"))) for name, stage in record.get("stages", {}).items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stopping(run) -> bool:
    """Whether `run` was interrupted; if so, the process ignores any further Ctrl-C or SIGTERM from now on.
    The run has ended every task and written its record; what is left is the summary and the exit, which a
    signal arriving a moment later (the runner's own handlers are gone by then) must not cut short into a
    KeyboardInterrupt at exit, nor into a second message."""
    if run.interrupted:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    return run.interrupted


def headline_text(name: str, headline: dict) -> str:
    """A flow output's headline as aligned `label  value` lines under the output's name."""
    width = max(map(len, headline))
    lines = [f"  {label.ljust(width)}  {fmt(value)}" for label, value in headline.items()]
    return "\n".join([f"{name} headline:", *lines])


def write_run_report(run_dir: Path, record: dict, order: list[str], edges: list[tuple[str, str]]) -> Path:
    path = run_dir / "report.html"
    write_atomic(path, run_report.run_report(record, order, edges, run_report.headlines(run_dir, record)))
    return path


def print_outcome(run, record: dict, report_path: Path | str) -> int:
    """The end of `stageflow run`: the task table, then what failed, or the outputs and their headlines."""
    print(contract.printable("\n" + summary(record)))
    print(f"\n{'run report:':16} {report_path}\n{'record:':16} {run.run_dir / 'run.json'}")
    newest = last_succeeded(run, record["status"] == "succeeded" and not run.interrupted)
    if newest:
        print(f"{'last succeeded:':16} {newest}")
    if run.interrupted:
        print("\ninterrupted; stopped every running task.", file=sys.stderr)
        return 130
    if record["status"] != "succeeded":
        print(contract.printable("\n" + "\n\n".join(run.failures())), file=sys.stderr)
        print("\nflow failed.", file=sys.stderr)
        return 1
    for name, output in record["outputs"].items():
        print(contract.printable(f"{name + ':':16} {output['path'] if 'path' in output else contract_text(output['value'])}"))
    failed = False
    for tracked, cached in run_report.trackings(run.run_dir, record, run.dag).values():
        line, failed_here = tracking_line(tracked, cached)
        failed |= failed_here
        print(contract.printable(f"{'tracking:':16} {line}"))
    for name, headline in run_report.headlines(run.run_dir, record).items():
        print(contract.printable("\n" + headline_text(name, headline)))
    if failed:
        print("\nthe flow succeeded, but its MLflow tracking failed (see tracking above).", file=sys.stderr)
        return 1
    return 0


def last_succeeded(run, succeeded: bool) -> str | None:
    """Where the newest run that succeeded is (runs/latest may be a failed one): runs/last-succeeded, which
    the runner points at each run in runs/ that succeeds. Nothing to say after a success elsewhere."""
    from stageflow import rundir

    if run.link_problem:
        return run.link_problem
    link, target = rundir.runs_dir() / rundir.SUCCEEDED, rundir.pointed(rundir.SUCCEEDED)
    if succeeded and not rundir.in_runs(run.run_dir):
        return None
    if target is None:
        return f"none yet in {link.parent}"
    return f"{link} -> {target.name}" + (" (this run)" if target.name == run.run_dir.name and succeeded else "")


def tracking_line(tracked: dict, cached: str | None) -> tuple[str, bool]:
    """What became of MLflow tracking, in one line (train records it in its metrics: stageflow/runtime/
    tracking.py), and whether it failed. A task reused from the cache ran nothing, so logged nothing now."""
    status = tracked.get("status")
    if cached:
        if os.environ.get("MLFLOW_TRACKING_URI") or status != "off":
            before = f" (it was logged then as MLflow run {tracked['run_id']})" if status == "logged" else ""
            return (f"skipped: {cached} was reused from the cache, so nothing was logged now{before}; run with "
                    f"--no-cache to run it and log it"), False
        return "off (MLFLOW_TRACKING_URI is not set)", False
    if status == "logged":
        line = (f"MLflow run {tracked.get('run_id')} in experiment {tracked.get('experiment')} "
                f"(id {tracked.get('experiment_id')}) at {tracked.get('tracking_uri')}")
        return line + (f"; but {tracked['warning']}" if tracked.get("warning") else ""), False
    if status == "failed":
        return (f"failed: {tracked.get('error')} (tracking URI {tracked.get('tracking_uri')}); the outputs are "
                f"complete: fix it and run with --no-cache to log them"), True
    return f"off ({tracked.get('reason') or 'MLFLOW_TRACKING_URI is not set'})", False


def contract_text(value) -> str:
    return value if isinstance(value, str) else contract.format_value(value)


# ---------------------------------------------------------------- stageflow run

def select_schema(path: str | None) -> None:
    """Make `path` (else a relative STAGEFLOW_SCHEMA) the active schema as an absolute path: the stages, which
    run from the repository root, and the image build then all read the same file."""
    chosen = path or os.environ.get(schemas.ENV)
    if chosen:
        os.environ[schemas.ENV] = str(Path(chosen).absolute())


def schema_option(function):
    return click.option("--schema", metavar="PATH", help=f"the data's schema file (default: ${schemas.ENV}, else "
                        f"schema.toml at the repository root); sets {schemas.ENV} for the stages")(function)


RUN_OPTIONS = [
    click.Option(["--backend"], type=click.Choice(["host", "docker", "compose", "process"]), default="host",
                 show_default=True, help="host: each of this project's stages a process on this machine; docker: "
                 "each task in its environment's image (Docker SDK); compose: this project's stages through "
                 "docker-compose.yml, run directory .workflow"),
    click.Option(["--run-dir"], metavar="DIR", help="directory for this run (default: a new runs/<time>, linked "
                 "as runs/latest)"),
    click.Option(["--timeout"], default="3600", show_default=True, metavar="SECONDS",
                 help="seconds a task may take, hashing its sources and restoring it from the cache included"),
    click.Option(["--no-cache"], is_flag=True, help="run every task even when the cache holds its outputs for the "
                 "same inputs"),
    click.Option(["--code"], metavar="DIR", help="what the tasks see at /mnt/code (default: the git top level "
                 "holding FLOW.py, else its folder); each task gets a copy of its own"),
    click.Option(["--environment-image", "environment_images"], multiple=True, metavar='"ENVIRONMENT NAME=IMAGE"',
                 help="the local image that runs the tasks of a Domino environment (repeatable; also read from "
                 "environment-images.txt in the code directory)"),
    click.Option(["--dataset", "datasets"], multiple=True, metavar="NAME=DIR",
                 help="a local folder mounted read-only where Domino mounts dataset NAME for a job (/mnt/data/NAME; "
                 "repeatable)"),
    click.Option(["--dask"], metavar="N|HOST:PORT", help="run the cluster stages (load, merge, process) on a Dask "
                 "cluster: N worker processes started for the run, or the running scheduler at HOST:PORT; host "
                 "backend only (docs/performance.md)"),
    click.Option(["--schema"], metavar="PATH", help=f"the data's schema file (default: ${schemas.ENV}, else "
                 f"schema.toml at the repository root); sets {schemas.ENV} for the stages"),
]
PROJECT_OPTIONS = [  # this project's flow only, when `stageflow run` is given no FLOW.py: as before
    click.Option(["--flow"], default=str(FLOW), show_default="this checkout's flow.py", help="the flow file"),
    click.Option(["--workflow"], help="the @workflow to run, when the flow file defines several"),
]


def input_options(dag, dashed: bool) -> list[click.Option]:
    """One option per workflow input, as pyflyte names them (`--data_path_a`, a bool as `--x/--no_x`), and
    dashed too (`--data-path-a`). Values are taken as text and checked by the runner's one check
    (stageflow.dag.normalise), so every path gives the same one-line error."""
    found = []
    for name, kind in dag.inputs.items():
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = dag.defaults.get(name)
        shown = ", required" if name not in dag.defaults else f", default {contract_text(default)}"
        what = contract.TYPE_NAMES[kind]
        if kind is bool:
            decls = [f"--{name}/--no_{name}"] + ([f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}"]
                                                 if dashed and "_" in name else [])
            found.append(click.Option([*decls, name], default=None, help=f"flow input ({what}{shown})"))
        else:
            found.append(click.Option([*(names if dashed else names[:1]), name], default=None,
                                      metavar=what.upper(), help=f"flow input ({what}{shown})"))
    return found


class Command(click.Command):
    """A command whose every usage error names the command: click's parser leaves its context out of some (an
    option given no value), and without it `main` could not print that command's usage."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            err.ctx = err.ctx or ctx
            raise


class Group(Command, click.Group):
    command_class = Command


def parse_inputs(dag, words: list[str], prog: str, extra: list[click.Option] = ()) -> dict:
    """The workflow's inputs (and `extra` options) from `words`; --help lists them."""
    command = Command(prog, params=[*extra, *input_options(dag, dashed=True)],
                            help=f"Run workflow {dag.name}; its inputs:" if dag.name else None,
                            context_settings={"max_content_width": 110})
    with command.make_context(prog, list(words)) as ctx:
        return dict(ctx.params)


def sample_defaults(dag, params: dict) -> dict:
    """This project's flow: each data path not given is the active schema's sample for it ([samples]), so
    switching the schema needs no other option; one given empty is refused, never taken for not given."""
    schema = schemas.active()
    found = dict(params)
    for name, sample in schema.samples.items():
        if name not in dag.inputs:
            continue
        value = params.get(name)
        if value is None:
            found[name] = str(Path(sample).resolve())
        elif not str(value).strip():
            raise RunError(f"flow input {name}: empty; give a source file (leave the option out for the schema's "
                           f"sample, {sample})")
        else:
            found[name] = os.path.abspath(value)
    missing = [name for name in dag.inputs if name not in dag.defaults and found.get(name) is None]
    if missing:
        raise RunError(f"flow input {missing[0]}: not given, and schema {schema.path} names no sample for it "
                       f"([samples] {missing[0]}); give --{missing[0].replace('_', '-')}")
    return found


def setup_from(options: dict, flow_file: Path):
    from stageflow import jobs

    from stageflow import dask_cluster

    setup = jobs.Setup(code=Path(options["code"]).resolve() if options.get("code") else None,
                       dask=dask_cluster.parse(options.get("dask")))
    if setup.code is not None and not setup.code.is_dir():
        raise RunError(f"--code {options['code']}: not a directory")
    for text in options.get("environment_images") or ():
        name, image = jobs.parse_mapping(text, "--environment-image")
        setup.images[name] = image
    for text in options.get("datasets") or ():
        name, folder = jobs.parse_mapping(text, "--dataset")
        path = Path(folder).resolve()
        if not path.is_dir():
            raise RunError(f"--dataset {text}: {folder} is not a directory")
        setup.datasets[name] = path
    return setup.with_flow(flow_file)


def split_words(words: list[str]) -> tuple[list[str], list[str]] | None:
    """(run options, [FLOW.py, WORKFLOW, inputs...]) when the words name a flow file after the run options;
    None when they do not (this project's flow, its inputs and the run options mixed, as before)."""
    takes_value = {name for option in RUN_OPTIONS if not option.is_flag for name in option.opts}
    flags = {name for option in RUN_OPTIONS if option.is_flag for name in option.opts}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("-"):
            return (words[:position], words[position:]) if word.endswith(".py") else None
        name = word.split("=", 1)[0]
        if name in takes_value:
            position += 1 if "=" in word else 2
        elif name in flags:
            position += 1
        else:
            return None
    return None


def parse_options(params: list[click.Option], words: list[str], **settings) -> dict:
    command = Command("stageflow run", params=params, context_settings=settings)
    with command.make_context("stageflow run", list(words)) as ctx:
        return dict(ctx.params)


@click.command("run", cls=Command, add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
def run_command(words):
    """Run a flow locally: `stageflow run [RUN OPTIONS] FLOW.py WORKFLOW [--INPUT VALUE ...]`, the words of
    `pyflyte run --remote` without --remote; without FLOW.py, this project's flow.py (`stageflow run --help`)."""
    return execute(*parse_run(list(words)))


def parse_run(words: list[str]):
    """The DAG, the run options, the flow inputs and the flow file that `stageflow run WORDS` means; --help
    prints what they may be (and exits)."""
    from stageflow import dag as dag_module

    split = split_words(words)
    if split:
        run_words, (flow, *rest) = split
        options = parse_options(RUN_OPTIONS, run_words)
        select_schema(options.get("schema"))
        flow_file = Path(flow)
        if not rest or rest[0].startswith("-"):
            dag_module.checked(flow_file)
            raise RunError(f"give the workflow to run after {flow_file}: stageflow run {flow_file} WORKFLOW "
                           f"[--INPUT VALUE ...]")
        dag = dag_module.load(flow_file, rest[0])
        return dag, options, parse_inputs(dag, rest[1:], f"stageflow run {flow_file} {rest[0]}"), flow_file
    every = [*RUN_OPTIONS, *PROJECT_OPTIONS]
    first = parse_options(every, [w for w in words if w not in ("--help", "-h")], ignore_unknown_options=True,
                          allow_extra_args=True)
    select_schema(first.get("schema"))
    dag = dag_module.load(Path(first["flow"]), first.get("workflow"))
    params = parse_inputs(dag, words, "stageflow run", every)
    options = {option.name: params.pop(option.name) for option in every}
    return dag, options, sample_defaults(dag, params), Path(options["flow"])


def parse(argv: list[str]) -> None:
    """Check that `stageflow ARGV` would be taken as written, without running it (the guides' commands are
    checked so: tests/test_docs.py); a refusal raises as the command would."""
    name, rest = argv[0], list(argv[1:])
    if name not in cli.commands:
        raise click.UsageError(f"no such command {name!r}")
    schema = os.environ.get(schemas.ENV)
    try:
        if cli.commands[name] is run_command:
            parse_run(rest)
        else:
            cli.commands[name].make_context(name, rest)
    finally:  # parse_run selects the schema it names for the stages it would run: nothing runs here
        if schema is None:
            os.environ.pop(schemas.ENV, None)
        else:
            os.environ[schemas.ENV] = schema


def options_of(name: str) -> set[str]:
    """Every option `stageflow NAME` takes (for `run`: also this project's flow inputs)."""
    command = cli.commands[name]
    if command is run_command:
        from stageflow import dag as dag_module

        params = [*RUN_OPTIONS, *PROJECT_OPTIONS, *input_options(dag_module.load(FLOW), dashed=True)]
    else:
        params = command.params
    return {"--help", "-h"} | {opt for param in params for opt in [*param.opts, *param.secondary_opts]}


def execute(dag, options: dict, params: dict, flow_file: Path) -> int:
    """Check everything before a run directory exists, run, then print the table and the outputs."""
    from stageflow.backends import backend_named
    from stageflow.cache import Cache
    from stageflow.containers import COMPOSE_DIR
    from stageflow.runner import Run

    select_schema(options.get("schema"))
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped job cleans up as a Ctrl-C does
    run_dir = options.get("run_dir")
    if options["backend"] == "compose":  # docker-compose.yml mounts the trees from .workflow/: the run goes there
        if run_dir and Path(run_dir).resolve() != COMPOSE_DIR.resolve():
            raise RunError(f"--backend compose runs in {os.path.relpath(COMPOSE_DIR)}, where docker-compose.yml "
                           f"mounts the trees, not in --run-dir {run_dir}; leave --run-dir out")
        run_dir = str(COMPOSE_DIR)
    backend = backend_named(options["backend"])
    run = Run(dag, Path(run_dir).resolve() if run_dir else None, backend, params, timeout=options["timeout"],
              cache=None if options.get("no_cache") else Cache(), setup=setup_from(options, flow_file))
    run.execute()
    stopping(run)
    record = run.record.as_json()
    try:
        report_path = write_run_report(run.run_dir, record, [n.name for n in dag.nodes],
                                       [(up, n.name) for n in dag.nodes for up in sorted(n.upstream)])
    except OSError as err:
        report_path = f"not written: {os_error(err)}"
    return print_outcome(run, record, report_path)


# ---------------------------------------------------------------- the other commands

@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(version(), "--version", prog_name="stageflow", message="%(prog)s %(version)s")
def cli():
    """stageflow: run a Domino flow locally, build its images, submit it to Domino."""


cli.add_command(run_command)


@cli.command("report")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--flow", default=str(FLOW), help="the flow file the run ran (only for a run.json that does not "
              "record its DAG)")
@click.option("--workflow", help="the @workflow it ran, when the flow file defines several")
def report_command(run_dir: Path, flow: str, workflow: str | None):
    """Write RUN_DIR/report.html: the DAG, each task's status, time, memory, rows, logs and outputs."""
    from stageflow import records

    record = records.read(run_dir)
    order = list(record.get("stages", {}))
    if all("upstream" in stage for stage in record["stages"].values()):
        edges = [(up, name) for name, stage in record["stages"].items() for up in stage["upstream"]]
    else:  # an older run.json: the DAG from the flow file
        from stageflow import dag as dag_module

        dag = dag_module.load(Path(flow), workflow or record.get("flow"))
        edges = [(up, n.name) for n in dag.nodes for up in sorted(n.upstream)]
    try:
        print(write_run_report(run_dir, record, order, edges))
    except OSError as err:
        raise RunError(f"run report: {os_error(err)}") from None


@cli.command("wheels")
def wheels_command():
    """Download the stages' pinned wheels into wheels/ (host side)."""
    from stageflow import images

    images.download_wheels()
    print(f"wheelhouse: {images.WHEELS} ({len(list(images.WHEELS.glob('*.whl')))} wheels)")


@cli.command("images-build")
@click.option("--force", is_flag=True, help="rebuild even when the version tag exists")
def images_build_command(force: bool):
    """Build every stage image that is not up to date."""
    from stageflow import images

    images.build_all(force=force)


@cli.command("standard-environment")
@click.option("--force", is_flag=True, help="rebuild even when the version tag exists")
def standard_environment_command(force: bool):
    """Build the local standard environment: the image a Domino flow's task runs on when its environment has no
    local image (docs/any-flow.md)."""
    from stageflow import images

    images.build_standard_environment(force=force)


@cli.command("images-push")
@click.option("--registry", required=True, help="host:port/prefix to push to")
def images_push_command(registry: str):
    """Push every stage image to a registry; prints digests."""
    from stageflow import images

    images.push_all(registry)


@cli.command("verify-model")
@click.argument("model")
@click.argument("metrics")
def verify_model_command(model: str, metrics: str):
    """Check a model file against the sha256 in its metrics."""
    from stageflow import model as models

    digest = models.verify(Path(model), Path(metrics))
    print(f"ok: {model} matches sha256 {digest} recorded in {metrics}")


@cli.command("compose-file")
@click.option("--check", is_flag=True, help="only check that docker-compose.yml is current")
def compose_file_command(check: bool):
    """Regenerate docker-compose.yml from the stage registry."""
    from stageflow import containers

    text = containers.compose_file()
    if check:
        if (ROOT / "docker-compose.yml").read_text() != text:
            raise ActionFailed("docker-compose.yml is stale; run `stageflow compose-file`")
        return
    (ROOT / "docker-compose.yml").write_text(text)


@cli.command("compose-env")
def compose_env_command():
    """Print export lines for using docker-compose.yml by hand."""
    from stageflow import containers

    print(containers.shell_env())


@cli.command("compose-stage")
@click.argument("stage", metavar="STAGE", type=click.Choice(list(STAGES)))
@click.option("--from", "from_dir", metavar="RUN_DIR", help="run directory whose outputs and flow inputs feed the "
              "stage (default: runs/latest)")
@click.option("--input", "given", multiple=True, metavar="NAME=VALUE", help="an input of the stage: a file's path "
              "or a value (repeatable; wins over --from)")
@click.option("--timeout", type=float, default=3600.0, help="seconds before the stage is killed")
@click.option("--flow", default=str(FLOW), hidden=True)
def compose_stage_command(stage: str, from_dir: str | None, given: tuple[str, ...], timeout: float, flow: str):
    """Run one stage through docker-compose.yml: prepare its tree in .workflow/<stage>/ (inputs, outputs writable
    by the container's user), then `docker compose run` it."""
    from stageflow import containers, dag as dag_module, jobs

    latest = ROOT / "runs" / "latest"
    run_dir = Path(from_dir) if from_dir else (latest if latest.is_dir() else None)
    inputs = dict(jobs.parse_mapping(item, "--input") for item in given)
    defaults = {name: str(path) for name, path in schemas.active().samples.items()}  # the schema's sample
    one = containers.one_stage(dag_module.load(Path(flow)), stage, run_dir, inputs, defaults)
    print(f"running stage {stage} through docker-compose.yml in {containers.COMPOSE_DIR}"
          + (f", inputs from {run_dir}" if run_dir else ""), flush=True)
    run = containers.compose_stage(one, timeout)
    if stopping(run):
        sys.exit(130)
    if run.failures():
        print("\n" + "\n\n".join(run.failures()), file=sys.stderr)
        sys.exit(1)
    outputs = containers.COMPOSE_DIR / stage / "outputs"
    print(f"\nstage {stage} succeeded in {run.results[stage].seconds:.1f} s; outputs in {outputs}: "
          f"{', '.join(one.nodes[0].outputs)}\nto run it again by hand: {containers.by_hand(one)}")


def non_negative(ctx, param, text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise click.BadParameter(f"expected a number of days >= 0, found {text!r}")
    return value


@cli.command("gc")
@click.option("--keep-days", default="7", callback=non_negative, metavar="DAYS",
              help="keep cache entries used in the last DAYS days (default 7); the newest run's are always kept")
@click.option("--dry-run", is_flag=True, help="only say what would be removed")
def gc_command(keep_days: float, dry_run: bool):
    """Remove stage-cache entries and images that neither the current code nor a recent run uses (docs/disk.md)."""
    from stageflow import disk

    print("\n".join(disk.gc(keep_days, dry_run)))


@cli.command("environments")
@click.option("--visibility", default="Private", show_default=True, help="who may use the environments: Private "
              "(you), Organization (an organization's members: give --organization) or Global (everyone; Domino "
              "admins only)")
@click.option("--organization", help="for --visibility Organization: the organization, by name")
def environments_command(visibility: str, organization: str | None):
    """Write each stage's Domino environment definition to build/environments.json; where Domino's API is
    reachable (docs/domino.md), create or revise them and wait for each revision's build."""
    from stageflow.domino import environments

    environments.run(say=lambda line: print(line, flush=True), visibility_name=visibility, organization=organization)


def training_options(function):
    """`stageflow submit`'s training settings, one option per input of the train task (flow.py's defaults)."""
    from stageflow.runtime import inputs

    for name in reversed(inputs.SETTINGS):
        function = click.option(f"--{name.replace('_', '-')}", name, help=f"the train task's {name} (default: "
                                f"flow.py's)")(function)
    return function


@cli.command("submit")
@click.option("--data-path-a", required=True, help="source A, an absolute path as a Domino job sees it")
@click.option("--data-path-b", required=True, help="source B, an absolute path as a Domino job sees it")
@training_options
@click.option("--dataset", help="the Domino dataset holding the sources, as name:version (its snapshot is mounted "
              "for the loads; name alone: its latest snapshot)")
def submit_command(data_path_a, data_path_b, dataset, **settings):
    """From a Domino workspace: check what a remote run needs, then `pyflyte run --remote flow.py <workflow> ...`."""
    from stageflow.domino import submit

    sys.exit(submit.submit(data_path_a, data_path_b, settings, dataset))


@cli.command("check-schema")
@schema_option
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def check_schema_command(schema: str | None, files: tuple[str, ...]):
    """Check your data files against the schema (schema.toml, or --schema / STAGEFLOW_SCHEMA) with the stages'
    own checks, before running the flow."""
    from stageflow import check

    select_schema(schema)
    sys.exit(check.check([Path(p) for p in files]))


@cli.command("draft-schema")
@click.argument("source", metavar="FILE", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="PATH",
              help="write the draft there (default: print it); an existing file is kept unless --force")
@click.option("--force", is_flag=True, help="replace the file -o names")
def draft_schema_command(source: Path, output: Path | None, force: bool):
    """Draft a schema.toml from a source file (CSV, CSV.gz, Parquet, JSON Lines): its columns with the types the
    load takes for every value, a guessed key and label, for you to edit (docs/own-data.md)."""
    from stageflow import draft

    text = draft.write(source, output, force)
    if text is not None:
        print(text, end="")


class ActionFailed(StageError):
    exit_status = 1


def main(argv: list[str] | None = None) -> int:
    """Every command, every error in one place: one line, no traceback, an exit status that says which."""
    if not os.environ.get(schemas.ENV) and schemas.DEFAULT != ROOT / "schema.toml":
        os.environ[schemas.ENV] = str(ROOT / "schema.toml")  # installed apart from the project: the project's
    try:
        with cli.make_context("stageflow", list(sys.argv[1:] if argv is None else argv)) as ctx:
            result = cli.invoke(ctx)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as done:  # --help, --version
        return done.exit_code
    except click.exceptions.NoArgsIsHelpError as err:  # `stageflow` alone: what it can do
        click.echo(err.ctx.get_help())
        return err.exit_code
    except click.ClickException as err:  # a bad option or argument: that command's usage, the problem, the help
        if err.ctx is not None:
            click.echo(err.ctx.get_usage(), err=True)
        click.echo(f"error: {' '.join(err.format_message().split())}", err=True)  # one line: a choice's list too
        if err.ctx is not None:
            click.echo(f"(`{err.ctx.command_path} --help` lists its options)", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        return 130
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except StageError as err:
        print(f"error: {contract.one_line(err)}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"error: {os_error(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a bug of ours: still one line, and where to report it
        print(f"error: unexpected {contract.one_line(err)} (a bug in stageflow {version()}: please report it with "
              f"the command you ran)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
