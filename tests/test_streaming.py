"""The streaming paths: several batches and row groups, made small so tiny data crosses their boundaries.

A stage that streams must give the rows a whole-table reading of its inputs would, and name rows by their
place in the whole source, not in the batch they arrived in. Each test runs the stage's own entrypoint.
"""

import itertools

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stageflow.runtime import dataset, sources
from stageflow.runtime.contract import StageError

from conftest import IRIS_FEATURES, load_stage, run_main, write_snapshot

pytestmark = pytest.mark.iris  # iris columns, labels and messages

load_a = load_stage("load_a")
merge = load_stage("merge")
process = load_stage("process")

HEADER = "Id,SepalLengthCm,SepalWidthCm,RandomColumn,PetalLengthCm,PetalWidthCm,Species"


@pytest.fixture
def small_pieces(monkeypatch):
    """Row groups of 3 rows and CSV batches of 100 bytes (the header and a row, then two or three rows)."""
    monkeypatch.setattr(dataset, "ROW_GROUP", 3)
    monkeypatch.setattr(sources, "CSV_BLOCK", 100)


def csv_rows(ids, species="Iris-setosa", bad=None):
    lines = [HEADER]
    for i in ids:
        lines.append(f"{i},{'wide' if i == bad else 5.1},3.5,0.1,1.4,0.2,{species}")
    return "\n".join(lines) + "\n"


def rows(ids, species="setosa", **overrides):
    """An iris-shaped table whose every value follows from its row's Id (and species)."""
    columns = {"Id": pa.array(ids, pa.int64()),
               **{name: pa.array([float(i) + k / 10 for i in ids]) for k, name in enumerate(IRIS_FEATURES)},
               "RandomColumn": pa.array([0.5] * len(ids)),
               "Species": pa.array([species] * len(ids) if isinstance(species, str) else species)}
    columns.update(overrides)
    return pa.table(columns)


def snapshot(path, ids, species="setosa", **overrides):
    """A snapshot in row groups of ROW_GROUP rows (3 under `small_pieces`)."""
    meta = {"source": {"sha256": "x", "rows": len(ids), "format": "csv"}}
    return write_snapshot(path, rows(ids, species, **overrides), meta)


def output(wf_root, name):
    return dataset.Snapshot(wf_root / "outputs" / name, name)


def test_load_streams_a_csv_in_batches_into_row_groups(wf_root, small_pieces):
    source = wf_root / "a.csv"
    source.write_text(csv_rows(range(1, 11)))
    (wf_root / "inputs" / "data_path").write_text(str(source))
    assert run_main(load_a, wf_root) == (0, None)
    out = pq.ParquetFile(wf_root / "outputs" / "datasetA")
    assert out.metadata.num_row_groups == 4  # 10 rows in groups of 3
    table = dataset.Snapshot(wf_root / "outputs" / "datasetA", "datasetA").read()
    assert table.column("Id").to_pylist() == list(range(1, 11))
    assert dataset.Snapshot(wf_root / "outputs" / "datasetA", "datasetA").meta["source"]["rows"] == 10


def test_load_names_a_bad_value_by_its_row_in_the_whole_source(wf_root, small_pieces):
    source = wf_root / "a.csv"
    source.write_text(csv_rows(range(1, 11), bad=9))  # in a late batch, after rows were written
    (wf_root / "inputs" / "data_path").write_text(str(source))
    assert run_main(load_a, wf_root) == (1, f"input data_path: {source}: column SepalLengthCm must be a number "
                                             f"in every row, found 'wide' in row 9\n")
    assert sorted(p.name for p in (wf_root / "outputs").iterdir()) == ["_ERROR"]


def test_load_finds_a_duplicate_id_across_batches(wf_root, small_pieces):
    source = wf_root / "a.csv"
    source.write_text(csv_rows([1, 2, 3, 4, 5, 6, 7, 2]))
    (wf_root / "inputs" / "data_path").write_text(str(source))
    status, error = run_main(load_a, wf_root)
    assert status == 1 and error.endswith(": duplicate Id 2 (1 Id(s) appear more than once)\n")


def test_merge_streams_sources_whose_id_ranges_are_apart(wf_root, small_pieces, capsys):
    snapshot(wf_root / "inputs" / "datasetA", [11, 12, 13, 14])  # B's Ids all come first
    snapshot(wf_root / "inputs" / "datasetB", [1, 2, 3, 4, 5], species="virginica")
    assert run_main(merge, wf_root) == (0, None)
    assert "into 9 rows (streamed: both sorted by Id)" in capsys.readouterr().err
    out = output(wf_root, "merged_data")
    assert out.read().column("Id").to_pylist() == [1, 2, 3, 4, 5, 11, 12, 13, 14]
    assert (out.meta["rows"], out.meta["overlap"]) == (9, 0)


