"""`stageflow`: run the flow locally and inspect its results (`stageflow run`, `stageflow report`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path

from stageflow import run_report
from stageflow.run_report import rows_cell, seconds
from stageflow.runtime.report import DASH, fmt
from stageflow.registry import ROOT, STAGES
from stageflow.rundir import RunError, os_error, write_atomic
from stageflow.runtime import schema as schemas

RUNS = ROOT / "runs"


def new_run_dir(prefix: str = "") -> Path:
    """runs/<prefix><UTC time>, plus runs/latest pointing at it; never reuses a directory by accident."""
    RUNS.mkdir(exist_ok=True)
    stamp = prefix + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = RUNS / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    latest = RUNS / "latest"
    tmp = RUNS / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    os.replace(tmp, latest)
    return path


def summary(record: dict) -> str:
    """The per-stage table printed at the end of every run, from its run.json."""
    rows = [("stage", "status", "seconds", "rows", "cached")]
    rows += [(name, stage.get("status", DASH), fmt(seconds(stage), ".2f"), rows_cell(stage),
              fmt(stage.get("cached"))) for name, stage in record.get("stages", {}).items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def headline_text(name: str, headline: dict) -> str:
    """A flow output's headline as aligned `label  value` lines under the output's name."""
    width = max(map(len, headline))
    lines = [f"  {label.ljust(width)}  {fmt(value)}" for label, value in headline.items()]
    return "\n".join([f"{name} headline:", *lines])


def write_run_report(run_dir: Path, record: dict, dag) -> Path:
    edges = [(up, node.name) for node in dag.nodes for up in sorted(node.upstream)]
    path = run_dir / "report.html"
    write_atomic(path, run_report.run_report(record, [node.name for node in dag.nodes], edges,
                                             run_report.headlines(run_dir, record)))
    return path


def data_paths(args: argparse.Namespace) -> dict[str, str]:
    """The sources: those given, else the samples the active schema names (the bundled iris data for the
    default schema), so switching schema needs no other option."""
    schema = schemas.active()
    paths = {}
    for name in ("data_path_a", "data_path_b"):
        given = getattr(args, name) or schema.samples.get(name)
        if given is None:
            raise RunError(f"flow input {name}: not given, and schema {schema.path} names no sample for it "
                           f"([samples] {name}); give --{name.replace('_', '-')}")
        paths[name] = str(Path(given).resolve())
    return paths


def backend_named(name: str):
    from stageflow.backends import HostBackend

    if name == "host":
        return HostBackend()
    from stageflow import containers  # needs the Docker SDK only when asked for
    return containers.DockerBackend() if name == "docker" else containers.ComposeBackend()


def cmd_run(args: argparse.Namespace) -> int:
    from stageflow import dag as dag_module
    from stageflow.cache import Cache
    from stageflow.runner import Run, check_params, check_timeout

    signal.signal(signal.SIGTERM, _interrupt)  # a stopped job cleans up as a Ctrl-C does
    try:
        params = {**data_paths(args), "epochs": args.epochs, "batch_size": args.batch_size}
        dag = dag_module.load(Path(args.flow), args.workflow)
        backend = backend_named(args.backend)
        check_params(dag, params)  # as Run does, but before a runs/<time> is made for a run that cannot start
        check_timeout(args.timeout)
        run_dir = Path(args.run_dir).resolve() if args.run_dir else new_run_dir()
        run = Run(dag, run_dir, backend, params, timeout=args.timeout, cache=None if args.no_cache else Cache())
        print(f"running flow {dag.name} ({args.backend} backend) in {run_dir}", flush=True)
        run.execute()
    except (RunError, dag_module.FlowError, schemas.SchemaError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = run.record.as_json()
    try:
        report_path = write_run_report(run_dir, record, dag)
    except OSError as err:
        report_path = f"not written: {os_error(err)}"
    return print_outcome(run, record, report_path)


def print_outcome(run, record: dict, report_path: Path | str) -> int:
    """The end of `stageflow run`: the stage table, then what failed, or the outputs and their headlines."""
    print("\n" + summary(record))
    print(f"\n{'run report:':16} {report_path}\n{'record:':16} {run.run_dir / 'run.json'}")
    if run.interrupted:
        print("\ninterrupted; stopped every running stage.", file=sys.stderr)
        return 130
    if record["status"] != "succeeded":
        print("\n" + "\n\n".join(run.failures()), file=sys.stderr)
        print("\nflow failed.", file=sys.stderr)
        return 1
    print("\n".join(f"{name + ':':16} {output['path']}" for name, output in record["outputs"].items()))
    for name, headline in run_report.headlines(run.run_dir, record).items():
        print("\n" + headline_text(name, headline))
    return 0


def ran_dag(flow: Path, workflow: str | None, record: dict):
    """The DAG a run ran: the workflow named, else the flow file's only one, else the one run.json names."""
    from stageflow import dag as dag_module

    try:
        return dag_module.load(flow, workflow)
    except dag_module.FlowError:
        if workflow or not isinstance(record.get("flow"), str):
            raise
        return dag_module.load(flow, record["flow"])


