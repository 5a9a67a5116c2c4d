"""The Domino / Flyte raw-container I/O contract, as a stage sees it.

Domino Flows moves data with Flyte's copilot: before the job starts every input is a file under
`<root>/inputs/<name>`; after it ends every declared output is read from `<root>/outputs/<name>`. Primitive
values travel as text in the exact formats copilot writes and parses, so this module is the one place that
knows them. The same code runs on Domino (root `/workflow`), in a local container (a fake tree mounted at
`/workflow`) and as a local process (`WORKFLOW_ROOT` pointing at a fake tree anywhere).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import importlib
import json
import logging
import math
import os
import re
import socket
import stat
import sys
import tempfile
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger("stageflow")

ERROR_FILE = "_ERROR"
MAX_SIMPLE_OUTPUT = 1024  # copilot's limit for a primitive output, in bytes
MAX_ERROR_BYTES = 1024 * 1024  # copilot reads at most this much of _ERROR
MAX_ERROR_LINE = 4096  # bytes of an error line kept: a person reads it (in _ERROR and the log), not a parser

File = Path  # the declared type of a file input or output


class Directory:
    """The declared type of a directory input or output (a FlyteDirectory): read as its path."""


SIMPLE_TYPES = (str, int, float, bool, dt.datetime, dt.timedelta)
TYPE_NAMES = {File: "file", Directory: "directory", str: "str", int: "int", float: "float", bool: "bool",
              dt.datetime: "datetime", dt.timedelta: "timedelta"}


class StageError(Exception):
    """A failure the user can act on; its message is the one line they see (and copilot shows).

    The base of every error of this project's own: the CLI catches it once and prints its one line, exiting
    with `exit_status` (2: refused before anything ran; an action that failed says 1)."""

    exit_status = 2


def workflow_root() -> Path:
    return Path(os.environ.get("WORKFLOW_ROOT", "/workflow"))


# ---------------------------------------------------------------- formats copilot writes and reads

# ASCII digits only: Python's \d and int() also take other scripts' digits (`٣` is 3), which copilot's Go does not.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(Inf|inf|NaN|nan)")
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
                   "ns": 1e-9}


def parse_duration(text: str) -> dt.timedelta:
    """Go's time.ParseDuration grammar, which is what copilot writes for a timedelta (`72h10m0s`)."""
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
    if body == "0":
        return dt.timedelta(0)
    pos, seconds = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            raise ValueError(text)
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(text)
    return dt.timedelta(seconds=sign * seconds)


def format_duration(value: dt.timedelta) -> str:
    """Inverse of parse_duration, in Go's own style: hours, minutes, then seconds (`72h10m0s`)."""
    micros = value // dt.timedelta(microseconds=1)
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds = f"{rest // 1_000_000}.{rest % 1_000_000:06d}".rstrip("0").rstrip(".")
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{seconds}s"
    return sign + text


def parse_value(text: str, kind: type) -> Any:
    """Parse one primitive value as copilot wrote it; raise ValueError with what was expected."""
    if kind is str:
        return text
    stripped = text.strip()
    if kind is bool:
        if stripped not in ("true", "false"):
            raise ValueError("expected true or false")
        return stripped == "true"
    if kind is int:
        if not _INT.fullmatch(stripped):
            raise ValueError("expected a base-10 integer")
        return int(stripped)
    if kind is float:
        if not _FLOAT.fullmatch(stripped):
            raise ValueError("expected a decimal number")
        return float(stripped)
    if kind is dt.datetime:
        try:
            value = dt.datetime.fromisoformat(stripped)
        except ValueError:
            raise ValueError("expected an RFC 3339 timestamp such as 2024-05-10T00:00:00Z") from None
        if value.tzinfo is None:
            raise ValueError("expected an RFC 3339 timestamp with a time zone (…Z)")
        return value
    if kind is dt.timedelta:
        try:
            return parse_duration(stripped)
        except ValueError:
            raise ValueError("expected a Go duration such as 72h10m0s") from None
    raise TypeError(f"unsupported input type {kind!r}")


# Go's strconv.ParseBool, which copilot reads a bool output with.
_GO_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
             **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}


def parse_output(text: str, kind: type) -> Any:
    """A primitive output as copilot reads it: surrounding whitespace stripped, a bool as Go reads one."""
    stripped = text.strip()
    if kind is bool:
        if stripped not in _GO_BOOLS:
            raise ValueError("expected true or false (or 1, 0, t, f)")
        return _GO_BOOLS[stripped]
    return parse_value(stripped, kind)


