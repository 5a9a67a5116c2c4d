"""The benchmark: its generated sources, and a smoke run on a small size (no timings asserted: not a test of speed)."""

import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402


def test_generated_sources_are_iris_shaped_with_ids_apart(tmp_path):
    bench.generate(tmp_path / "a.csv", 3000, 1, seed=1)
    bench.generate(tmp_path / "b.csv", 3000, 3001, seed=2)
    a, b = pcsv.read_csv(tmp_path / "a.csv"), pcsv.read_csv(tmp_path / "b.csv")
    assert a.column_names == bench.COLUMNS and a.num_rows == 3000
    assert a.column("Id").to_pylist() == list(range(1, 3001))
    assert b.column("Id").to_pylist() == list(range(3001, 6001))
    assert set(a.column("Species").to_pylist()) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    # class-dependent features: setosa's petals are short, virginica's long, as in the real data
    mean_petal = {label: pc.mean(a.filter(pc.equal(a.column("Species"), label)).column("PetalLengthCm")).as_py()
                  for label in bench.SPECIES}
    assert mean_petal["Iris-setosa"] < 2 < mean_petal["Iris-versicolor"] < 5 < mean_petal["Iris-virginica"]


@pytest.mark.slow
def test_bench_runs_and_prints_the_table(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--rows", "2000", "--epochs", "1",
                           "--batch-size", "256", "--no-docker", "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = [line.split() for line in proc.stdout.splitlines()]
    rows = {row[0]: row for row in cells if len(row) > 1 and row[1].replace(",", "").isdigit()}
    for stage in bench.STAGES:
        assert len(rows[stage]) == 2 + 2 * len(bench.UNITS), rows[stage]  # seed-style and process columns
    assert "data stages, seed-style / ours: wall" in proc.stdout
    assert "train, ours / bare estimator fit:" in proc.stdout
    assert "docker backend: skipped (--no-docker)" in proc.stdout
    assert not work.exists()  # generated data is deleted unless --keep
