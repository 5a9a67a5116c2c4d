"""The runner's one way to touch a file a stage could have written: opened without following links, checked
to be a regular file of bounded size on the open descriptor, then read, hashed, copied or chmod-ed through it.

A stage runs user code; the runner runs as root on the host. Whatever lies in a stage's outputs directory (and
so in a cache entry made from it, and under the names a run record gives) may be a symlink to a host file, a
FIFO that blocks a reader for ever, a device, a directory or a sparse file of exabytes. Following a link there
would let a stage make the runner chmod, copy or print a host file; so nothing is opened by path twice: the
directory is opened with O_NOFOLLOW, the name in it with O_PATH | O_NOFOLLOW (which neither follows a link nor
blocks on a FIFO nor runs a device's open), the descriptor is checked, and only then reopened for reading
through /proc/self/fd, so nothing can be swapped in between the check and the use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from stageflow.runtime.contract import StageError, file_kind, sha256_of

MAX_FILE_BYTES = 64 << 30  # a file output, a cache entry's file (docs/failures.md: what a stage may write)
MAX_META_BYTES = 16 << 20  # a manifest, a run record, a metrics file read for the summary
FICLONE = 0x40049409  # ioctl: make a file share another's blocks copy-on-write (btrfs, XFS, bcachefs)


class UnsafeFile(StageError):
    """A file the runner will not use: not a regular file, or larger than it may be. One line naming it."""


@contextlib.contextmanager
def opened(path: Path, what: str = "", limit: int = MAX_FILE_BYTES) -> Iterator[BinaryIO]:
    """`path` open for reading, once it is known to be a regular file of at most `limit` bytes; UnsafeFile
    otherwise (FileNotFoundError when there is nothing there, so a caller can tell "missing" apart)."""
    path, what = Path(path), f"{what}: " if what else ""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | flags)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFile(f"{what}{path.parent} is not a plain directory (a link?); refused") from None
        raise
    try:
        handle = os.open(path.name, os.O_PATH | flags, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        mode, size = (found := os.fstat(handle)).st_mode, found.st_size
        if stat.S_ISLNK(mode):
            raise UnsafeFile(f"{what}{path} is a symlink (to {_target(path)}), not a regular file; refused")
        if not stat.S_ISREG(mode):
            raise UnsafeFile(f"{what}{path} is {file_kind(mode)}, not a regular file; refused")
        if size > limit:
            raise UnsafeFile(f"{what}{path} holds {size:,} bytes, more than the {limit:,} allowed; refused")
        reader = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(handle)
    with os.fdopen(reader, "rb") as stream:
        yield stream


def _target(path: Path) -> str:
    try:
        return repr(os.readlink(path))[1:-1][:200]
    except OSError:
        return "?"


def read_bytes(path: Path, what: str = "", limit: int = MAX_META_BYTES, cut: bool = False) -> bytes:
    """The file's bytes; with `cut`, at most `limit` of them from a file of any size (copilot's way with
    _ERROR), else a larger file is refused."""
    with opened(path, what, MAX_FILE_BYTES if cut else limit) as stream:
        return stream.read(limit)


def read_text(path: Path, what: str = "", limit: int = MAX_META_BYTES, cut: bool = False) -> str:
    return read_bytes(path, what, limit, cut).decode("utf-8", "replace")


def read_tail(path: Path, what: str = "", limit: int = 64 << 10) -> str:
    """The last `limit` bytes of a log of any size, as text."""
    with opened(path, what, MAX_FILE_BYTES) as stream:
        size = os.fstat(stream.fileno()).st_size
        stream.seek(max(0, size - limit))
        return stream.read(limit).decode("utf-8", "replace")


def sha256(path: Path, what: str = "", check: Callable[[], None] = lambda: None) -> str:
    with opened(path, what) as stream:
        return sha256_of(stream, check)


def freeze(path: Path, what: str = "") -> None:
    """Make a checked file read-only: through its descriptor, so a link there changes nothing else."""
    with opened(path, what) as stream:
        os.fchmod(stream.fileno(), 0o444)


def copy(src: Path, dst: Path, what: str = "") -> None:
    """Copy the checked file `src` to the new file `dst`: a reflink where the file system has them (no data
    copied, and a write to either leaves the other as it was), else the bytes, in the kernel."""
    with opened(src, what) as source, open(dst, "xb") as target:
        try:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
            return
        except OSError:
            pass
        try:
            # Buffered: a raw write on a disk that fills up returns short without an error, and
            # copyfileobj would take the cut copy for a whole one; a buffered one raises.
            shutil.copyfileobj(source, target, 1 << 20)
            target.flush()
        except OSError as err:  # a full disk: say which file it was writing
            err.filename = err.filename or str(dst)
            raise


def temporary(path: Path) -> Path:
    """A name beside `path` for writing it before it is renamed into place (hidden, as the stages' are)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def place(src: Path, dst: Path, what: str = "", mode: int = 0o444) -> None:
    """Put a read-only copy of `src` at `dst` atomically: a full disk or a kill leaves no partial file under
    the real name."""
    tmp = temporary(dst)
    try:
        copy(src, tmp, what)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def empty(directory: Path, keep: str | None = None) -> None:
    """Remove everything in `directory` but a regular file named `keep`, following no link: what a failed
    stage left there must not look like a result."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name == keep and entry.is_file(follow_symlinks=False):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


MAX_TREE_ENTRIES = 100_000  # files and folders in a directory output


def walk(root: Path, what: str = "") -> list[tuple[str, bool]]:
    """A directory output's entries (relative path, is a folder), parents first, sorted; following no link.
    Anything but folders and regular files, or more than MAX_TREE_ENTRIES of them, is refused in one line."""
    label = f"{what}: " if what else ""
    mode = os.lstat(root).st_mode
    if not stat.S_ISDIR(mode):
        raise UnsafeFile(f"{label}{root} is {file_kind(mode) if not stat.S_ISLNK(mode) else 'a symlink'}, "
                         f"not a directory; refused")
    found: list[tuple[str, bool]] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        with os.scandir(root / folder) as entries:
            for entry in entries:
                relative = f"{folder}/{entry.name}" if folder else entry.name
                kind = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(kind):
                    pending.append(relative)
                elif not stat.S_ISREG(kind):
                    shown = "a symlink" if stat.S_ISLNK(kind) else file_kind(kind)
                    raise UnsafeFile(f"{label}{root / relative} is {shown}, not a regular file; refused")
                found.append((relative, stat.S_ISDIR(kind)))
                if len(found) > MAX_TREE_ENTRIES:
                    raise UnsafeFile(f"{label}{root} holds more than {MAX_TREE_ENTRIES:,} entries; refused")
    return sorted(found)


def tree_sha256(root: Path, what: str = "", check: Callable[[], None] = lambda: None) -> str:
    """A directory's sha256: of each entry's relative path, kind and content, in order."""
    import hashlib

    digest = hashlib.sha256()
    for relative, is_dir in walk(root, what):
        digest.update(f"{relative}\0{'d' if is_dir else 'f'}\0".encode())
        if not is_dir:
            with opened(root / relative, what) as stream:
                digest.update(sha256_of(stream, check).encode())
    return digest.hexdigest()


def freeze_tree(root: Path, what: str = "") -> None:
    for relative, is_dir in walk(root, what):
        if not is_dir:
            freeze(root / relative, what)


def place_tree(src: Path, dst: Path, what: str = "") -> None:
    """A read-only copy of the directory `src` at `dst`, made under a temporary name and renamed whole."""
    entries = walk(src, what)
    tmp = temporary(dst)
    try:
        tmp.mkdir()
        for relative, is_dir in entries:
            if is_dir:
                (tmp / relative).mkdir()
            else:
                copy(src / relative, tmp / relative, what)
                os.chmod(tmp / relative, 0o444)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
