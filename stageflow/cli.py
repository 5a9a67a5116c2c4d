"""`stageflow`: run the flow locally and inspect its results."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path

from stageflow.stages import ROOT

DEFAULT_DATA_A = ROOT / "data" / "source_a.csv"
DEFAULT_DATA_B = ROOT / "data" / "source_b.jsonl"
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


def summary(run) -> str:
    rows = [("stage", "status", "seconds")]
    rows += [(name, r.status, f"{r.seconds:.2f}") for name, r in run.results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    from stageflow import dag as dag_module
    from stageflow.runner import ProcessBackend, Run, RunDirLock, RunError

    def backends(name: str):
        if name == "process":
            return ProcessBackend()
        from stageflow import containers  # needs the Docker SDK only when asked for
        return containers.DockerBackend() if name == "docker" else containers.ComposeBackend()

    params = {"data_path_a": str(Path(args.data_path_a).resolve()),
              "data_path_b": str(Path(args.data_path_b).resolve()),
              "epochs": args.epochs, "batch_size": args.batch_size}
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped job cleans up as a Ctrl-C does
    try:
        dag = dag_module.load(Path(args.flow))
        backend = backends(args.backend)
        run_dir = Path(args.run_dir).resolve() if args.run_dir else new_run_dir()
        with RunDirLock(run_dir):
            run = Run(dag, run_dir, backend, params, timeout=args.timeout)
            print(f"running flow model_training ({args.backend} backend) in {run_dir}", flush=True)
            ok = run.execute()
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n" + summary(run))
    if run.interrupted:
        print(f"\ninterrupted; stopped every running stage. Record: {run_dir / 'run.json'}", file=sys.stderr)
        return 130
    if not ok:
        print("\n" + "\n\n".join(run.failures()), file=sys.stderr)
        print(f"\nflow failed. Record: {run_dir / 'run.json'}", file=sys.stderr)
        return 1
    model, metrics_path = run.output_path("model"), run.output_path("metrics")
    metrics = json.loads(metrics_path.read_text())
    print(f"\nmodel:   {model}\nmetrics: {metrics_path}\nrecord:  {run_dir / 'run.json'}")
    print(f"hold-out accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f} "
          f"({metrics['n_train']} train / {metrics['n_test']} test rows, {metrics['epochs']} epochs)")
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


def cmd_environments(args: argparse.Namespace) -> int:
    from stageflow import environments

    try:
        print("\n".join(environments.run()))
    except environments.DominoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from stageflow import submit

    return submit.submit(args.data_path_a, args.data_path_b, args.epochs, args.batch_size)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stageflow", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole flow locally")
    run.add_argument("--backend", choices=["process", "docker", "compose"], default="process",
                     help="process: each stage a local process (default); docker: each stage in its image "
                          "(Docker SDK); compose: through docker-compose.yml, run directory .workflow")
    run.add_argument("--run-dir", help="directory for this run (default: a new runs/<time>, linked as runs/latest)")
    run.add_argument("--data-path-a", default=str(DEFAULT_DATA_A), help="source A (default: bundled sample)")
    run.add_argument("--data-path-b", default=str(DEFAULT_DATA_B), help="source B (default: bundled sample)")
    run.add_argument("--epochs", help="training epochs (default: flow.py's, 10)")
    run.add_argument("--batch-size", help="mini-batch size (default: flow.py's, 32)")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds before a stage is killed (default 3600)")
    run.add_argument("--flow", default=str(ROOT / "flow.py"), help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    for action, text in (("wheels", "download the stages' pinned wheels into wheels/ (host side)"),
                         ("build", "build every stage image that is not up to date"),
                         ("push", "push every stage image to a registry; prints digests")):
        cmd = sub.add_parser(f"images-{action}" if action != "wheels" else "wheels", help=text)
        cmd.set_defaults(func=cmd_images, action=action)
        if action == "build":
            cmd.add_argument("--force", action="store_true", help="rebuild even when the version tag exists")
        if action == "push":
            cmd.add_argument("--registry", required=True, help="host:port/prefix to push to")
    compose = sub.add_parser("compose-file", help="regenerate docker-compose.yml from the stage registry")
    compose.add_argument("--check", action="store_true", help="only check that docker-compose.yml is current")
    compose.set_defaults(func=cmd_compose, action="file")
    env = sub.add_parser("compose-env", help="print export lines for using docker-compose.yml by hand")
    env.set_defaults(func=cmd_compose, action="env")
    environments = sub.add_parser("environments", help="write each stage's Domino environment definition to "
                                  "build/environments.json; create or revise them on Domino when DOMINO_API_HOST "
                                  "and DOMINO_USER_API_KEY are set")
    environments.set_defaults(func=cmd_environments)
    submit = sub.add_parser("submit", help="from a Domino workspace: check what a remote run needs, then "
                            "`pyflyte run --remote flow.py model_training ...`")
    submit.add_argument("--data-path-a", required=True, help="source A, an absolute path as a Domino job sees it")
    submit.add_argument("--data-path-b", required=True, help="source B, an absolute path as a Domino job sees it")
    submit.add_argument("--epochs", help="training epochs (default: flow.py's)")
    submit.add_argument("--batch-size", help="mini-batch size (default: flow.py's)")
    submit.set_defaults(func=cmd_submit)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