@pytest.mark.parametrize("ids_a, ids_b", [
    ([1, 3, 5, 7, 9], [2, 4, 5, 6, 8]),                    # interleaved, one Id in both
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [4, 5, 6, 20, 21]),  # B inside A, then past it
    ([5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),      # A inside B, all of A in both
])
def test_merge_streams_sorted_sources_into_their_sorted_union(wf_root, small_pieces, capsys, ids_a, ids_b):
    snapshot(wf_root / "inputs" / "datasetA", ids_a)
    snapshot(wf_root / "inputs" / "datasetB", ids_b)
    assert run_main(merge, wf_root) == (0, None)
    assert "streamed: both sorted by Id" in capsys.readouterr().err
    out = output(wf_root, "merged_data")
    union = sorted(set(ids_a) | set(ids_b))
    assert out.read().to_pydict() == dataset.conform(rows(union), "expected").to_pydict()
    assert (out.meta["rows"], out.meta["overlap"]) == (len(union), len(set(ids_a) & set(ids_b)))
    assert out.file.metadata.num_row_groups > 1  # written in pieces, not whole


def sorted_in_memory(a_path, b_path, out_path, meta):
    """What merge once wrote for unsorted sources: both snapshots whole, A plus the rows of B whose Id A
    lacks, sorted by Id in memory, handed to the writer in slices of ROW_GROUP rows."""
    a = dataset.Snapshot(a_path, "a").read()
    b = dataset.Snapshot(b_path, "b").read().select(a.column_names)
    combined = pa.concat_tables([a, b.filter(pc.invert(pc.is_in(b.column("Id"), value_set=a.column("Id"))))])
    order = pc.sort_indices(combined, sort_keys=[("Id", "ascending")])
    with dataset.Writer(out_path, a.schema) as writer:
        for start in range(0, combined.num_rows, dataset.ROW_GROUP):
            writer.write(combined.take(order.slice(start, dataset.ROW_GROUP)))
        writer.meta = meta


def labelled(path, ids, groups):
    """A snapshot whose row groups (of `groups` rows) each code the labels on their own dictionary order, as
    loads write them (a label dictionary lists labels in the order a batch first shows them)."""
    orders = [["setosa", "versicolor", "virginica"], ["virginica", "setosa", "versicolor"],
              ["versicolor", "virginica", "setosa", "unused"]]
    species = ("setosa", "versicolor", "virginica")
    labels = [species[i % 3] if i % 7 else None for i in ids]  # by Id: an Id in both has one row
    table = dataset.conform(rows(ids, labels), "t")
    with dataset.Writer(path, table.schema) as writer:
        for k, start in enumerate(range(0, len(ids), groups)):
            piece = table.slice(start, groups)
            text = pc.cast(piece.column("Species"), pa.string())
            codes = pc.index_in(text, value_set=pa.array(orders[k % 3])).cast(pa.int32())
            piece = piece.set_column(piece.schema.get_field_index("Species"), "Species",
                                     pa.DictionaryArray.from_arrays(codes, pa.array(orders[k % 3])))
            writer.write(piece)
        writer.meta = {"source": {"sha256": "x", "rows": len(ids), "format": "csv"}}
    return path


@pytest.mark.parametrize("ids_a, ids_b", [
    ([9, 1, 5, 3, 7], [2, 4, 5, 6, 8]),                                 # A shuffled, one Id in both
    (list(range(30, 0, -1)), list(range(45, 15, -2))),                  # both reversed, half of B in A
    ([14, 3, 27, 8, 1, 22, 19, 5, 11, 30, 2, 17], list(range(40, 52))),  # B sorted, after A's Ids
    ([6, 2, 4], [4, 6, 2]),                                             # all of B in A
])
def test_merge_sorts_unsorted_sources_through_duckdb_into_the_bytes_a_sort_in_memory_writes(
        wf_root, small_pieces, monkeypatch, capsys, ids_a, ids_b):
    """Row groups of 3 and label dictionaries that differ from row group to row group, through the engine's
    spill files and its batches (3 rows here too): the file is byte for byte the one a sort in memory
    writes. (Sorting in memory also failed here on an Id in both sources: pyarrow's join cannot unify
    differing dictionaries within a column.)"""
    spills = []
    connect = merge.connect

    def recorded(spill):
        con = connect(spill)
        spills.append((spill, con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0]))
        return con

    monkeypatch.setattr(merge, "connect", recorded)
    a, b = labelled(wf_root / "inputs" / "datasetA", ids_a, 3), labelled(wf_root / "inputs" / "datasetB", ids_b, 4)
    assert run_main(merge, wf_root) == (0, None)
    assert "(sorted by DuckDB: a source is not sorted by Id)" in capsys.readouterr().err
    out = output(wf_root, "merged_data")
    assert out.read().column("Id").to_pylist() == sorted(set(ids_a) | set(ids_b))
    assert (out.meta["rows"], out.meta["overlap"]) == (len(set(ids_a) | set(ids_b)), len(set(ids_a) & set(ids_b)))
    sorted_in_memory(a, b, wf_root / "expected", out.meta)
    assert (wf_root / "outputs" / "merged_data").read_bytes() == (wf_root / "expected").read_bytes()
    [(spill, engine_spills_to)] = spills
    assert spill.parent == wf_root / "outputs" and engine_spills_to == str(spill)  # not /tmp: may be a small tmpfs
    assert sorted(p.name for p in (wf_root / "outputs").iterdir()) == ["merged_data"]  # the spill files are gone


