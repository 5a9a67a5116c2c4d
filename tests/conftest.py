import importlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.csv as pcsv
import pytest

from stageflow import registry as stage_registry
from stageflow.runtime import contract, dataset, schema as schemas

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "stageflow" / "domino" / "standin"  # the recording stand-in of Domino's plugin
IRIS_SCHEMA = ROOT / "schema.toml"  # the bundled data's schema, which tests marked `iris` run under
WINE_SCHEMA = ROOT / "examples" / "wine" / "schema.toml"
IRIS_FEATURES = ("SepalLengthCm", "SepalWidthCm", "PetalLengthCm", "PetalWidthCm")


def downstream(dag, names) -> set[str]:
    """The stages that depend, directly or not, on any of `names`, from the DAG the runner runs."""
    return {node.name for name in names for node in dag.downstream(name)}


def holds(pid, path) -> bool:
    """Whether process `pid` has `path` open (as a stage holds its run directory's lock)."""
    fds = f"/proc/{pid}/fd"
    return any(os.readlink(f"{fds}/{fd}") == str(path) for fd in os.listdir(fds))


def lock_holders(run_dir) -> list[int]:
    """Live processes holding the run directory's lock open: every stage process of the run, early or not."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if holds(pid, run_dir / ".stageflow-run"):
                found.append(int(pid))
        except OSError:  # gone meanwhile
            continue
    return found


def load_stage(name: str):
    """Import stages/<name>/main.py as a module; nothing runs at import time, so tests get the logic."""
    return stage_registry.stage(name).module()


def run_main(module, root: Path) -> tuple[int, str | None]:
    """Run a stage's own entrypoint (`main()`, as its image does) in this process on the fake tree at `root`,
    so a test's monkeypatched sizes apply; return its exit status and its _ERROR text (None if it wrote none)."""
    saved = os.environ.get("WORKFLOW_ROOT")
    os.environ["WORKFLOW_ROOT"] = str(root)
    try:
        with pytest.raises(SystemExit) as exit:
            module.main()
    finally:
        if saved is None:
            del os.environ["WORKFLOW_ROOT"]
        else:
            os.environ["WORKFLOW_ROOT"] = saved
    error = root / "outputs" / contract.ERROR_FILE
    return exit.value.code, error.read_text() if error.exists() else None


def load_source(root: Path, path: Path) -> tuple[int, str | None, dataset.Snapshot | None]:
    """Run load_a's entrypoint on the source at `path`: its exit status, its _ERROR and the snapshot (None on
    failure)."""
    (root / "inputs" / "data_path").write_text(str(path))
    status, error = run_main(load_stage("load_a"), root)
    out = root / "outputs" / "datasetA"
    return status, error, dataset.Snapshot(out, "datasetA") if out.exists() else None


def write_snapshot(path: Path, table: pa.Table, meta: dict | None = None) -> Path:
    """A snapshot as the stages write one: checked by the schema, through their own Writer."""
    with dataset.Writer(path) as writer:
        writer.write(dataset.conform(table, "test snapshot"))
        writer.meta = meta or {}
    return path


@pytest.fixture
def wf_root(tmp_path, monkeypatch):
    """An empty fake /workflow tree, selected through WORKFLOW_ROOT as a stage would see it."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()
    monkeypatch.setenv("WORKFLOW_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def standin(monkeypatch):
    """The recording plugin, importable as flytekitplugins.domino.helpers for this test only."""
    for name in [m for m in sys.modules if m.split(".")[0] == "flytekitplugins"]:
        monkeypatch.delitem(sys.modules, name)  # a real plugin, if loaded, comes back after the test
    monkeypatch.syspath_prepend(str(STANDIN))
    helpers = importlib.import_module("flytekitplugins.domino.helpers")
    helpers.CALLS.clear()
    importlib.import_module("flytekitplugins.domino.artifact").FILES.clear()
    yield helpers
    for name in [m for m in sys.modules if m.split(".")[0] == "flytekitplugins"]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def big_source(tmp_path_factory):
    """A CSV of the active schema large enough (2,000,000 rows) that writing its snapshot takes a visible while.

    The streaming load snapshots 500,000 rows in about half a second, less than a busy machine may take to
    deliver the Ctrl-C test's signal: that test then saw the loads succeed before the interrupt.
    """
    table = source_table(np.arange(1, 2_000_001), seed=1)
    path = tmp_path_factory.mktemp("big") / "big.csv"
    pcsv.write_csv(table, path)
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 only, torn down whatever happens. One for the session: the push
    tests share it, so only the first uploads the images' layers (about 40 s here), the next finds them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp_path = tmp_path_factory.mktemp("registry")
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: warn\nstorage:\n"
                      f"  filesystem:\n    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "registry did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never reuse (or fill) the developer's stage cache."""
    os.environ["STAGEFLOW_CACHE"] = str(tmp_path_factory.mktemp("stage-cache"))


@pytest.fixture(autouse=True)
def iris_schema(request, monkeypatch):
    """A test marked `iris` is about the iris data (its column names, labels, messages): it runs under the iris
    schema whatever schema is active. Every other test builds its data from the active schema."""
    if request.node.get_closest_marker("iris"):
        monkeypatch.setenv(schemas.ENV, str(IRIS_SCHEMA))


