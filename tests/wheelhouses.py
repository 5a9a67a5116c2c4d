"""The wheelhouses and venvs of the tests that run other Pythons: Domino workspaces on Python 3.10 to 3.13
(tests/test_workspace_pythons.py) and python-domino, Domino's own client (tests/test_python_domino.py).

`make test-wheels` (run by `make test` and `make test-fast`, like `make wheels` for the images) downloads each
lock's wheels once, for every Python that installs it; the tests then make their venvs offline from there
(`uv pip install --offline --no-index`), so no test downloads anything. A venv is kept under .cache/test-venvs,
keyed by its Python and the wheels it was made from: a second run reuses it, a new lock or wheelhouse makes
another.

pip evaluates a lock's environment markers for the Python it runs under, not for `--python-version`, so the
pins for each target Python are chosen here (with packaging, as pip would) and downloaded with --no-deps.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "tests" / "locks"
VENVS = ROOT / ".cache" / "test-venvs"
UV = Path(sys.executable).with_name("uv")


@dataclass(frozen=True)
class Wheelhouse:
    name: str
    pythons: tuple[str, ...]  # the minor versions that install it
    source: Path | None = None  # its lock, when not tests/locks/<name>.txt

    @property
    def lock(self) -> Path:
        return self.source or LOCKS / f"{self.name}.txt"

    @property
    def folder(self) -> Path:
        return ROOT / "wheels" / self.name


WORKSPACE = Wheelhouse("workspace", ("3.10", "3.11", "3.12", "3.13"))
PYTHON_DOMINO = Wheelhouse("python-domino", (f"{sys.version_info.major}.{sys.version_info.minor}",))
# The host lock, for `pip install .` into a fresh venv (tests/test_packaging.py): stageflow's dependencies are
# resolved from here alone, at the versions the project is tested with.
HOST = Wheelhouse("host", (f"{sys.version_info.major}.{sys.version_info.minor}",), ROOT / "requirements-dev.txt")
ALL = (WORKSPACE, PYTHON_DOMINO, HOST)


def environment(full_version: str) -> dict[str, str]:
    """Marker variables of CPython `full_version` on this machine's platform."""
    env = default_environment()
    env.update(python_version=".".join(full_version.split(".")[:2]), python_full_version=full_version,
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


def pins(lock: Path, *full_versions: str) -> list[Requirement]:
    """The lock's pins whose markers hold for any of `full_versions`, markers dropped."""
    found = []
    for line in re.sub(r"\\\n", " ", lock.read_text()).splitlines():  # a hashed lock's continued lines joined
        line = re.sub(r"--hash=\S+", "", line.split("#")[0]).strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate(environment(v)) for v in full_versions):
            req.marker = None
            found.append(req)
    return found


def tags(minor: str) -> set:
    version = tuple(map(int, minor.split(".")))
    machine = platform.machine()
    platforms = [f"manylinux_2_{n}_{machine}" for n in range(36, 4, -1)] + [f"manylinux2014_{machine}",
                                                                           f"manylinux1_{machine}", "linux_" + machine]
    return set(cpython_tags(version, platforms=platforms)) | set(compatible_tags(version, platforms=platforms))


def missing(house: Wheelhouse, minor: str) -> list[Requirement]:
    """Pins for Python `minor` that have no installable wheel in the wheelhouse."""
    have: dict[str, list] = {}
    for wheel in house.folder.glob("*.whl") if house.folder.is_dir() else []:
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        have.setdefault(f"{name}=={version}", []).append(wheel_tags)
    wanted = tags(minor)
    return [req for req in pins(house.lock, f"{minor}.0", f"{minor}.99")
            if not any(t & wanted for t in have.get(f"{canonicalize_name(req.name)}=={next(iter(req.specifier)).version}", []))]


def download(house: Wheelhouse) -> None:
    """Fetch what the wheelhouse lacks, per Python (binary wheels only: nothing is built at install)."""
    house.folder.mkdir(parents=True, exist_ok=True)
    machine = platform.machine()
    for minor in house.pythons:
        wanted = missing(house, minor)
        if not wanted:
            continue
        rounds: list[dict[str, Requirement]] = []  # one pip call per round: pip refuses a name given twice
        for req in wanted:  # (a lock may pin two versions of a name for two patch releases of one Python)
            free = next((r for r in rounds if req.name not in r), None)
            if free is None:
                rounds.append(free := {})
            free[req.name] = req
        for batch in rounds:
            # --ignore-requires-python: flytekit 1.16.31 declares <3.13; its wheel is pure Python and installs
            # on 3.13 all the same (docs/domino.md says what that means).
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--only-binary=:all:", "--ignore-requires-python", f"--python-version={minor}",
                            "--implementation=cp", f"--abi=cp{minor.replace('.', '')}", "--abi=abi3", "--abi=none",
                            *(f"--platform=manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28")),
                            "--dest", str(house.folder), *map(str, batch.values())], check=True)


def interpreter(minor: str) -> Path | None:
    """CPython `minor` on this machine: pythonX.Y on PATH, else the newest pyenv build of it; the first that
    runs and is that version (a pyenv shim for a version not selected is on PATH but fails)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(root.glob(f"{minor}.*/bin/python{minor}"),
                    key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)], reverse=True)
    for candidate in [shutil.which(f"python{minor}"), *builds]:
        if candidate and full_version(Path(candidate)).startswith(minor + "."):
            return Path(candidate)
    return None


def full_version(python: Path) -> str:
    """The interpreter's version, X.Y.Z; empty when it does not run."""
    proc = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def venv(house: Wheelhouse, python: Path) -> Path:
    """A venv of `python` holding the lock's pins for it, made offline from the wheelhouse (and reused)."""
    version = full_version(python)
    wanted = sorted(map(str, pins(house.lock, version)))
    key = hashlib.sha256("\n".join([str(python), version, *wanted,
                                    *sorted(p.name for p in house.folder.glob("*.whl"))]).encode()).hexdigest()[:12]
    dest = VENVS / f"{house.name}-{version}-{key}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The interpreter's own venv, so pip is there (from its ensurepip, offline) as in a Domino workspace.
    subprocess.run([str(python), "-m", "venv", str(dest)], check=True)
    subprocess.run([str(UV), "pip", "install", "--quiet", "--offline", "--no-index", "--find-links", str(house.folder),
                    "--python", str(dest / "bin" / "python"), *wanted], check=True,
                   env={**os.environ, "UV_CACHE_DIR": str(VENVS / ".uv-cache")})
    (dest / ".complete").write_text(key + "\n")
    for old in VENVS.glob(f"{house.name}-{version}-*"):  # made from an older lock or wheelhouse
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def main() -> int:
    for house in ALL:
        download(house)
        still = {minor: missing(house, minor) for minor in house.pythons}
        if any(still.values()):
            print(f"wheelhouse {house.folder} still lacks {still}", file=sys.stderr)
            return 1
        print(f"wheelhouse {house.folder.relative_to(ROOT)}: every pin of {house.lock.relative_to(ROOT)} for Python "
              f"{', '.join(house.pythons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