def format_value(value: Any) -> str:
    """Render a primitive the way copilot writes an input and parses an output."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        text = format(Decimal(repr(value)), "f")  # shortest digits, never an exponent
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("a datetime output needs a time zone")
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return format_duration(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"unsupported output type {type(value).__name__}")


def sha256_file(path: Path, check: Callable[[], None] = lambda: None) -> str:
    with open(path, "rb") as handle:
        return sha256_of(handle, check)


def sha256_of(handle, check: Callable[[], None] = lambda: None) -> str:
    """An open file's sha256, a megabyte at a time; `check` is called between megabytes and may raise to stop
    (the runner's timeout or Ctrl-C while it hashes a large source)."""
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
        check()
    return digest.hexdigest()


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a `st_mode` describes, in the words an error shows (`a FIFO (named pipe)`)."""
    return next((name for test, name in _KINDS if test(mode)), "a file of an unknown kind")


def not_a_regular_file(path: Path) -> str | None:
    """What an existing `path` is, when it is anything but a regular file once links are followed (`a FIFO
    (named pipe)`, `a link to /dev/null, a character device`); None for a regular file. Data is read from
    regular files only: a FIFO or a device blocks or never ends, and a directory is not data."""
    try:
        mode = path.stat().st_mode
    except OSError as err:  # a dangling link or a loop of links
        return f"a link that cannot be followed ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    return f"a link to {path.resolve()}, {file_kind(mode)}" if path.is_symlink() else file_kind(mode)


# ---------------------------------------------------------------- the tree a stage works in

class StageTree:
    """One stage's view of its /workflow tree: typed inputs in, atomic outputs out.

    It remembers which outputs it wrote so that a failed stage can take them all back: copilot would
    otherwise upload a half-finished set and downstream tasks could consume it.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else workflow_root()
        self.inputs = self.root / "inputs"
        self.outputs = self.root / "outputs"
        self.written: list[Path] = []

    def read(self, name: str, kind: type) -> Any:
        """Read input `name` as `kind` (File, str, int, float, bool, datetime or timedelta)."""
        path = self.inputs / name
        expected = TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))
        if not path.exists() and not path.is_symlink():
            raise StageError(f"input {name}: missing; expected a {expected} at {path}")
        real = path.resolve()
        if path.is_symlink() and not real.is_relative_to(self.root.resolve()):
            raise StageError(f"input {name}: is a symlink to {real}, outside the workflow tree {self.root}")
        if kind is Directory:
            if not path.is_dir():
                raise StageError(f"input {name}: expected a directory at {path}")
            return path
        what = not_a_regular_file(path)
        if what:
            raise StageError(f"input {name}: expected a regular file, found {what} at {path}")
        if kind is File:
            return path
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StageError(f"input {name}: expected a {expected} as UTF-8 text, found binary data") from None
        try:
            return parse_value(text, kind)
        except ValueError as err:
            raise StageError(f"input {name}: {err}, found {_shown(text)}") from None

    def _target(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or name == ERROR_FILE:
            raise ValueError(f"invalid output name {name!r}")
        target = self.outputs / name
        if target.is_dir():
            raise StageError(f"output {name}: {target} already exists as a directory")
        self.outputs.mkdir(parents=True, exist_ok=True)
        return target

    @contextlib.contextmanager
    def output_file(self, name: str) -> Iterator[Path]:
        """Yield a temporary path in the outputs directory; it becomes output `name` only on success.

        Rename within one directory is atomic, so a reader (or copilot) sees the old state or the whole
        new file, never a prefix of it, even if the stage is killed mid-write.
        """
        target = self._target(name)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.outputs)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            try:
                yield tmp_path
            except OSError as err:
                if err.errno == errno.ENOSPC or "No space left" in str(err):
                    raise StageError(f"output {name}: no space left on the device holding {self.outputs}") from None
                raise
            if not tmp_path.is_file():
                raise StageError(f"output {name}: the stage did not write its file")
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, target)
            self.written.append(target)
        finally:
            tmp_path.unlink(missing_ok=True)

    def write(self, name: str, value: Any) -> None:
        """Write a primitive output in the text form copilot parses."""
        text = format_value(value)
        data = text.encode("utf-8")
        if len(data) > MAX_SIMPLE_OUTPUT:
            raise StageError(f"output {name}: {len(data)} bytes, more than copilot's {MAX_SIMPLE_OUTPUT}")
        with self.output_file(name) as tmp:
            tmp.write_bytes(data)

    def missing(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if not (self.outputs / name).is_file()]

    def fail(self, message: str) -> None:
        """Take back this run's outputs and leave `message` in _ERROR, where copilot shows it to the user."""
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()
        self.outputs.mkdir(parents=True, exist_ok=True)
        data = message.encode("utf-8")[:MAX_ERROR_BYTES]
        fd, tmp = tempfile.mkstemp(prefix=f".{ERROR_FILE}.", dir=self.outputs)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data + b"\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.outputs / ERROR_FILE)


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escape sequences, carriage returns, bells) shown as
    `?`: a label or a log line from the data must not move the cursor, recolour or retitle a terminal."""
    return "".join(c if c.isprintable() or c in "\t\n" else "?" for c in text)


def one_line(err: BaseException) -> str:
    """The error as one printable line: a parser quoting binary junk must not garble the log or _ERROR.

    A line longer than MAX_ERROR_LINE (a message listing a million columns, a parser quoting a huge row)
    keeps its start, which names the input and the problem, and says it was cut."""
    text = printable(" ".join(str(err).split())) or type(err).__name__
    line = text if isinstance(err, StageError) else f"{type(err).__name__}: {text}"
    data = line.encode("utf-8")
    if len(data) <= MAX_ERROR_LINE:
        return line
    kept = data[:MAX_ERROR_LINE - 100].decode("utf-8", errors="ignore")
    return f"{kept} … (cut here: the whole line was {len(data)} bytes)"


def unwritable(outputs: Path) -> str | None:
    """Why this process cannot write its outputs directory, in one line; None when it can. A stage that
    cannot write there cannot write _ERROR either, so this is its one chance to say so."""
    try:
        outputs.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=outputs)
        os.close(fd)
        os.unlink(probe)
        return None
    except OSError as err:
        uid, reason = os.getuid(), err.strerror
        with contextlib.suppress(OSError):
            if err.errno in (errno.EACCES, errno.EPERM):
                owner = outputs.stat()
                reason = f"owned by uid {owner.st_uid}, mode {owner.st_mode & 0o7777:o}"
        return f"outputs directory {outputs}: not writable by uid {uid} ({reason}); make it writable for uid {uid}"


# Set by the host backend on a stage it starts early: "FD:PID", the socket on which the stage says READY and is
# handed its tree, and the runner that started it.
WAIT_ENV = "STAGEFLOW_WAIT_FOR_INPUTS"
READY = b"ready"


def wait_for_inputs(preload: Iterable[str] = ()) -> None:
    """Where the host backend started this process early: say READY once the imports are done, then wait to be
    handed the tree (with the run directory's lock, which a stage process holds: backends.HostBackend) once the
    inputs are in place. A stage's start is mostly imports (train's scikit-learn and skops, 1.3 s of a small
    run's 2.3 s); done while the stages upstream run, they leave the critical path. Everything before this point
    (the script's imports, its process settings) depends on no input, and nothing after it runs before the
    inputs are there, so the stage does what it does started late. The modules `preload` names are ones the body
    imports only where it needs them, imported here while waiting. Without the variable (on Domino, in a
    container, started by hand) this does nothing, and so in a process the runner did not start itself.

    No tree (the runner ended, or took the stage's outputs from its cache) ends the process quietly; the runner
    also kills it, and the kernel does if the runner dies (backends.die_with)."""
    given = os.environ.pop(WAIT_ENV, None)
    fd, _, runner = (given or "").partition(":")
    if not (fd.isdigit() and runner.isdigit()) or os.getppid() != int(runner):
        return
    for module in preload:
        with contextlib.suppress(ImportError):  # the body's own import says what is missing, as it would anyway
            importlib.import_module(module)
    handover = socket.socket(fileno=int(fd))
    try:
        handover.sendall(READY)
        tree, _, _, _ = socket.recv_fds(handover, 65536, 1)  # the lock's descriptor stays open: held from now on
        os.environ["WORKFLOW_ROOT"] = json.loads(tree)
    except (OSError, ValueError, TypeError):  # no tree: not needed after all
        os._exit(0)
    finally:
        handover.close()


def run(body: Callable[[StageTree], None], outputs: Iterable[str], root: Path | None = None,
        preload: Iterable[str] = ()) -> int:
    """Run a stage body under the contract and return the process exit status.

    Every way out is covered: the body's own errors, an unexpected exception and a declared output that
    the body forgot all end the same way, with one line in _ERROR, no outputs and a non-zero status.
    """
    wait_for_inputs(preload)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr, force=True)
    tree = StageTree(root)
    problem = unwritable(tree.outputs)
    if problem:
        log.error("%s", problem)
        return 1
    (tree.outputs / ERROR_FILE).unlink(missing_ok=True)
    for stale in tree.outputs.glob(".*.tmp"):  # left by a run that was killed mid-write
        stale.unlink(missing_ok=True)
    declared = list(outputs)
    try:
        body(tree)
        missing = tree.missing(declared)
        if missing:
            raise StageError(f"output {', '.join(missing)}: declared but not written by the stage")
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - every failure must reach _ERROR
        message = one_line(err)
        if not isinstance(err, StageError):
            log.error("unexpected failure\n%s", traceback.format_exc().rstrip())
        tree.fail(message)
        log.error("%s", message)
        return 130 if isinstance(err, KeyboardInterrupt) else 1
    log.info("done: %s", ", ".join(declared))
    return 0


def main(body: Callable[[StageTree], None], outputs: Iterable[str], preload: Iterable[str] = ()) -> None:
    """The entrypoint every stage calls from `if __name__ == "__main__"`; `preload`: see wait_for_inputs."""
    sys.exit(run(body, outputs, preload=preload))
