"""Benchmark: the edit-to-run loop of the images, how long `make images` takes after an edit.

    make bench-images                                     # this checkout, one round
    make bench-images BENCH_ARGS="--checkout ../main --repeat 2"   # another checkout beside it, alternating

For each checkout it copies the tracked files (`git ls-files`, with their uncommitted edits) and the
wheelhouse (hard links) into a temporary directory, builds that copy's images once under a registry prefix
of the bench's own (`stageflow-bench-N`, so nothing of yours is replaced or removed), then, per round, times
`python -m stageflow images-build` in the copy, the last step of `make images`:
  1. after an edit of the shared runtime code (a comment appended to stageflow/runtime/progress.py);
  2. after an edit of one stage's main.py (--stage, default train: the stage with the most libraries).
Each edit is new text, so no earlier build can serve it from the layer cache. It prints the seconds, which
images were rebuilt and the disk the rebuild added (the layers that no image under the prefix had before:
what one more version costs), then removes every image under its prefixes, and the copies. Your checkout is
only read. Figures are wall seconds: on a busy machine, compare checkouts side by side in one run.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stageflow import images  # noqa: E402
from stageflow.disk import BUILD_STAGE_OF  # noqa: E402

RUNTIME_FILE = "stageflow/runtime/progress.py"
PREFIX = "stageflow-bench"


def copy_checkout(checkout: Path, dest: Path) -> None:
    """The checkout's tracked files as they are on disk, and its wheelhouse (or this one's) as hard links."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=checkout, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = checkout / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    wheels = checkout / "wheels" if (checkout / "wheels").is_dir() else images.WHEELS
    shutil.copytree(wheels, dest / "wheels", copy_function=link)


def link(source: str, dest: str) -> None:
    """A hard link (no space, no time), or a copy where the two sit on different file systems."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def build(copy: Path, prefix: str) -> tuple[float, list[str], str]:
    """`python -m stageflow images-build` in the copy, as `make images` runs it: seconds, what it rebuilt."""
    env = {**os.environ, "PYTHONPATH": str(copy), "STAGEFLOW_REGISTRY": prefix}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stageflow", "images-build"], cwd=copy, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"images-build failed in {copy}:\n{proc.stdout}{proc.stderr}")
    built = [line.split()[0] for line in proc.stdout.splitlines() if "  built (" in line]
    return seconds, built, proc.stdout


def layers(prefix: str) -> dict[str, int]:
    """Every layer of the images tagged under `prefix`: the build step that made it, and its size in bytes."""
    api = images.client().api  # not images.list(), which fails when another user removes an image meanwhile
    tags = [tag for image in api.images() for tag in image.get("RepoTags") or [] if tag.startswith(prefix + "/")]
    return {step["Id"]: step["Size"] for tag in tags for step in api.history(tag)}


def edit(path: Path) -> None:
    with open(path, "a") as handle:
        handle.write(f"\n# bench edit {time.time_ns()}\n")


def remove_images(prefix: str) -> None:
    """Every image tagged under `prefix` (stage images before the runtime images they start from), then the
    build stages labelled for them."""
    api = images.client().api
    tags = [tag for image in api.images() for tag in image.get("RepoTags") or [] if tag.startswith(prefix + "/")]
    for tag in sorted(tags, key=lambda tag: "/runtime:" in tag):
        api.remove_image(tag)
    for image in api.images(filters={"dangling": True, "label": BUILD_STAGE_OF}):
        if image["Labels"][BUILD_STAGE_OF].startswith(prefix + "/"):
            api.remove_image(image["Id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", type=Path, default=[],
                        help="a git checkout to measure (repeatable; default: this one)")
    parser.add_argument("--stage", default="train", help="the stage whose main.py is edited (default train)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per checkout, alternating (default 1)")
    args = parser.parse_args(argv)
    checkouts = [path.resolve() for path in args.checkout] or [ROOT]
    prefixes = [f"{PREFIX}-{n}" for n in range(len(checkouts))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-images-") as work:
        copies = [Path(work) / str(n) for n in range(len(checkouts))]
        try:
            for checkout, copy, prefix in zip(checkouts, copies, prefixes):
                remove_images(prefix)  # left by a bench that was killed
                copy_checkout(checkout, copy)
                seconds, built, _ = build(copy, prefix)
                print(f"set-up {checkout}: built {len(built)} images in {seconds:.1f} s", flush=True)
            for round_ in range(args.repeat):
                for checkout, copy, prefix in zip(checkouts, copies, prefixes):
                    for what, path in (("runtime code", RUNTIME_FILE), ("one main.py", f"stages/{args.stage}/main.py")):
                        before = layers(prefix)
                        edit(copy / path)
                        seconds, built, _ = build(copy, prefix)
                        added = sum(size for step, size in layers(prefix).items() if step not in before) / 1e6
                        rows.append((checkout, what, seconds, added, built))
                        print(f"round {round_ + 1} {checkout}: {what} ({path}) edited: {seconds:.1f} s, "
                              f"{added:.2f} MB added, rebuilt {', '.join(built) or 'nothing'}", flush=True)
        finally:
            for prefix in prefixes:
                remove_images(prefix)
    print(f"\n{'checkout':40} {'edit':14} {'seconds':>8} {'MB added':>9}  rebuilt")
    for checkout, what, seconds, added, built in rows:
        print(f"{str(checkout):40} {what:14} {seconds:8.1f} {added:9.2f}  {', '.join(built)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
