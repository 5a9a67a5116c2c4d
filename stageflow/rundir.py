"""A run directory: what it may be, its lock, and what a run clears in it.

A run rewrites its directory (logs/, outputs/, a folder per stage, run.json, report.html), so the runner
only writes a directory it made itself, which it marks with MARKER, or a new or empty one, which it marks
then. Any other directory is refused in one line before anything in it is touched: a path typed by mistake
(a data folder, a home) must never lose a file. MARKER is also the lock: held by the runner and inherited
by its stage processes, so a second run cannot start while any stage of the first still lives.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from stageflow.runtime.contract import StageError

MARKER = ".stageflow-run"
FOLDERS = ("logs", "outputs")  # besides one folder per stage
FILES = ("run.json", "report.html")
ROOM = 128  # bytes of path a run adds below its directory (stage/outputs/.name.XXXXXXXX.tmp)


class RunError(StageError):
    """A problem with the run itself (its inputs or run directory), reported in one line before any stage starts."""


def shown(path: Path, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def os_error(err: OSError) -> str:
    """An OSError in one line, saying where: a full disk names the directory whose device is full."""
    path = err.filename2 or err.filename  # shutil's copy names the target second
    if err.errno == errno.ENOSPC:
        return f"no space left on the device holding {Path(path).parent}" if path else "no space left on the device"
    return f"{err.strerror or err}" + (f": {shown(path)}" if path else "")


def write_atomic(path: Path, text: str) -> None:
    """Write beside `path`, then rename: a reader sees the old file or the whole new one; on an error (a
    full disk) nothing is left behind and the old file is as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:  # a full disk: say which file it was writing
        err.filename = err.filename or str(path)
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


class RunDir:
    def __init__(self, path: Path, stages: Iterable[str]):
        self.path = Path(path)
        self.folders = [*FOLDERS, *stages]
        self.lock_fd: int | None = None

    def check(self) -> None:
        """Refuse a directory this run must not write, touching nothing: not a directory, or holding files
        no run made, or a name the run uses taken by something else (a file, a link to elsewhere)."""
        self._check_length()
        try:
            if not self.path.exists():
                return
            if not self.path.is_dir():
                raise RunError(f"run directory {shown(self.path)}: not a directory")
            entries = os.listdir(self.path)
        except OSError as err:
            raise RunError(f"run directory {shown(self.path)}: {err.strerror}") from None
        if entries and MARKER not in entries:
            raise RunError(
                f"run directory {shown(self.path)}: not made by stageflow (it holds {', '.join(sorted(entries)[:3])}"
                f"{', ...' if len(entries) > 3 else ''}); give a new or empty directory, or one a run made")
        for name in self.folders:
            self._check_kind(name, "folder", Path.is_dir)
        for name in FILES:
            self._check_kind(name, "file", Path.is_file)

    def _check_kind(self, name: str, kind: str, is_kind) -> None:
        path = self.path / name
        if path.is_symlink():
            found = "symlink"
        elif not path.exists() or is_kind(path):
            return
        else:
            found = "directory" if path.is_dir() else "file" if path.is_file() else "special file"
        raise RunError(f"run directory {shown(self.path)}: {name} is a {found}, where a run keeps its {name} "
                       f"{kind}; move it away or use another --run-dir")

    def _check_length(self) -> None:
        """A path the system refuses part-way would leave its parents behind: refuse it before making any."""
        longest = max(len(os.fsencode(part)) for part in self.path.parts)
        if longest > os.pathconf("/", "PC_NAME_MAX") or \
                len(os.fsencode(self.path)) + ROOM > os.pathconf("/", "PC_PATH_MAX"):
            raise RunError(f"run directory {shown(self.path)}: {os.strerror(errno.ENAMETOOLONG)}")

    def __enter__(self) -> "RunDir":
        """Check, create or adopt, and lock the directory; a run already holding it stops this one at once."""
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / MARKER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunError(f"run directory {shown(self.path)}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"run directory {self.path} is in use by another run ({owner})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self.lock_fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.lock_fd)
        self.lock_fd = None

    def clear(self) -> None:
        """Remove what an earlier run left (the checks above make sure these are the runner's own), except
        run.json, which the running run has already replaced."""
        for name in self.folders:
            shutil.rmtree(self.path / name, ignore_errors=True)
        (self.path / "report.html").unlink(missing_ok=True)
        (self.path / "logs").mkdir()


