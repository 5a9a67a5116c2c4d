"""A content-addressed cache of stage outputs, keyed like Flyte's: what ran, and on exactly what.

The key is the stage's name and image version (its code, the shared package and its pinned dependencies)
plus the sha256 of every input, including the content of source files a stage names by path. Those are
hashed before the stage reads them, so after it the runner checks that they did not change meanwhile;
outputs made from a source that changed under the stage are not stored. A hit is checked against the
hashes recorded when it was stored, so a corrupted or half-deleted entry is never used: it is dropped and
the stage runs again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from stageflow.registry import ROOT
from stageflow.runtime.contract import sha256_file

CACHE_ENV = "STAGEFLOW_CACHE"
MANIFEST = "manifest.json"


def default_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, ROOT / ".cache" / "stages"))


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
        self.hashes = {str(path): sha256_file(path, check) for path in paths}

    def unchanged(self, check: Callable[[], None] = lambda: None) -> bool:
        """True if every file still holds what was hashed, so the key describes what the stage read."""
        for path, (state, seen_at) in self.states.items():
            try:
                if file_state(path) != state:
                    return False
                if seen_at - max(state[3], state[4]) < self.RACY_NS and sha256_file(path, check) != self.hashes[str(path)]:
                    return False
            except OSError:
                return False
        return True


def key(stage: str, version: str, inputs: dict[str, str], host_files: dict[str, str]) -> str:
    material = json.dumps({"stage": stage, "version": version, "inputs": inputs, "files": host_files},
                          sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


class Cache:
    """Entries hold copies, never links: a run's outputs and the cache's files are separate files, so
    nothing done to one (an append, a truncation, a stage writing into its input) reaches the other."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_dir()

    def restore(self, entry_key: str, names: list[str], outputs: Path,
                check: Callable[[], None] = lambda: None) -> dict | None:
        """Copy an entry's files into `outputs` and return its manifest; None on a miss or a damaged entry.

        As atomic as a stage's own writes: every file is copied under a temporary name and checked against
        the entry's hash, and only when all are whole do they take their names. An error (a full disk)
        leaves no output behind and is raised."""
        entry = self.root / entry_key
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            recorded = manifest["outputs"]
        except (OSError, ValueError, KeyError):
            return None
        if sorted(recorded) != sorted(names) or not all((entry / name).is_file() for name in names):
            return self._drop(entry)
        copies = {name: temporary(outputs / name) for name in names}
        try:
            for name, tmp in copies.items():
                copy_file(entry / name, tmp)
                if sha256_file(tmp, check) != recorded[name]:
                    return self._drop(entry)
            for name, tmp in copies.items():
                os.chmod(tmp, 0o444)
                os.replace(tmp, outputs / name)
        finally:
            for tmp in copies.values():
                tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # when it was last used: what `stageflow gc` keeps entries by
            os.utime(entry / MANIFEST)
        return manifest

    @staticmethod
    def _drop(entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)  # damaged: never used, rebuilt by this run

    def store(self, entry_key: str, outputs: Path, hashes: dict[str, str], **facts) -> None:
        """Add an entry atomically: built in a temporary directory, then renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            for name in hashes:
                copy_file(outputs / name, tmp / name)
                os.chmod(tmp / name, 0o444)
            (tmp / MANIFEST).write_text(json.dumps({"outputs": hashes, **facts}, indent=2))
            shutil.rmtree(self.root / entry_key, ignore_errors=True)
            os.replace(tmp, self.root / entry_key)
        except OSError:
            # A concurrent run stored the same entry first (same key, same content): theirs is as good.
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.root / entry_key / MANIFEST).is_file():
                raise


FICLONE = 0x40049409  # ioctl: make a file share another's blocks copy-on-write (btrfs, XFS, bcachefs)


def copy_file(src: Path, dst: Path) -> None:
    """Copy `src` to the new file `dst`. A reflink where the file system has them: no data is copied, and a
    write to either file leaves the other as it was. Elsewhere (ext4, tmpfs, across devices) the bytes
    are copied, in the kernel."""
    with open(src, "rb") as source, open(dst, "xb") as target:
        try:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def temporary(path: Path) -> Path:
    """A name beside `path` for writing it before it is renamed into place (hidden, as the stages' are)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def place(src: Path, dst: Path, mode: int = 0o444) -> None:
    """Put a read-only copy of `src` at `dst` atomically: a full disk or a kill leaves no partial file
    under the real name."""
    tmp = temporary(dst)
    try:
        copy_file(src, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