def cmd_report(args: argparse.Namespace) -> int:
    from stageflow import dag as dag_module

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        print(f"error: {run_dir} is not a run directory (no run.json)", file=sys.stderr)
        return 2
    record = json.loads((run_dir / "run.json").read_text())
    try:
        dag = ran_dag(Path(args.flow), args.workflow, record)
    except dag_module.FlowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        print(write_run_report(run_dir, record, dag))
    except OSError as err:
        print(f"error: run report: {os_error(err)}", file=sys.stderr)
        return 1
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from stageflow import images

    try:
        if args.action == "wheels":
            images.download_wheels()
            print(f"wheelhouse: {images.WHEELS} ({len(list(images.WHEELS.glob('*.whl')))} wheels)")
        elif args.action == "build":
            images.build_all(force=args.force)
        else:
            images.push_all(args.registry)
    except images.ImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_compose(args: argparse.Namespace) -> int:
    from stageflow import containers

    if args.action == "file":
        text = containers.compose_file()
        if args.check:
            current = (ROOT / "docker-compose.yml").read_text()
            if current != text:
                print("error: docker-compose.yml is stale; run `stageflow compose-file`", file=sys.stderr)
                return 1
            return 0
        (ROOT / "docker-compose.yml").write_text(text)
    else:
        print(containers.shell_env())
    return 0


