"""The benchmark: its generated sources, its baselines, and a smoke run on a small size (no timings asserted:
not a test of speed)."""

import inspect
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from stageflow import dag as dag_module, registry
from stageflow.runtime import schema as schemas

from conftest import ROOT, WINE_SCHEMA, load_stage

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402
import bench_seed  # noqa: E402


def test_generated_sources_are_drawn_like_the_schemas_sample_with_ids_apart(tmp_path):
    bench.generate(tmp_path / "a.csv", 3000, 1, seed=1)
    bench.generate(tmp_path / "b.csv", 3000, 3001, seed=2)
    shape, schema = bench.sample_shape(), schemas.active()
    a, b = pcsv.read_csv(tmp_path / "a.csv"), pcsv.read_csv(tmp_path / "b.csv")
    sample_header = pcsv.open_csv(schema.samples["data_path_a"]).schema.names  # iris: the seed's column order
    assert a.column_names == shape.columns == sample_header and a.num_rows == 3000
    assert a.column(schema.key).to_pylist() == list(range(1, 3001))
    assert b.column(schema.key).to_pylist() == list(range(3001, 6001))
    labels = pc.cast(a.column(schema.label), pa.string())
    assert set(labels.to_pylist()) == set(shape.labels)  # spelt as the sample spells them (iris: Iris-setosa)
    for k, label in enumerate(shape.labels):  # each class's features centred where the sample's are
        rows = a.filter(pc.equal(labels, label))
        for i, name in enumerate(schema.features):
            assert abs(pc.mean(rows.column(name)).as_py() - shape.mean[k, i]) < 0.2 * shape.std[k, i] + 0.05


@pytest.mark.iris
def test_the_iris_sample_gives_the_real_iris_class_means_and_spreads():
    """Golden: the figures published for the iris data (per species: sepal length, sepal width, petal length,
    petal width), which the bench used to hold as constants."""
    shape = bench.sample_shape()
    assert shape.labels == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    assert shape.mean.round(3).tolist() == [[5.006, 3.428, 1.462, 0.246], [5.936, 2.77, 4.26, 1.326],
                                            [6.588, 2.974, 5.552, 2.026]]
    assert shape.std.round(3).tolist() == [[0.352, 0.379, 0.174, 0.105], [0.516, 0.314, 0.47, 0.198],
                                           [0.636, 0.322, 0.552, 0.275]]
    assert shape.places == [1, 1, 1, 1] and shape.floor == [1, 1, 1, 1]


def test_a_schema_without_samples_is_refused_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "schema.toml"
    path.write_text(WINE_SCHEMA.read_text().split("[samples]")[0])
    monkeypatch.setenv(schemas.ENV, str(path))
    with pytest.raises(SystemExit, match=rf"^bench: schema {path} names no sample sources"):
        bench.sample_shape()


