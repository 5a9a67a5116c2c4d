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
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from stageflow import files
from stageflow.files import UnsafeFile, copy, temporary
from stageflow.registry import ROOT
from stageflow.rundir import RunError, shown
from stageflow.runtime.contract import sha256_file

CACHE_ENV = "STAGEFLOW_CACHE"
MANIFEST = "manifest.json"
MARK = ".stageflow-cache"  # what makes a directory a stage cache: gc touches nothing else
SHA256 = re.compile(r"[0-9a-f]{64}")  # an entry's name, and each file's hash in its manifest


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
    nothing done to one (an append, a truncation, a stage writing into its input) reaches the other.

    An entry never changes once it has its name: a store finding one there keeps it (same key, same
    content), and a damaged one is renamed away whole before it is deleted, so a reader sees a whole entry
    or none."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_dir()
        self.checked = False

    def check(self) -> None:
        """Adopt a new or empty directory as the cache (marking it), or one marked already; refuse anything
        else in one line: `stageflow gc` deletes what a cache holds, so it must never be a user's folder."""
        if self.checked:
            return
        try:
            entries = os.listdir(self.root) if self.root.is_dir() else None
            if entries is None and (self.root.exists() or self.root.is_symlink()):
                raise RunError(f"stage cache {shown(self.root)} ({CACHE_ENV}): not a directory")
            if entries is not None and MARK not in entries and not all(is_cache_name(e) for e in entries):
                raise RunError(f"stage cache {shown(self.root)} ({CACHE_ENV}): not made by stageflow (it holds "
                               f"{', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''}); point "
                               f"{CACHE_ENV} at a new or empty directory")
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / MARK).touch()
        except OSError as err:
            raise RunError(f"stage cache {shown(self.root)} ({CACHE_ENV}): {err.strerror}") from None
        self.checked = True

    def restore(self, entry_key: str, names: list[str], outputs: Path,
                check: Callable[[], None] = lambda: None) -> dict | None:
        """Copy an entry's files into `outputs` and return its manifest; None on a miss or a damaged entry.

        As atomic as a stage's own writes: every file is copied under a temporary name and checked against
        the entry's hash, and only when all are whole do they take their names. An entry of the wrong shape
        is dropped (a miss); one holding anything but regular files is dropped and refused (UnsafeFile); an
        error writing the outputs (a full disk) leaves none behind and is raised."""
        entry = self.root / entry_key
        try:
            manifest = manifest_of(files.read_bytes(entry / MANIFEST, f"cache entry {entry_key[:12]}"), names)
        except FileNotFoundError:
            return None
        except UnsafeFile:
            self.drop(entry)
            raise
        if manifest is None:
            return self.drop(entry)
        copies = {name: temporary(outputs / name) for name in names}
        try:
            for name, tmp in copies.items():
                copy(entry / name, tmp, f"cache entry {entry_key[:12]}")
                if sha256_file(tmp, check) != manifest["outputs"][name]:
                    return self.drop(entry)
            for name, tmp in copies.items():
                os.chmod(tmp, 0o444)
                os.replace(tmp, outputs / name)
        except FileNotFoundError:
            return None  # dropped or removed by gc meanwhile: a miss
        except UnsafeFile:
            self.drop(entry)
            raise
        finally:
            for tmp in copies.values():
                tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # when it was last used: what `stageflow gc` keeps entries by
            os.utime(entry / MANIFEST, follow_symlinks=False)
        return manifest

    def drop(self, entry: Path) -> None:
        """Damaged: out of every reader's sight at once, then deleted; the stage runs again."""
        doomed = entry.with_name(f".gc-{entry.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(entry, doomed)
        except OSError:
            return  # gone already
        shutil.rmtree(doomed, ignore_errors=True)

    def store(self, entry_key: str, outputs: Path, hashes: dict[str, str], **facts) -> None:
        """Add an entry atomically: built in a temporary directory, then renamed into place, unless an entry
        of that name is there already (a concurrent run stored the same content first)."""
        self.check()
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            for name in hashes:
                copy(outputs / name, tmp / name, f"output {name}")
                os.chmod(tmp / name, 0o444)
            (tmp / MANIFEST).write_text(json.dumps({"outputs": hashes, **facts}, indent=2))
            os.rename(tmp, self.root / entry_key)
        except OSError as err:
            if not (err.errno in (errno.EEXIST, errno.ENOTEMPTY) and (self.root / entry_key).is_dir()):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def is_cache_name(name: str) -> bool:
    """The names a cache directory holds: entries, their temporary and doomed forms, the mark."""
    return bool(SHA256.fullmatch(name)) or name.startswith((".tmp-", ".gc-")) or name == MARK


def manifest_of(data: bytes, names: list[str]) -> dict | None:
    """An entry's manifest when it has the shape store() writes, for exactly these outputs; None otherwise."""
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        return None
    recorded = manifest["outputs"]
    if sorted(recorded) != sorted(names) or not all(isinstance(v, str) and SHA256.fullmatch(v)
                                                    for v in recorded.values()):
        return None
    for fact in ("rows_in", "rows_out"):
        value = manifest.get(fact)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return None
    return manifest
