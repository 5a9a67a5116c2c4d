"""Install a lock, then this project (editable), into the venv whose Python runs this: `make venv`'s installer.

uv installs the host lock (135 pins) in seconds where pip takes minutes, so uv does the work when it can run.
uv itself is a pin of the same lock: pip installs that one wheel first, hash-checked, then uv the rest.
uv reads none of pip's configuration (pip.conf, PIP_INDEX_URL, ...), and a user's index, mirror or proxy is
configured for pip: so the indexes, links, certificates and constraints are asked of the venv's own pip and
handed to uv, and both installers fetch from the same places. pip has no public API for its resolved settings;
its option parser (`pip._internal`) is the one place that merges config files and environment as pip does,
and if it ever moves, that is one more reason to fall back. Where uv cannot run (no uv wheel for this platform,
pip's settings unreadable, uv failing on the lock), pip installs everything, as before, and says so.

Every step prints one line first: what it installs, with what, from where. Each installer's own progress
follows; the per-package lists (`+ name==version`, pip's `Downloading ...`) are left out, the lock has them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

NOISE = re.compile(r" [-+~] \S|  (Downloading|Using cached) \S")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
UV = Path(sysconfig.get_path("scripts")) / "uv"


class Unusable(Exception):
    """uv cannot do this install; the message says why, and pip takes over."""


def say(message: str) -> None:
    print(f"venv: {message}", flush=True)


def pins(lock: Path) -> dict[str, str]:
    """{name: its whole requirement line, hashes included} from a pip-style lock (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    found = {}
    for line in text.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if match := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line):
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = line
    return found


def run(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run an installer with its output streamed, less the per-package lines."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            if not NOISE.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
    return proc.returncode


def shown(url: str) -> str:
    """An index URL as it may be printed: a password, or a token standing alone as the user, becomes ****."""
    parts = urlsplit(url)
    if parts.username is None:
        return url
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    user = f"{parts.username}:****" if parts.password is not None else "****"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def pip_settings() -> tuple[list[str], dict[str, str], list[str]]:
    """What `pip install` would use here, as uv's options and environment, plus the places for the log line."""
    try:
        from pip._internal.commands import create_command

        options, _ = create_command("install").parse_args([])
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure means the same: pip is the one to ask
        raise Unusable(f"pip's settings could not be read ({err})") from None
    args = ["--index-strategy", "unsafe-best-match"]  # as pip: the best version from any index, not the first's
    places = []
    if options.no_index:
        args.append("--no-index")
    else:
        args += ["--default-index", options.index_url]
        places.append(options.index_url)
        for url in options.extra_index_urls:
            args += ["--index", url]
            places.append(url)
    for link in options.find_links:
        args += ["--find-links", link]
        places.append(link)
    for host in options.trusted_hosts:
        args += ["--allow-insecure-host", host]
    for constraint in options.constraints:
        args += ["--constraints", constraint]
    env = dict(os.environ)
    env.setdefault("UV_HTTP_TIMEOUT", str(max(int(options.timeout), 30)))  # uv's default is 30 s, pip's 15
    if options.cert:
        env["SSL_CERT_FILE"] = options.cert
    if options.client_cert:
        env["SSL_CLIENT_CERT"] = options.client_cert
    if options.proxy:  # pip takes [user:password@]host:port, no scheme needed
        proxy = options.proxy if "://" in options.proxy else f"http://{options.proxy}"
        env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy)
    return args, env, [shown(place) for place in places] or ["nowhere (no index, no links)"]


def uv_version(lock_pins: dict[str, str]) -> str | None:
    line = lock_pins.get("uv")
    return line.split("==", 1)[1].split()[0] if line else None


def has_uv(version: str) -> bool:
    """The lock's uv is in this venv already (a reinstall after the lock changed, or one bootstrapped before)."""
    try:
        return metadata.version("uv") == version and UV.is_file()
    except metadata.PackageNotFoundError:
        return False


def uv_binary(lock_pins: dict[str, str]) -> tuple[Path, str]:
    """The lock's uv in this venv, installed by pip (wheel only, hash-checked) unless it is there already."""
    version = uv_version(lock_pins)
    if version is None:
        raise Unusable("the lock pins no uv")
    if not has_uv(version):
        say(f"installing uv {version} with pip (the lock's wheel, hash-checked), to install the rest")
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
            req.write(lock_pins["uv"] + "\n")
            req.flush()
            if run([*PIP, "install", "--quiet", "--no-deps", "--only-binary", ":all:", "-r", req.name]):
                raise Unusable(f"pip could not install uv {version} (above)")
    try:
        subprocess.run([UV, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise Unusable(f"uv {version} does not run here ({err})") from None
    return UV, version


def with_uv(lock: Path, project: Path, lock_pins: dict[str, str]) -> None:
    uv, version = uv_binary(lock_pins)
    args, env, places = pip_settings()
    say(f"installing the {len(lock_pins)} pins of {lock} with uv {version}, from {', '.join(places)} "
        f"(pip's configuration)")
    target = [str(uv), "pip", "install", "--python", sys.executable]
    # Bytecode now, as pip compiles at install: where PYTHONDONTWRITEBYTECODE is set, Python never caches it,
    # and every process (the runner and each stage) compiled the libraries it imports from source: 0.1-0.3 s a
    # process here (docs/performance.md). About 10 s more on the first install.
    if run([*target, *args, "--compile-bytecode", "-r", str(lock)], env):
        raise Unusable("uv could not install the lock (above)")
    say(f"installing {project_name(project)} (editable, from {project}) with uv")
    if run([*target, "--no-deps", "--no-build-isolation", "--offline", "--editable", str(project)], env):
        raise Unusable("uv could not install the project (above)")


def with_pip(lock: Path, project: Path, lock_pins: dict[str, str]) -> int:
    """Where no uv could be installed (no wheel of it for this platform), the rest of the lock still can be."""
    version = uv_version(lock_pins)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as rest:
        path = lock
        if version and not has_uv(version):
            del lock_pins["uv"]
            rest.write("".join(line + "\n" for line in lock_pins.values()))
            rest.flush()
            path = Path(rest.name)
            say(f"leaving uv {version} out: it cannot be installed here (`make lock` needs it)")
        say(f"installing the {len(lock_pins)} pins of {lock} with pip (minutes on an empty cache; one line "
            f"per package)")
        if run([*PIP, "install", "--progress-bar", "off", "-r", str(path)]):
            return 1
    say(f"installing {project_name(project)} (editable, from {project}) with pip")
    return run([*PIP, "install", "--quiet", "--no-deps", "--no-build-isolation", "--editable", str(project)])


def project_name(project: Path) -> str:
    match = re.search(r'^name\s*=\s*"([^"]+)"', (project / "pyproject.toml").read_text(), re.M)
    return match[1] if match else str(project)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/install.py LOCK PROJECT_DIR   (run by the venv's own Python)", file=sys.stderr)
        return 2
    lock, project = Path(argv[0]), Path(argv[1])
    started = time.monotonic()
    try:
        lock_pins = pins(lock)
    except OSError as err:
        print(f"venv: lock {lock}: {err.strerror}", file=sys.stderr)
        return 1
    try:
        try:
            with_uv(lock, project, lock_pins)
        except Unusable as why:
            say(f"{why}: installing with pip instead")
            if with_pip(lock, project, lock_pins):
                say("pip could not install it either (above)")
                return 1
    except KeyboardInterrupt:
        say("interrupted; `make venv` starts over")
        return 130
    say(f"done in {time.monotonic() - started:.0f} s; `. {UV.parent}/activate` puts stageflow on PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
