import importlib
import importlib.util
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
import pyarrow.csv as pcsv
import pytest

from stageflow.runtime import contract, dataset

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "domino_standin"  # the recording stand-in of Domino's plugin


def downstream(dag, names) -> set[str]:
    """The stages that depend, directly or not, on any of `names`, from the DAG the runner runs."""
    found: set[str] = set()
    for node in dag.nodes:  # flow.py's order is topological
        if node.upstream & (set(names) | found):
            found.add(node.name)
    return found


def load_stage(name: str):
    """Import stages/<name>/main.py as a module; nothing runs at import time, so tests get the logic."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / name / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
    """An iris-shaped CSV large enough (2,000,000 rows) that writing its snapshot takes a visible while.

    The streaming load snapshots 500,000 rows in about half a second, less than a busy machine may take to
    deliver the Ctrl-C test's signal: that test then saw the loads succeed before the interrupt.
    """
    n = 2_000_000
    rng = np.random.default_rng(1)
    table = pa.table({"Id": np.arange(1, n + 1), "SepalLengthCm": rng.normal(5.8, 0.8, n),
                      "SepalWidthCm": rng.normal(3.0, 0.4, n), "RandomColumn": rng.normal(0, 1, n),
                      "PetalLengthCm": rng.normal(3.7, 1.7, n), "PetalWidthCm": rng.normal(1.2, 0.7, n),
                      "Species": np.array(["Iris-setosa", "Iris-versicolor", "Iris-virginica"])[rng.integers(0, 3, n)]})
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


def iris_like(n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = {"setosa": [5.0, 3.4, 1.5, 0.2], "versicolor": [5.9, 2.8, 4.3, 1.3], "virginica": [6.6, 3.0, 5.6, 2.0]}
    x = np.vstack([rng.normal(c, 0.15, (n_per_class, 4)) for c in centres.values()])
    codes = np.repeat(np.arange(len(centres), dtype=np.int8), n_per_class)
    return x, codes, np.asarray(list(centres), dtype=object)


@pytest.fixture
def train_root(wf_root):
    """A fake /workflow tree holding the train stage's inputs: 60 iris-like rows, 5 epochs of 16-row batches."""
    x, codes, names = iris_like()
    y = names[codes]
    columns = {dataset.ID: pa.array(range(1, len(y) + 1), pa.int64()),
               **{name: pa.array(x[:, i]) for i, name in enumerate(dataset.FEATURES)},
               dataset.LABEL: pa.array(list(y))}
    write_snapshot(wf_root / "inputs" / "processed_data", pa.table(columns))
    (wf_root / "inputs" / "epochs").write_text("5")
    (wf_root / "inputs" / "batch_size").write_text("16")
    return wf_root


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