def cmd_compose_stage(args: argparse.Namespace) -> int:
    """One stage through docker-compose.yml, with its inputs from a run directory or given paths."""
    from stageflow import containers, dag as dag_module

    latest = RUNS / "latest"
    run_dir = Path(args.from_dir) if args.from_dir else (latest if latest.is_dir() else None)
    given = dict(item.split("=", 1) for item in args.input)
    try:
        defaults = {name: str(path) for name, path in schemas.active().samples.items()}  # the schema's sample
        one = containers.one_stage(dag_module.load(Path(args.flow)), args.stage, run_dir, given, defaults)
        print(f"running stage {args.stage} through docker-compose.yml in {containers.COMPOSE_DIR}"
              + (f", inputs from {run_dir}" if run_dir else ""), flush=True)
        run = containers.compose_stage(one, args.timeout)
    except (RunError, schemas.SchemaError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if run.interrupted:
        return 130
    if run.failures():
        print("\n" + "\n\n".join(run.failures()), file=sys.stderr)
        return 1
    outputs = containers.COMPOSE_DIR / args.stage / "outputs"
    print(f"\nstage {args.stage} succeeded in {run.results[args.stage].seconds:.1f} s; outputs in {outputs}: "
          f"{', '.join(one.nodes[0].outputs)}\nto run it again by hand: {containers.by_hand(one)}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from stageflow import disk

    print("\n".join(disk.gc(args.keep_days, args.dry_run)))
    return 0


def cmd_environments(args: argparse.Namespace) -> int:
    from stageflow.domino import environments

    try:
        environments.run(say=lambda line: print(line, flush=True), visibility_name=args.visibility,
                         organization=args.organization)
    except (environments.DominoError, schemas.SchemaError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from stageflow.domino import submit

    return submit.submit(args.data_path_a, args.data_path_b, args.epochs, args.batch_size, args.dataset)


def cmd_verify_model(args: argparse.Namespace) -> int:
    from stageflow import model

    try:
        digest = model.verify(Path(args.model), Path(args.metrics))
    except model.ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"ok: {args.model} matches sha256 {digest} recorded in {args.metrics}")
    return 0


def cmd_check_schema(args: argparse.Namespace) -> int:
    from stageflow import check

    return check.check([Path(p) for p in args.files])


def schema_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--schema", metavar="PATH", help=f"the data's schema file (default: ${schemas.ENV}, "
                         f"else schema.toml at the repository root); sets {schemas.ENV} for the stages")


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, found {text!r}")
    return value


def name_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {text!r}")
    return text


def add_run_command(sub) -> None:
    run = sub.add_parser("run", help="run the whole flow locally")
    run.add_argument("--backend", choices=["host", "docker", "compose"], default="host",
                     type=lambda name: "host" if name == "process" else name,  # its name before 0.2
                     help="host: each stage a process on this machine (default); docker: each stage in its image "
                          "(Docker SDK); compose: through docker-compose.yml, run directory .workflow")
    schema_option(run)
    run.add_argument("--run-dir", help="directory for this run (default: a new runs/<time>, linked as runs/latest)")
    run.add_argument("--data-path-a", help="source A (default: the schema's sample, data/source_a.csv for iris)")
    run.add_argument("--data-path-b", help="source B (default: the schema's sample, data/source_b.jsonl for iris)")
    run.add_argument("--epochs", help="training epochs (default: flow.py's, 10)")
    run.add_argument("--batch-size", help="mini-batch size (default: flow.py's, 32)")
    run.add_argument("--timeout", default="3600", help="seconds a stage may take, hashing its sources and restoring "
                                                       "it from the cache included (default 3600)")
    run.add_argument("--no-cache", action="store_true",
                     help="run every stage even when the cache holds its outputs for the same inputs")
    run.add_argument("--flow", default=str(ROOT / "flow.py"), help="the flow file (default: this checkout's flow.py)")
    run.add_argument("--workflow", help="the @workflow to run, when the flow file defines several")
    run.set_defaults(func=cmd_run)


def add_report_command(sub) -> None:
    rep = sub.add_parser("report", help="write RUN_DIR/report.html: the DAG, each stage's status, time, "
                                        "memory, rows, logs and outputs")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.json), such as runs/latest")
    rep.add_argument("--flow", default=str(ROOT / "flow.py"), help="the flow file the run ran")
    rep.add_argument("--workflow", help="the @workflow it ran, when the flow file defines several (default: the "
                                        "one run.json names)")
    rep.set_defaults(func=cmd_report)


def add_compose_stage_command(sub) -> None:
    stage_cmd = sub.add_parser("compose-stage", help="run one stage through docker-compose.yml: prepare its tree "
                               "in .workflow/<stage>/ (inputs, outputs writable by the container's user), then "
                               "`docker compose run` it")
    stage_cmd.add_argument("stage", choices=list(STAGES), metavar="STAGE", help=", ".join(STAGES))
    stage_cmd.add_argument("--from", dest="from_dir", metavar="RUN_DIR",
                           help="run directory whose outputs and flow inputs feed the stage (default: runs/latest)")
    stage_cmd.add_argument("--input", action="append", default=[], metavar="NAME=VALUE", type=name_value,
                           help="an input of the stage: a file's path or a value (repeatable; wins over --from)")
    stage_cmd.add_argument("--timeout", type=float, default=3600.0, help="seconds before the stage is killed")
    stage_cmd.add_argument("--flow", default=str(ROOT / "flow.py"), help=argparse.SUPPRESS)
    stage_cmd.set_defaults(func=cmd_compose_stage)