def iris_like(n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = {"setosa": [5.0, 3.4, 1.5, 0.2], "versicolor": [5.9, 2.8, 4.3, 1.3], "virginica": [6.6, 3.0, 5.6, 2.0]}
    x = np.vstack([rng.normal(c, 0.15, (n_per_class, 4)) for c in centres.values()])
    codes = np.repeat(np.arange(len(centres), dtype=np.int8), n_per_class)
    return x, codes, np.asarray(list(centres), dtype=object)


def classes(schema: schemas.Schema) -> list[str]:
    """The labels a test's rows carry: the declared classes, or three made-up ones when the schema learns them."""
    return list(schema.classes or ("class-a", "class-b", "class-c"))


def source_table(keys, labels=None, seed: int = 0) -> pa.Table:
    """Rows in the active schema's columns, as a source holds them: `keys` (integers; `k<n>` for a text key),
    every feature near its class's own centre (so the classes can be learnt), each dropped column, and labels
    (default: the classes in turn)."""
    schema = schemas.active()
    names = classes(schema)
    keys = np.asarray(keys)
    if labels is None:
        codes = np.arange(len(keys)) % len(names)
        labels = np.asarray(names, dtype=object)[codes]
    else:
        codes = np.array([names.index(label) if label in names else 0 for label in labels])
    rng = np.random.default_rng(seed)
    columns = {schema.key: pa.array(keys if schema.key_type == "int" else [f"k{k:09d}" for k in keys])}
    for i, (name, kind) in enumerate(schema.features.items()):
        values = 2.0 * codes + 0.5 * i + rng.normal(0.0, 0.15, len(keys))
        columns[name] = pa.array(np.rint(values).astype(np.int64) if kind == "int" else values)
    columns.update({name: pa.array(np.full(len(keys), {"float": 0.5, "int": 1, "text": "x"}[kind]))
                    for name, kind in schema.dropped.items()})
    columns[schema.label] = pa.array(labels, pa.string())
    return pa.table(columns)


def samples() -> tuple[Path, Path]:
    """The active schema's sample sources, A and B: the data the whole-flow tests run on."""
    found = schemas.active().samples
    return found["data_path_a"], found["data_path_b"]


def source_rows(path: Path) -> int:
    """Rows in a sample source (Parquet, CSV with a header, JSON Lines)."""
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    return len(path.read_text().splitlines()) - (path.suffix == ".csv")


def sample_rows() -> int:
    """How many rows the samples hold together (the bundled samples share no key)."""
    return sum(map(source_rows, samples()))


def drop_last_row(path: Path) -> None:
    """The same source less its last row, in its own format: the same path with new content."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        pq.write_table(table.slice(0, table.num_rows - 1), path)
    else:
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def bad_source(path: Path) -> str:
    """A CSV in the active schema's columns whose first feature is not a number; the error load gives for it."""
    schema = schemas.active()
    first, kind = next(iter(schema.features.items()))
    values = {schema.key: "1", first: "x", schema.label: classes(schema)[0]}
    path.write_text(",".join(schema.required) + "\n" + ",".join(values.get(c, "1") for c in schema.required) + "\n")
    what = "an integer" if kind == "int" else "a number"
    return f"input data_path: {path}: column {first} must be {what} in every row, found 'x' in row 1"


# The train task's settings as flow.py gives them by default (its signature's defaults).
TRAIN_DEFAULTS = {"learning_rate": "0.05", "hidden_layers": "16", "seed": "42", "test_fraction": "0.2",
                  "early_stopping": "0"}


def write_settings(root: Path, **settings) -> None:
    """The train task's setting inputs in a fake tree: flow.py's defaults, but for those given."""
    for name, value in {**TRAIN_DEFAULTS, **{k: str(v) for k, v in settings.items()}}.items():
        (root / "inputs" / name).write_text(value)


@pytest.fixture
def train_root(wf_root):
    """A fake /workflow tree holding the train stage's inputs: 60 rows of the active schema (20 per class),
    5 epochs of 16-row batches, flow.py's other defaults."""
    table = source_table(range(1, 61)).drop_columns(list(schemas.active().dropped))
    write_snapshot(wf_root / "inputs" / "processed_data", table)
    write_settings(wf_root, epochs=5, batch_size=16)
    (wf_root / "inputs" / "schema").write_text(schemas.path().read_text())  # as flow.py passes it
    return wf_root


@pytest.fixture(autouse=True)
def schema_from_file():
    """A stage run in the test's process may have made its input `schema` the active one: not for the next test."""
    yield
    schemas.use(None)


def copy_project(dest: Path) -> None:
    """The project as a user has it: every file git knows (committed or not), times kept (make sees an
    unchanged file as unchanged); no wheelhouse, venv, runs or build outputs."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def fenced(path: Path, lang: str = "") -> list[str]:
    """A guide's fenced blocks of one language ("" for plain output and file contents), in order: tests run
    what the docs show, as written."""
    return [body for kind, body in re.findall(r"^```(\w*)\n(.*?)^```$", path.read_text(), re.S | re.M)
            if kind == lang]


def as_typed(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command as a user types it after `. .venv/bin/activate`: the venv's bin first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PATH": path, **(env or {})})


ATTRIBUTE = re.compile(r"""\b(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def references(page: str) -> list[str]:
    """Every src and href value in an HTML page."""
    return [next(filter(None, groups), "") for groups in ATTRIBUTE.findall(page)]


def assert_self_contained(page: str) -> None:
    """Nothing the page shows may come from elsewhere: no script, no external URL, no CSS import."""
    external = [ref for ref in references(page) if re.match(r"(?i)(https?:|//|ftp:)", ref)]
    assert not external, external
    assert "<script" not in page.lower() and "@import" not in page and "url(http" not in page
    assert "http://" not in page and "https://" not in page
