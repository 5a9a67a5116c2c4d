"""`make venv` on a bare machine: the real Makefile target and scripts/install.py, run by a real `make` in a copy
of the project, creating a real venv, installing real wheels from an index and a links folder that only pip's
configuration names (a pip.conf), with no uv on PATH and no network: the wheels are made here, uv's and
setuptools' from the copies this test runs with, so they are the real programs."""

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import install  # noqa: E402

pytestmark = pytest.mark.slow
PROBE = "stageflow-install-probe"  # a package only the test's index holds: found only through pip.conf
UV_VERSION = metadata.version("uv")


def write_wheel(folder: Path, name: str, version: str, tag: str, files: dict[str, bytes]) -> Path:
    """A wheel holding `files` (archive name -> content) and the RECORD of them."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    record = [f"{arc},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for arc, data in files.items()]
    path = folder / f"{stem}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for arc, data in files.items():
            info = zipfile.ZipInfo(arc)
            info.external_attr = 0o100755 << 16  # a regular file, executable: pip keeps the bit
            wheel.writestr(info, data)
        wheel.writestr(f"{stem}.dist-info/RECORD", "\n".join(record + [f"{stem}.dist-info/RECORD,,"]) + "\n")
    return path


def wheel_of(name: str, folder: Path) -> Path:
    """A wheel of a distribution installed here: its files, scripts (the uv binary) in the wheel's data/scripts."""
    dist = metadata.distribution(name)
    stem = f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}"
    tag = next(line.split(": ", 1)[1] for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag: "))
    files = {}
    for file in dist.files:
        info = file.parts[0].endswith(".dist-info")
        if "__pycache__" in file.parts or (info and file.name in {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}):
            continue
        arc = f"{stem}.data/scripts/{file.name}" if file.parts[0] == ".." else file.as_posix()
        files[arc] = Path(dist.locate_file(file)).read_bytes()
    return write_wheel(folder, dist.metadata["Name"], dist.version, tag, files)


def pinned(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name.replace('_', '-')}=={version} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The index (the probe), the links folder (setuptools, for the editable build, uv, and click, which
    `stageflow --help` needs) and the lock."""
    top = tmp_path_factory.mktemp("wheels")
    files, links = top / "files", top / "links"
    files.mkdir(), links.mkdir()
    probe = write_wheel(files, PROBE, "1.0", "py3-none-any", {
        "stageflow_install_probe.py": b"",
        "stageflow_install_probe-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 1.0\n".encode(),
        "stageflow_install_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"})
    page = top / "simple" / PROBE / "index.html"
    page.parent.mkdir(parents=True)
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    page.write_text(f'<html><body><a href="../../files/{probe.name}#sha256={digest}">{probe.name}</a></body></html>\n')
    built = [probe, wheel_of("setuptools", links), wheel_of("uv", links), wheel_of("click", links)]  # the CLI's one need
    return {"index": f"file://{top}/simple", "links": links, "lock": "".join(pinned(w) + "\n" for w in built)}


def project(tmp_path: Path, wheels: dict) -> tuple[Path, dict]:
    """A copy of what `make venv` reads, with the test's lock, and an environment whose only package sources
    are in a pip.conf: no PIP_* or UV_* variables, no user or XDG configuration, no uv on PATH."""
    dest = tmp_path / "checkout"
    dest.mkdir()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]["dependencies"]
    for name in ("Makefile", "pyproject.toml", "scripts/install.py", *dependencies["file"]):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "stageflow", dest / "stageflow", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "requirements-dev.txt").write_text(wheels["lock"])
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {wheels['index']}\nfind-links = {wheels['links']}\n")
    path = "/usr/bin:/bin"
    assert shutil.which("uv", path=path) is None, "uv is on the test's PATH: the test would not show it is not needed"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "MAKE", "MFLAGS", "XDG_"))}
    env.update(PATH=path, HOME=str(tmp_path / "home"), XDG_CONFIG_DIRS=str(tmp_path / "xdg"), PIP_CONFIG_FILE=str(conf))
    return dest, env


def make_venv(dest: Path, env: dict) -> list[str]:
    proc = subprocess.run(["make", "venv", f"PYTHON={sys.executable}"], cwd=dest, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (proc.stdout + proc.stderr).splitlines()


def installed(dest: Path) -> dict[str, str]:
    script = "import importlib.metadata as m; print('\\n'.join(f'{d.name}=={d.version}' for d in m.distributions()))"
    out = subprocess.run([dest / ".venv/bin/python", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(line.lower().split("==") for line in out.split())


def test_first_install_says_what_it_installs_uses_pips_index_and_is_skipped_next_time(tmp_path, wheels):
    dest, env = project(tmp_path, wheels)
    lines = make_venv(dest, env)
    steps = [line for line in lines if line.startswith("venv: ")]
    assert steps[0].startswith(f"venv: creating .venv with {sys.executable}"), lines
    assert steps[1].startswith(f"venv: installing uv {UV_VERSION} with pip"), lines
    assert steps[2] == (f"venv: installing the 4 pins of requirements-dev.txt with uv {UV_VERSION}, from "
                        f"{wheels['index']}, {wheels['links']} (pip's configuration)"), lines
    assert steps[3] == "venv: installing stageflow (editable, from .) with uv", lines
    assert steps[4].startswith("venv: done in "), lines
    assert not any(re.match(r" [-+~] \S", line) for line in lines), "the per-package list is not left out"
    # the probe is only on the index pip.conf names, setuptools only in its links: uv found both through it
    versions = installed(dest)
    assert versions[PROBE] == "1.0" and versions["uv"] == UV_VERSION
    assert versions["setuptools"] == metadata.version("setuptools")
    assert (dest / ".venv" / "bin" / "stageflow").is_file()
    assert subprocess.run([dest / ".venv/bin/stageflow", "--help"], capture_output=True).returncode == 0

    assert not [line for line in make_venv(dest, env) if line.startswith("venv: ")], "the stamp did not skip"
    os.utime(dest / "requirements-dev.txt")  # the lock changed: installed again, uv already there
    steps = [line for line in make_venv(dest, env) if line.startswith("venv: ")]
    assert steps[0].startswith(f"venv: installing the 4 pins of requirements-dev.txt with uv {UV_VERSION}"), steps


def test_where_uv_cannot_be_installed_pip_installs_the_rest(tmp_path, wheels):
    """No uv wheel for this machine (here: none on the index or in the links): pip does it all, and says so."""
    dest, env = project(tmp_path, wheels)
    links = tmp_path / "links"
    shutil.copytree(wheels["links"], links, ignore=shutil.ignore_patterns("uv-*"))
    (tmp_path / "pip.conf").write_text(f"[global]\nindex-url = {wheels['index']}\nfind-links = {links}\n")
    lines = make_venv(dest, env)
    steps = [line for line in lines if line.startswith("venv: ")]
    assert steps[1].startswith(f"venv: installing uv {UV_VERSION} with pip"), lines
    assert steps[2] == f"venv: pip could not install uv {UV_VERSION} (above): installing with pip instead", lines
    assert steps[3].startswith(f"venv: leaving uv {UV_VERSION} out"), lines
    assert steps[4].startswith("venv: installing the 3 pins of requirements-dev.txt with pip"), lines
    assert any(line.startswith("Successfully installed") and f"{PROBE}-1.0" in line for line in lines), lines
    versions = installed(dest)
    assert versions[PROBE] == "1.0" and "uv" not in versions
    assert (dest / ".venv" / "bin" / "stageflow").is_file()


def test_a_password_in_an_index_url_is_not_printed():
    assert install.shown("https://ada:s3cret@pypi.example.invalid:8443/simple") == (
        "https://ada:****@pypi.example.invalid:8443/simple")
    assert install.shown("https://t0ken@pypi.example.invalid/simple") == "https://****@pypi.example.invalid/simple"
    assert install.shown("file:///opt/pypi/simple") == "file:///opt/pypi/simple"