def add_gc_command(sub) -> None:
    gc = sub.add_parser("gc", help="remove stage-cache entries and images that neither the current code nor a "
                        "recent run uses (docs/disk.md)")
    gc.add_argument("--keep-days", type=non_negative, default=7.0, metavar="DAYS",
                    help="keep cache entries used in the last DAYS days (default 7); the newest run's are always kept")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    gc.set_defaults(func=cmd_gc)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stageflow", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    add_run_command(sub)
    for action, text in (("wheels", "download the stages' pinned wheels into wheels/ (host side)"),
                         ("build", "build every stage image that is not up to date"),
                         ("push", "push every stage image to a registry; prints digests")):
        cmd = sub.add_parser(f"images-{action}" if action != "wheels" else "wheels", help=text)
        cmd.set_defaults(func=cmd_images, action=action)
        if action == "build":
            cmd.add_argument("--force", action="store_true", help="rebuild even when the version tag exists")
        if action == "push":
            cmd.add_argument("--registry", required=True, help="host:port/prefix to push to")
    verify = sub.add_parser("verify-model", help="check a model file against the sha256 in its metrics")
    verify.add_argument("model")
    verify.add_argument("metrics")
    verify.set_defaults(func=cmd_verify_model)
    compose = sub.add_parser("compose-file", help="regenerate docker-compose.yml from the stage registry")
    compose.add_argument("--check", action="store_true", help="only check that docker-compose.yml is current")
    compose.set_defaults(func=cmd_compose, action="file")
    env = sub.add_parser("compose-env", help="print export lines for using docker-compose.yml by hand")
    env.set_defaults(func=cmd_compose, action="env")
    add_compose_stage_command(sub)
    add_gc_command(sub)
    environments = sub.add_parser("environments", help="write each stage's Domino environment definition to "
                                  "build/environments.json; where Domino's API is reachable (docs/domino.md), create "
                                  "or revise them and wait for each revision's build")
    environments.add_argument("--visibility", default="Private", help="who may use the environments: Private "
                              "(you), Organization (an organization's members: give --organization) or Global "
                              "(everyone; Domino admins only). Default: Private")
    environments.add_argument("--organization", help="for --visibility Organization: the organization, by name")
    environments.set_defaults(func=cmd_environments)
    submit = sub.add_parser("submit", help="from a Domino workspace: check what a remote run needs, then "
                            "`pyflyte run --remote flow.py <workflow> ...`")
    submit.add_argument("--data-path-a", required=True, help="source A, an absolute path as a Domino job sees it")
    submit.add_argument("--data-path-b", required=True, help="source B, an absolute path as a Domino job sees it")
    submit.add_argument("--epochs", help="training epochs (default: flow.py's)")
    submit.add_argument("--batch-size", help="mini-batch size (default: flow.py's)")
    submit.add_argument("--dataset", help="the Domino dataset holding the sources, as name:version (its snapshot is "
                                          "mounted for the loads; name alone: its latest snapshot)")
    submit.set_defaults(func=cmd_submit)
    check = sub.add_parser("check-schema", help="check your data files against the schema (schema.toml, or "
                           "--schema / STAGEFLOW_SCHEMA) with the stages' own checks, before running the flow")
    schema_option(check)
    check.add_argument("files", nargs="+", metavar="FILE", help="a source file (CSV, CSV.gz, Parquet, JSON Lines)")
    check.set_defaults(func=cmd_check_schema)
    add_report_command(sub)
    return top


def select_schema(path: str | None) -> None:
    """Make `path` (else a relative STAGEFLOW_SCHEMA) the active schema as an absolute path: the stages, which
    run from the repository root, and the image build then all read the same file."""
    chosen = path or os.environ.get(schemas.ENV)
    if chosen:
        os.environ[schemas.ENV] = str(Path(chosen).absolute())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    select_schema(getattr(args, "schema", None))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