def test_once_one_stream_is_left_its_pieces_follow_one_at_a_time():
    """The streams' tails are not read ahead: the rest of one stream may be most of the data."""
    drawn = []

    def pieces():
        for i in range(1000):
            drawn.append(i)
            yield pa.table({"Id": pa.array([10 + i], pa.int64())})

    rounds = merge.aligned([[pa.table({"Id": pa.array([1], pa.int64())})], pieces()])
    firsts = [[t.column("Id")[0].as_py() if t else None for t in ready] for ready in itertools.islice(rounds, 4)]
    assert firsts == [[1, None], [None, 10], [None, 11], [None, 12]]
    assert len(drawn) <= 4


@pytest.mark.parametrize("ids_a", [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]], ids=["sorted", "unsorted"])
def test_merge_counts_every_conflict_across_pieces(wf_root, small_pieces, ids_a):
    snapshot(wf_root / "inputs" / "datasetA", ids_a)
    snapshot(wf_root / "inputs" / "datasetB", [2, 7, 8], species="virginica")
    assert run_main(merge, wf_root) == (1, "merge: Id 2, 7, 8 (3 in all) have different values in datasetA "
                                           "and datasetB; Id 2: Species is 'setosa' in datasetA but 'virginica' "
                                           "in datasetB; Id 7: Species is 'setosa' in datasetA but 'virginica' in "
                                           "datasetB; Id 8: Species is 'setosa' in datasetA but 'virginica' in "
                                           "datasetB\n")
    assert sorted(p.name for p in (wf_root / "outputs").iterdir()) == ["_ERROR"]


def test_merge_stage_refuses_conflicts_without_an_output(wf_root, small_pieces):
    snapshot(wf_root / "inputs" / "datasetA", [1, 2, 3])
    snapshot(wf_root / "inputs" / "datasetB", [3, 4], species="virginica")
    status, error = run_main(merge, wf_root)
    assert status == 1 and error.startswith("merge: Id 3 (1 in all) have different values")
    assert sorted(p.name for p in (wf_root / "outputs").iterdir()) == ["_ERROR"]


def test_process_counts_and_checks_across_row_groups(wf_root, small_pieces):
    labels = ["Iris-setosa", " setosa", "VERSICOLOR", "setsoa", "virginica", "setsoa", "setosa", "iris-virginica"]
    snapshot(wf_root / "inputs" / "merged_data", list(range(1, 9)), species=labels)
    assert run_main(process, wf_root) == (1, (
        "input merged_data: column Species has unknown label 'setsoa' in 2 row(s); "
        "expected one of setosa, versicolor, virginica\n"))


def test_process_streams_row_group_by_row_group(wf_root, small_pieces):
    labels = ["Iris-setosa", " setosa", "VERSICOLOR", None, "virginica", "setosa", "setosa", "iris-virginica"]
    widths = pa.array([0.1, 0.2, float("nan"), 0.4, 0.5, None, 0.7, 0.8])
    snapshot(wf_root / "inputs" / "merged_data", list(range(1, 9)), species=labels, PetalWidthCm=widths)
    assert run_main(process, wf_root) == (0, None)
    out = output(wf_root, "processed_data")
    assert out.read().column("Id").to_pylist() == [1, 2, 5, 7, 8]  # 3: NaN width, 4: no label, 6: no width
    assert out.read().column("Species").to_pylist() == ["setosa", "setosa", "virginica", "setosa", "virginica"]
    assert out.read().column("PetalWidthCm").to_pylist() == [0.1, 0.2, 0.5, 0.7, 0.8]
    assert out.column_names == ["Id", *IRIS_FEATURES, "Species"]
    assert (out.meta["rows"], out.meta["dropped"], out.meta["source"]["sha256"]) == (5, 3, "x")
    assert out.file.metadata.num_row_groups > 1


def test_a_file_that_is_not_parquet_is_refused_naming_the_input():
    with pytest.raises(StageError, match=r"input x: not a readable Parquet snapshot"):
        dataset.Snapshot(__file__, "x")
