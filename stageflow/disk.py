"""Disk housekeeping: `stageflow gc` (and `make clean`) keeps the stage cache and the images bounded.

Without it, disk use only grows. Each change to code that an image holds builds new images. A change to the
runtime builds new images for every stage, plus the build stages that the classic builder keeps as cache,
about 1.3 GB in all. The stage cache also keeps an entry for every stage run on new inputs.

The policy keeps what a re-run needs:
- A cache entry stays if it was used (stored or reused) in the last `keep_days` days, or by the newest run
  recorded in runs/ or .workflow/. Any other entry is removed.
- An image under this checkout's registry prefix stays only if it is the current code's version: runs, and
  therefore re-runs, use no other. Every other version is removed, and so are the build stages (the
  classic builder's cache, labelled with the image they were built for) of the versions removed.
Nothing else is touched: images under other prefixes stay, an image also tagged under another name loses
only this project's tag, and an image that a container uses stays.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import time
from itertools import chain
from pathlib import Path

from stageflow.cache import MANIFEST, MARK, default_dir, is_cache_name
from stageflow.registry import ROOT, STAGES, registry_prefix, runtime_image

DEFAULT_KEEP_DAYS = 7.0
RUN_RECORDS = ("runs/*/run.json", "runs/*/*/run.json", ".workflow/run.json")  # stageflow run, pyflyte, compose
BUILD_STAGE_OF = "io.stageflow.build-stage-of"  # on a Dockerfile's build stage: the image it was built for


# ---------------------------------------------------------------- the stage cache

def newest_run_start(root: Path = ROOT) -> float | None:
    """When the newest recorded run started (epoch seconds), or None when there is none."""
    starts = []
    for record in chain.from_iterable(root.glob(pattern) for pattern in RUN_RECORDS):
        try:
            starts.append(dt.datetime.fromisoformat(json.loads(record.read_text())["started_at"]).timestamp())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(starts, default=None)


def last_used(entry: Path) -> float:
    """An entry's manifest is touched each time the entry is reused, and written when it is stored."""
    try:
        return (entry / MANIFEST).stat().st_mtime
    except OSError:
        return entry.stat().st_mtime  # a store cut short (.tmp-*), or damaged: as old as its directory


def own_bytes(entry: Path) -> int:
    """What removing `entry` gives back: its files that no other path links (a run may share the rest)."""
    found = (path.lstat() for path in entry.rglob("*"))
    return sum(st.st_blocks * 512 for st in found if st.st_nlink == 1 and not stat.S_ISDIR(st.st_mode))


def trim_cache(cache_root: Path, keep_after: float, dry_run: bool = False) -> tuple[list[str], int, int]:
    """Remove the entries last used before `keep_after` (epoch seconds); returns their names, how many
    entries stay, and the bytes freed."""
    removed, kept, freed = [], 0, 0
    for entry in sorted(cache_root.iterdir()) if (cache_root / MARK).is_file() else []:
        if not (entry.is_dir() and not entry.is_symlink() and is_cache_name(entry.name)):
            continue
        if not entry.name.startswith(".gc-") and last_used(entry) >= keep_after:  # .gc-*: a gc cut short
            kept += 1
            continue
        removed.append(entry.name)
        freed += own_bytes(entry)
        if not dry_run:
            doomed = entry if entry.name.startswith(".gc-") else entry.with_name(f".gc-{entry.name}")
            os.replace(entry, doomed)  # out of the runner's sight at once, then deleted
            shutil.rmtree(doomed)
    return removed, kept, freed


# ---------------------------------------------------------------- images

def old_images(api, prefix: str) -> tuple[list[str], list[str]]:
    """What the current code does not use under `prefix`: tags (children first), then build-stage image ids."""
    current = {runtime_image(prefix)} | {stage.image(prefix) for stage in STAGES.values()}
    repos = {image.rsplit(":", 1)[0] for image in current}

    def old(tag: str) -> bool:
        return tag.rsplit(":", 1)[0] in repos and tag not in current

    tags = [tag for image in api.images() for tag in image.get("RepoTags") or [] if old(tag)]
    tags.sort(key=lambda tag: tag.startswith(runtime_image(prefix).rsplit(":", 1)[0] + ":"))  # parent last
    builds = [image["Id"] for image in api.images(filters={"dangling": True, "label": BUILD_STAGE_OF})
              if old(image["Labels"][BUILD_STAGE_OF])]
    return tags, builds


def trim_images(client, prefix: str, dry_run: bool = False) -> tuple[list[str], list[str], int]:
    """Remove old images under `prefix`: returns what went, what stayed (and why), and the bytes freed."""
    import docker

    tags, builds = old_images(client.api, prefix)
    targets = [(tag, tag) for tag in tags] + [(f"build stage {image_id[7:19]}", image_id) for image_id in builds]
    if dry_run:
        return [name for name, _ in targets], [], 0
    before = client.df()["LayersSize"]
    removed, kept = [], []
    for name, ref in targets:
        try:
            client.api.remove_image(ref)  # no force: a tag only, or an image nothing else names or runs
            removed.append(name)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as err:
            kept.append(f"{name} ({err.explanation or err})")
    return removed, kept, max(0, before - client.df()["LayersSize"])


# ---------------------------------------------------------------- both

def gc(keep_days: float = DEFAULT_KEEP_DAYS, dry_run: bool = False, cache_root: Path | None = None) -> list[str]:
    """Apply the policy; returns the report, one line per kind of thing."""
    from stageflow.images import ImageError, client

    cache_root = cache_root or default_dir()
    keep_after = time.time() - keep_days * 86400
    newest = newest_run_start()
    if newest is not None:
        keep_after = min(keep_after, newest)
    verb = "would remove" if dry_run else "removed"
    entries, kept, freed = trim_cache(cache_root, keep_after, dry_run)
    lines = [f"stage cache {cache_root}: {verb} {len(entries)} entries ({freed / 1e6:.1f} MB); kept {kept} used "
             f"in the last {keep_days:g} days or by the newest run"]
    if cache_root.is_dir() and not (cache_root / MARK).is_file():
        lines = [f"stage cache {cache_root}: left alone, not made by stageflow (no {MARK} in it)"]
    prefix = registry_prefix()
    try:
        docker_client = client()
    except ImageError as err:
        return lines + [f"images: skipped ({err})"]
    removed, in_use, freed = trim_images(docker_client, prefix, dry_run)
    lines.append(f"images under {prefix}/: {verb} {len(removed)} not of the current code"
                 + ("" if dry_run else f" ({freed / 1e6:.1f} MB freed)") + "".join(f"\n  {name}" for name in removed))
    return lines + [f"  kept {name}" for name in in_use]