def test_shuffled_sources_hold_the_same_ids_out_of_order(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CHUNK", 700)  # the order is drawn whole, the rows written in chunks
    bench.generate(tmp_path / "a.csv", 3000, 2, seed=1, id_step=2, shuffle=True)
    ids = pcsv.read_csv(tmp_path / "a.csv").column(schemas.active().key).to_pylist()
    assert ids != sorted(ids) and sorted(ids) == list(range(2, 6001, 2))


def test_the_baselines_cover_every_stage_with_the_flows_input_names():
    """The seed-style stages are called with the DAG's input names; the peer has a task per stage."""
    dag = dag_module.load()
    assert set(bench_seed.SEED_STAGES) == set(registry.STAGES) == {node.name for node in dag.nodes}
    for node in dag.nodes:  # each but the constants (the schema's text: the seed read its own files)
        params = list(inspect.signature(bench_seed.SEED_STAGES[node.name]).parameters)
        assert sorted(params[1:]) == sorted(k for k, (_, s) in node.inputs.items() if s.stage or s.flow_input), node.name
    import bench_flytekit

    assert {getattr(bench_flytekit, name).name.rsplit(".", 1)[-1] for name in registry.STAGES} == set(registry.STAGES)


def test_the_fit_baseline_and_the_peer_train_the_stages_network():
    train = load_stage("train")
    settings = bench_seed.settings(train, 10, 32)
    fit, stage = bench_seed.user_network(train, settings).get_params(), train.estimator(settings).get_params()
    assert (fit["max_iter"], fit["shuffle"]) == (10, True)  # the epochs, each shuffled, as the stage's are
    assert {k: v for k, v in fit.items() if k not in ("max_iter", "shuffle")} == \
        {k: v for k, v in stage.items() if k not in ("max_iter", "shuffle")}
    source = (ROOT / "scripts" / "bench_flytekit.py").read_text()
    assert f"hidden_layer_sizes={settings.hidden_layers}, learning_rate_init={settings.learning_rate}" in source
    assert f"random_state={settings.seed}" in source


def test_the_floor_query_does_the_data_path(tmp_path):
    """The DuckDB floor gives what process gives on sources process keeps whole: A's rows, then B's, by key,
    without the dropped columns; and drops what process drops."""
    import duckdb

    bench.generate(tmp_path / "a.csv", 300, 1, seed=1)
    bench.generate(tmp_path / "b.csv", 300, 151, seed=2)  # 151..300 in both: A's rows are kept
    schema = schemas.active()
    text = (tmp_path / "b.csv").read_text().splitlines()
    row = text[-1].split(",")
    row[text[0].split(",").index(next(iter(schema.features)))] = ""  # a feature missing: dropped
    (tmp_path / "b.csv").write_text("\n".join(text[:-1] + [",".join(row)]) + "\n")
    out = tmp_path / "floor.parquet"
    duckdb.sql(bench.floor_query({"data_path_a": tmp_path / "a.csv", "data_path_b": tmp_path / "b.csv"}, out))
    floor = pq.read_table(out)
    assert floor.column_names == list(schema.required)
    assert floor.column(schema.key).to_pylist() == list(range(1, 450))
    a = pcsv.read_csv(tmp_path / "a.csv")
    assert floor.slice(0, 300).column(schema.label).to_pylist() == a.column(schema.label).to_pylist()


def test_upto_keeps_a_stage_and_what_it_needs():
    dag = bench.upto(dag_module.load(), "merge")
    assert {node.name for node in dag.nodes} == {"merge"} | dag.node("merge").upstream
    assert dag.outputs == {}


@pytest.mark.slow
def test_bench_runs_and_prints_every_comparison(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--rows", "2000", "--epochs", "1",
                           "--batch-size", "256", "--fit-batch-sizes", "64", "--repeat", "2", "--no-docker",
                           "--phases", "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = [line.split() for line in proc.stdout.splitlines()]
    rows = {row[0]: row for row in cells if len(row) > 1 and row[1].replace(",", "").isdigit()}
    for stage in registry.STAGES:
        assert len(rows[stage]) == 2 + 2 * len(bench.UNITS), rows[stage]  # seed-style and process columns
    assert "data stages, seed-style / ours: wall" in proc.stdout
    assert "/ the same stages as plain flytekit tasks (`pyflyte run`), one after the other:\n  run 1: " in proc.stdout
    assert "  stageflow / flytekit: median " in proc.stdout  # --repeat 2: the flow and the peer twice
    assert "batch 64:\n  run 1: train " in proc.stdout and "  run 2: train " in proc.stdout
    assert "train / fit, wall: median " in proc.stdout and "train / fit, loop: median " in proc.stdout
    assert "docker backend: skipped (--no-docker)" in proc.stdout
    assert re.search(r"^  run 2: [0-9.]+ s / [0-9.]+ s = [0-9.]+x \(floor cpu", proc.stdout, re.M)  # the DuckDB floor
    assert "  data path / floor: median " in proc.stdout
    phases = {row[0]: row for row in cells if len(row) == 6 and row[0] in registry.STAGES}
    assert set(phases) == set(registry.STAGES)  # each stage's start-up, imports, work, writing and total
    assert all(float(row[-1]) >= max(map(float, row[1:-1])) for row in phases.values())
    assert not work.exists()  # generated data is deleted unless --keep


@pytest.mark.slow
def test_bench_runs_part_of_the_flow_on_shuffled_ids_and_merge_against_other_engines(tmp_path):
    """--merge-against: the merge stage as committed (HEAD, through git archive) and Dask's shuffle, each
    checked to give the merge stage's rows in its order."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--rows", "2000", "--shuffle",
                           "--until", "merge", "--no-baseline", "--no-docker", "--merge-against", "HEAD",
                           "--merge-against", "dask"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Ids shuffled" in proc.stdout
    cells = [line.split() for line in proc.stdout.splitlines()]
    table_rows = {row[0] for row in cells if len(row) == 2 + len(bench.UNITS) and row[0] in registry.STAGES}
    assert table_rows == {"load_a", "load_b", "merge"}  # the process backend's column only
    assert "pyflyte" not in proc.stdout and "train / fit" not in proc.stdout
    for contender in ("stage", "at HEAD", "dask"):
        assert re.search(rf"^ +{contender}, run 1: [0-9.]+ s wall, [0-9.]+ s cpu, [0-9]+ MiB", proc.stdout, re.M), contender
    assert proc.stdout.count("x peak of the stage's") == 2


@pytest.mark.docker
def test_the_docker_backend_is_a_contender_where_the_images_are_built():
    """Without it the bench prints the docker comparison as skipped, and the container overhead goes unmeasured
    (it did, after the runner's backends began to check jobs rather than a DAG)."""
    backend, why = bench.docker_backend(dag_module.load())
    assert why is None and backend is not None
