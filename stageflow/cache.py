"""A content-addressed cache of stage outputs, keyed like Flyte's: what ran, and on exactly what.

The key is the stage's name and image version (its code, the shared package and its pinned dependencies)
plus the sha256 of every input, including the content of source files a stage names by path. Those are
hashed before the stage reads them, so after it the runner checks that they did not change meanwhile;
outputs made from a source that changed under the stage are not stored. A hit is checked against the
hashes recorded when it was stored, so a corrupted or half-deleted entry is never used: it is dropped and
the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from stageflow.runtime.contract import sha256_file
from stageflow.registry import ROOT

CACHE_ENV = "STAGEFLOW_CACHE"
MANIFEST = "manifest.json"


def default_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, ROOT / ".cache" / "stages"))


def sha256(path: Path, check: Callable[[], None] = lambda: None) -> str:
    """A file's sha256; `check` is called between megabytes and may raise to stop (a timeout, Ctrl-C)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            check()
    return digest.hexdigest()


def file_state(path: Path) -> tuple[int, ...]:
    """What changes whenever a file's content can have: which file it is, its size, its times."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Sources:
    """The files a stage names by path: hashed for its key before it runs, checked after it.

    A write within the file system's timestamp granularity of our first look leaves the times as they were
    (git's "racily clean" files), so a file modified less than RACY_NS before that look is hashed again.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, paths: list[Path], check: Callable[[], None] = lambda: None):
        self.states = {path: (file_state(path), time.time_ns()) for path in paths}
        self.hashes = {str(path): sha256(path, check) for path in paths}

    def unchanged(self, check: Callable[[], None] = lambda: None) -> bool:
        """True if every file still holds what was hashed, so the key describes what the stage read."""
        for path, (state, seen_at) in self.states.items():
            try:
                if file_state(path) != state:
                    return False
                if seen_at - max(state[3], state[4]) < self.RACY_NS and sha256(path, check) != self.hashes[str(path)]:
                    return False
            except OSError:
                return False
        return True


def key(stage: str, version: str, inputs: dict[str, str], host_files: dict[str, str]) -> str:
    material = json.dumps({"stage": stage, "version": version, "inputs": inputs, "files": host_files},
                          sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


class Cache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_dir()

    def restore(self, entry_key: str, names: list[str], outputs: Path) -> dict | None:
        """Put a verified entry's files into `outputs` and return its manifest; None on a miss."""
        entry = self.root / entry_key
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            recorded = manifest["outputs"]
        except (OSError, ValueError, KeyError):
            return None
        if sorted(recorded) != sorted(names) or any(
                not (entry / name).is_file() or sha256_file(entry / name) != recorded[name] for name in names):
            shutil.rmtree(entry, ignore_errors=True)  # corrupted: never used, rebuilt by this run
            return None
        for name in names:
            link_or_copy(entry / name, outputs / name)
        return manifest

    def store(self, entry_key: str, outputs: Path, hashes: dict[str, str], **facts) -> None:
        """Add an entry atomically: built in a temporary directory, then renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            for name in hashes:
                link_or_copy(outputs / name, tmp / name)
            (tmp / MANIFEST).write_text(json.dumps({"outputs": hashes, **facts}, indent=2))
            shutil.rmtree(self.root / entry_key, ignore_errors=True)
            os.replace(tmp, self.root / entry_key)
        except OSError:
            # A concurrent run stored the same entry first (same key, same content): theirs is as good.
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.root / entry_key / MANIFEST).is_file():
                raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (no copy of big data, and hard links survive bind mounts); copy across devices."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