LATEST, SUCCEEDED = "latest", "last-succeeded"  # the runner's links in runs/: the newest run, the newest success


def runs_dir() -> Path:
    from stageflow.registry import ROOT

    return ROOT / "runs"


def in_runs(run_dir: Path, runs: Path | None = None) -> bool:
    """Whether `run_dir` is one of runs/, which the links follow (a run elsewhere, a pyflyte task, the compose
    directory: not)."""
    return Path(os.path.realpath(run_dir)).parent == Path(os.path.realpath(runs or runs_dir()))


def _in_the_way(link: Path) -> str | None:
    """What stands at `link` that is not the runner's link (a user's folder, file or link elsewhere); None when
    nothing does. The runner's link holds a run's name: a folder beside it."""
    if link.is_symlink():
        target = os.readlink(link)
        return None if "/" not in target else f"a link to {target}"
    if link.exists():
        return "a directory" if link.is_dir() else "a file"
    return None


def check_run_dir_name(run_dir: Path) -> None:
    """A run directory of runs/ may not take a name the runner keeps a link under (the link itself is fine: it
    names the run it points at)."""
    if run_dir.name in (LATEST, SUCCEEDED) and not run_dir.is_symlink() and in_runs(run_dir):
        raise RunError(f"run directory {shown(run_dir)}: {run_dir.name} is the name of the runner's link to a run; "
                       f"give another name")


def check_links(runs: Path) -> None:
    """Refuse, before a run starts, when a name the runner keeps a link under is taken by something else: it
    is never replaced."""
    for name, what in ((LATEST, "the newest run"), (SUCCEEDED, "the newest run that succeeded")):
        found = _in_the_way(runs / name)
        if found:
            raise RunError(f"{shown(runs / name)}: {found} where the runner keeps a link to {what}; move it away or "
                           f"give --run-dir outside {shown(runs)}")


def point(name: str, run_dir: Path) -> None:
    """Make runs/<name> point at `run_dir`, one of runs/: a new link renamed over the runner's old one, so a
    reader sees the old link or the new. Anything else standing there stays, and RunError says what."""
    run_dir = Path(os.path.realpath(run_dir))  # `--run-dir runs/latest`: the run it points at
    link = run_dir.parent / name
    found = _in_the_way(link)
    if found:
        raise RunError(f"{shown(link)}: not updated: {found} stands there, not the runner's link; move it away")
    tmp = run_dir.parent / f".{name}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, link)
    except OSError as err:
        raise RunError(f"{shown(link)}: not updated: {os_error(err)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def pointed(name: str, runs: Path | None = None) -> Path | None:
    """The run directory runs/<name> points at, when it is the runner's link and that run is still there."""
    link = (runs or runs_dir()) / name
    if not link.is_symlink() or _in_the_way(link) or not link.is_dir():
        return None
    return link.parent / os.readlink(link)


def new_run_dir(prefix: str = "", runs: Path | None = None) -> Path:
    """runs/<prefix><UTC time>, plus runs/latest pointing at it; never reuses a directory by accident.

    What is in the way is said in one line before anything is made: `runs` that is not a directory, or a
    `runs/latest` or `runs/last-succeeded` that is not the runner's link (a user's folder or file there is
    never replaced)."""
    import datetime as dt

    runs = runs or runs_dir()
    if (runs.exists() or runs.is_symlink()) and not runs.is_dir():
        raise RunError(f"{shown(runs)}: not a directory, where runs keep their run directories; move it away "
                       f"or give --run-dir")
    if runs.is_dir():
        check_links(runs)
    try:
        runs.mkdir(exist_ok=True)
        stamp = prefix + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            path = runs / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
    except OSError as err:
        raise RunError(f"run directory under {shown(runs)}: {os_error(err)}") from None
    point(LATEST, path)
    return path
