"""What a source's values may be, on every reader path: CSV (read typed, and as text when a value needs
trimming), CSV.gz, Parquet, JSON Lines and the snapshots between stages. A value is refused with its file,
row and column, or taken exactly as written; docs/failures.md ("Values") states the rules checked here."""

import datetime as dt
import decimal
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stageflow import check
from stageflow.runtime import dataset

from conftest import IRIS_FEATURES, IRIS_SCHEMA, load_source, load_stage, run_main

pytestmark = pytest.mark.iris  # iris columns and messages

process = load_stage("process")
HEADER = "Id,SepalLengthCm,SepalWidthCm,RandomColumn,PetalLengthCm,PetalWidthCm,Species"
PADDED = "4, 5.1 ,3.5,0.1,1.4,0.2,setosa"  # padding sends the CSV read down its text path


def csv_rows(n, changes=None):
    """A CSV of `n` iris rows; `changes` maps a row number (from 1) to the line that replaces it."""
    lines = [f"{i},5.1,3.5,0.1,1.4,0.2,setosa" for i in range(1, n + 1)]
    for row, line in (changes or {}).items():
        lines[row - 1] = line
    return HEADER + "\n" + "\n".join(lines) + "\n"


def text(body):
    return lambda path: path.write_text(body)


def raw(data):
    return lambda path: path.write_bytes(data)


def gz(body):
    return lambda path: path.write_bytes(gzip.compress(body.encode()))


def parquet(**columns):
    """A two-row iris Parquet file with some columns replaced."""
    def write(path):
        table = {"Id": [1, 2], **{f: [1.0, 2.0] for f in IRIS_FEATURES}, "Species": ["setosa", "virginica"]}
        pq.write_table(pa.table({**table, **columns}), path)
    return write


def record(key, **changes):
    return {"Id": key, **{f: 1.0 for f in IRIS_FEATURES}, "Species": "setosa", **changes}


def jsonl(*records):
    return text("".join(json.dumps(r) + "\n" for r in records))


def groups_of_three(path):
    """Ten rows in row groups of three, `NA` in the eighth: read a row group at a time."""
    values = ["1.5"] * 10
    values[7] = "NA"
    table = {"Id": list(range(1, 11)), **{f: [1.0] * 10 for f in IRIS_FEATURES}, "Species": ["setosa"] * 10}
    pq.write_table(pa.table({**table, "SepalLengthCm": values}), path, row_group_size=3)


def latin1_name(path):
    """A Parquet file whose label column's name holds a Latin-1 byte (pyarrow writes only UTF-8 names)."""
    parquet(SpXcies=["setosa", "virginica"])(path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"SpXcies", b"Sp\xe9cies"))


def invalid_utf8(values):
    """A string array holding bytes that are not UTF-8, as a writer other than pyarrow could leave them."""
    return pa.array(values, pa.binary()).view(pa.string())


def quote(where, column, opens):
    return (f"{where}, column {column}: the quote that opens {opens!r} is not closed on its line; a value may not "
            f"span lines, so the rows after it would be read into it. Close the quote (a quote inside a quoted "
            f"value is written \"\")")


def must(column, what, found, row, hint=""):
    return f"column {column} must be {what} in every row, found {found} in row {row}{hint}"


def too_large(found, row):
    return (f"column SepalLengthCm must be a number within ±1e+100 in every row, found {found} in row {row}; "
            f"training cannot scale a feature that large")


def not_utf8(column, found, row):
    return f"column {column} is not UTF-8 text in row {row} ({found}); save the file as UTF-8"


OPEN = '11,5.1,3.5,0.1,1.4,0.2,"setosa'
LABEL = "text or an integer (a label)"

REFUSED = {
    # a quote left open: it swallowed every later row (1,000 in, 11 out), past 1 MiB pyarrow's advice
    "open quote in the last column": ("q.csv", text(csv_rows(1000, {11: OPEN})),
                                      quote("row 11 (line 12)", "Species", '"setosa')),
    "open quote past the first block": ("q.csv", text(csv_rows(60_000, {11: OPEN})),
                                        quote("row 11 (line 12)", "Species", '"setosa')),
    "open quote in a middle column": ("q.csv", text(csv_rows(20, {6: '6,5.1,"3.5,0.1,1.4,0.2,setosa'})),
                                      quote("row 6 (line 7)", "SepalWidthCm", '"3.5,0.1,1.4,0.2,setosa')),
    "open quote in the header": ("q.csv", text(HEADER.replace(",Species", ',"Species') + "\n1,5.1,3.5,0.1,1.4,0.2,a\n"),
                                 quote("the header (line 1)", "7", '"Species')),
    "open quote in a gzipped csv": ("q.csv.gz", gz(csv_rows(20, {8: '8,5.1,3.5,0.1,1.4,0.2,"setosa'})),
                                    quote("row 8 (line 9)", "Species", '"setosa')),
    "open quote after a blank line, crlf": ("q.csv", text(csv_rows(20, {5: '5,5.1,3.5,0.1,1.4,0.2,"setosa'})
                                                          .replace("\n3,", "\n\n3,").replace("\n", "\r\n")),
                                            quote("row 5 (line 7)", "Species", '"setosa')),
    "a quoted value over two lines": ("q.csv", text(csv_rows(5, {3: '3,5.1,3.5,0.1,1.4,0.2,"set\nosa"'})),
                                      quote("row 3 (line 4)", "Species", '"set')),
    "hexadecimal key in a csv": ("s.csv", text(csv_rows(5, {3: "0x3,5.1,3.5,0.1,1.4,0.2,setosa"})),
                                 must("Id", "an integer", "'0x3'", 3)),
    "hexadecimal key as json text": ("s.jsonl", jsonl(record("0x10"), record("2")), must("Id", "an integer", "'0x10'", 1)),
    # a type the schema does not declare (a Parquet timestamp key became integer microseconds)
    "parquet timestamp key": ("s.parquet", parquet(Id=[dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)]),
                              must("Id", "an integer", "a timestamp (2024-01-01 00:00:00)", 1)),
    "parquet list feature": ("s.parquet", parquet(SepalLengthCm=[[1.0], [2.0]]),
                             must("SepalLengthCm", "a number", "a list ([1.0])", 1)),
    "parquet struct label": ("s.parquet", parquet(Species=[{"a": "x"}, {"a": "y"}]),
                             must("Species", LABEL, "a struct ({'a': 'x'})", 1)),
    "parquet map feature": ("s.parquet", parquet(PetalWidthCm=pa.array([[("a", 1.0)], [("b", 2.0)]],
                                                                       pa.map_(pa.string(), pa.float64()))),
                            must("PetalWidthCm", "a number", "a map ([('a', 1.0)])", 1)),
    "parquet fixed-size list": ("s.parquet", parquet(SepalLengthCm=pa.array([[1.0], [2.0]], pa.list_(pa.float64(), 1))),
                                must("SepalLengthCm", "a number", "a list ([1.0])", 1)),
    "jsonl list feature": ("s.jsonl", jsonl(record(1, SepalLengthCm=[1.0]), record(2, SepalLengthCm=[2.0])),
                           must("SepalLengthCm", "a number", "a list ([1.0])", 1)),
    "jsonl object key": ("s.jsonl", jsonl(record({"a": 1})), must("Id", "an integer", "a struct ({'a': 1})", 1)),
    "parquet boolean feature": ("s.parquet", parquet(SepalLengthCm=[True, False]),
                                must("SepalLengthCm", "a number", "a boolean (True)", 1)),
    "parquet date feature, first row empty": ("s.parquet", parquet(SepalLengthCm=[None, dt.date(2024, 1, 2)]),
                                              must("SepalLengthCm", "a number", "a date (2024-01-02)", 2)),
    "parquet duration feature": ("s.parquet", parquet(SepalLengthCm=[dt.timedelta(1), dt.timedelta(2)]),
                                 must("SepalLengthCm", "a number", "a duration (1 day, 0:00:00)", 1)),
    "parquet time feature": ("s.parquet", parquet(SepalLengthCm=[dt.time(1), dt.time(2)]),
                             must("SepalLengthCm", "a number", "a time of day (01:00:00)", 1)),
    "parquet bytes label": ("s.parquet", parquet(Species=[b"setosa", b"virginica"]),
                            must("Species", LABEL, "bytes (b'setosa')", 1)),
    "parquet timestamp label with a zone": ("s.parquet", parquet(Species=pa.array([dt.datetime(2024, 1, 1)] * 2,
                                                                                  pa.timestamp("us", tz="UTC"))),
                                            must("Species", LABEL, "a timestamp (2024-01-01 00:00:00+00:00)", 1)),
    "parquet unsigned key past int64": ("s.parquet", parquet(Id=pa.array([1, 2 ** 63], pa.uint64())),
                                        must("Id", "an integer", "9223372036854775808", 2,
                                             " (not exactly a 64-bit integer)")),
    "parquet integer feature past 2**53": ("s.parquet", parquet(SepalLengthCm=[1, 2 ** 53 + 1]),
                                           must("SepalLengthCm", "a number", "9007199254740993", 2,
                                                " (not exactly a 64-bit float)")),
    "parquet float key past 2**53": ("s.parquet", parquet(Id=[1.0, 2.0 ** 60]),
                                     must("Id", "an integer", "1.152921504606847e+18", 2,
                                          " (not exactly a 64-bit integer)")),
    "jsonl key past int64 makes every key a float": ("s.jsonl", jsonl(record(2 ** 60 + 1), record(10 ** 20)),
                                                     must("Id", "an integer", "1.152921504606847e+18", 1,
                                                          " (not exactly a 64-bit integer)")),
    # text that is not UTF-8 (JSON Lines passed load and merge and died in process with a traceback)
    "jsonl invalid utf-8 label": ("s.jsonl", raw(json.dumps(record(1)).encode() + b"\n" +
                                                 json.dumps(record(2)).encode().replace(b"setosa", b"set\xffosa") + b"\n"),
                                  not_utf8("Species", r"b'set\xffosa'", 2)),
    "csv latin-1 header": ("s.csv", raw(csv_rows(2).replace("Species", "Spécies").encode("latin-1")),
                           r"the name of column 7 (b'Sp\xe9cies') is not UTF-8 text; save the file as UTF-8"),
    "csv latin-1 label": ("s.csv", raw(csv_rows(3, {2: "2,5.1,3.5,0.1,1.4,0.2,sétosa"}).encode("latin-1")),
                          not_utf8("Species", r"b's\xe9tosa'", 2)),
    "csv latin-1 in a number": ("s.csv", raw(csv_rows(3, {2: "2,5.1,3.5,0.1,1.4,0.2é,setosa"}).encode("latin-1")),
                                not_utf8("PetalWidthCm", r"b'0.2\xe9'", 2)),
    "jsonl latin-1 column name": ("s.jsonl", raw(json.dumps(record(1)).replace("Species", "Spécies").encode("latin-1")
                                                 + b"\n"),
                                  r"the name of column 6 (b'Sp\xe9cies') is not UTF-8 text; save the file as UTF-8"),
    "parquet column name not utf-8": ("s.parquet", latin1_name,
                                      r"a column name (b'Sp\xe9cies') is not UTF-8 text; save the file as UTF-8"),
    "parquet label not utf-8, dictionary-encoded": ("s.parquet", parquet(Species=invalid_utf8([b"setosa", b"set\xffosa"])
                                                                         .dictionary_encode()),
                                                    not_utf8("Species", r"b'set\xffosa'", 2)),
    # finite but huge features (sklearn's "contains NaN" advice)
    "csv 1e308": ("s.csv", text(csv_rows(5, {3: "3,1e308,3.5,0.1,1.4,0.2,setosa"})), too_large("1e+308", 3)),
    "csv -1e308": ("s.csv", text(csv_rows(5, {3: "3,-1e308,3.5,0.1,1.4,0.2,setosa"})), too_large("-1e+308", 3)),
    "csv 1e400 is infinity": ("s.csv", text(csv_rows(5, {4: "4,1e400,3.5,0.1,1.4,0.2,setosa"})), too_large("inf", 4)),
    "csv just past the limit": ("s.csv", text(csv_rows(5, {2: "2,1.1e100,3.5,0.1,1.4,0.2,setosa"})),
                                too_large("1.1e+100", 2)),
    "parquet minus infinity": ("s.parquet", parquet(SepalLengthCm=[1.0, float("-inf")]), too_large("-inf", 2)),
    "jsonl Infinity": ("s.jsonl", jsonl(record(1), record(2, SepalLengthCm=float("inf"))), too_large("inf", 2)),
    "parquet NA in a later row group": ("s.parquet", groups_of_three,
                                        must("SepalLengthCm", "a number", "'NA'", 8, "; leave a missing value empty")),
    # JSON Lines the reader cannot take, located in the file (pyarrow counts rows within its block)
    "jsonl text among numbers, past a block": ("s.jsonl", jsonl(*(record(i, SepalLengthCm="a" if i == 15_000 else 1.5)
                                                                  for i in range(1, 20_001))),
                                               'row 15000 (line 15000): column SepalLengthCm holds text ("a") where '
                                               'row 1 holds a number'),
    "jsonl NA among numbers, after blank lines": ("s.jsonl", text(json.dumps(record(1)) + "\n\n\n" +
                                                                 json.dumps(record(2, SepalLengthCm="NA")) + "\n"),
                                                  'row 2 (line 4): column SepalLengthCm holds text ("NA") where row 1 '
                                                  'holds a number'),
    "jsonl key named twice": ("s.jsonl", text(json.dumps(record(1)) + "\n" + json.dumps(record(2))
                                              .replace('{"Id": 2', '{"Id": 2, "Id": 3') + "\n"),
                              "row 2 (line 2) names column Id twice"),
    "jsonl line not json": ("s.jsonl", text(json.dumps(record(1)) + '\n{"Id": 2,\n'),
                            "row 2 (line 2) is not valid JSON (Expecting property name enclosed in double quotes: "
                            "line 2 column 1 (char 10))"),
    "jsonl line not an object": ("s.jsonl", text(json.dumps(record(1)) + "\n[1, 2]\n"),
                                 "row 2 (line 2) is not a JSON object (a list); each line must be one"),
    "jsonl number too large": ("s.jsonl", text(json.dumps(record(1)) + "\n" +
                                               json.dumps(record(2)).replace('"SepalLengthCm": 1.0',
                                                                             '"SepalLengthCm": 1e400') + "\n"),
                               "row 2 (line 2): 1e400 is too large for a float"),
}


def write_source(tmp_path, name, writer):
    source = tmp_path / "src" / name
    source.parent.mkdir()
    writer(source)
    return source


def assert_load_refused(wf_root, source, message):
    before = source.read_bytes()
    status, error, snapshot = load_source(wf_root, source)
    assert (status, error) == (1, f"input data_path: {source}: {message}\n")
    assert snapshot is None and sorted(p.name for p in (wf_root / "outputs").iterdir()) == ["_ERROR"]
    assert source.read_bytes() == before


@pytest.mark.parametrize("case", REFUSED)
def test_a_value_that_would_change_is_refused_with_its_row_and_column(wf_root, tmp_path, case):
    name, writer, message = REFUSED[case]
    assert_load_refused(wf_root, write_source(tmp_path, name, writer), message)


# ------------------------------------------------------------------ missing values: an empty field only

MISSING_WORDS = ["NA", "NULL", "N/A", "null", "None", "#N/A", "n/a"]
PATHS = {  # every way a source is read, each with the word in the row named
    "csv": ("s.csv", lambda word: text(csv_rows(5, {3: f"3,{word},3.5,0.1,1.4,0.2,setosa"})), 3),
    "csv read as text": ("s.csv", lambda word: text(csv_rows(5, {3: f"3,{word},3.5,0.1,1.4,0.2,setosa", 4: PADDED})), 3),
    "csv, a later block": ("s.csv", lambda word: text(csv_rows(60_000, {45_000: f"45000,{word},3.5,0.1,1.4,0.2,a"})),
                           45_000),
    "csv.gz": ("s.csv.gz", lambda word: gz(csv_rows(5, {2: f"2,{word},3.5,0.1,1.4,0.2,setosa"})), 2),
    "parquet": ("s.parquet", lambda word: parquet(SepalLengthCm=["1.5", word]), 2),
    "jsonl": ("s.jsonl", lambda word: jsonl(record(1, SepalLengthCm="1.5"), record(2, SepalLengthCm=word)), 2),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("word", MISSING_WORDS)
def test_a_missing_value_word_in_a_number_column_is_refused_on_every_path(wf_root, tmp_path, path, word):
    name, writer, row = PATHS[path]
    source = write_source(tmp_path, name, writer(word))
    assert_load_refused(wf_root, source, must("SepalLengthCm", "a number", repr(word), row,
                                              "; leave a missing value empty"))


def processed(wf_root, tmp_path, source):
    """Load then process `source`: the processed snapshot, and process's log."""
    assert load_source(wf_root, source)[:2] == (0, None)
    ptree = tmp_path / "process"
    (ptree / "inputs").mkdir(parents=True)
    (ptree / "inputs" / "merged_data").write_bytes((wf_root / "outputs" / "datasetA").read_bytes())
    assert run_main(process, ptree) == (0, None)
    return dataset.Snapshot(ptree / "outputs" / "processed_data", "processed_data")


@pytest.mark.parametrize("padded", [False, True])
def test_empty_blank_and_quoted_empty_fields_are_missing_and_counted_by_reason(wf_root, tmp_path, capsys, padded):
    changes = {2: "2,,3.5,0.1,1.4,0.2,setosa", 3: '3,"",3.5,0.1,1.4,0.2,setosa', 5: "5,NaN,  ,0.1,1.4,0.2,setosa",
               6: "6,5.1,3.5,0.1,1.4,0.2,", **({4: PADDED} if padded else {})}
    out = processed(wf_root, tmp_path, write_source(tmp_path, "s.csv", text(csv_rows(7, changes))))
    assert out.read().column("Id").to_pylist() == [1, 4, 7]
    assert out.meta["dropped"] == 4
    assert out.meta["dropped_by"] == {"Species missing": 1, "SepalLengthCm missing": 2, "SepalLengthCm NaN": 1}
    assert ("dropped 4 of 7 rows that cannot be trained on: Species missing in 1, SepalLengthCm missing in 2, "
            "SepalLengthCm NaN in 1") in capsys.readouterr().err


# ------------------------------------------------------------------ what is taken, exactly as written

ACCEPTED = {
    "decimal feature": (parquet(SepalLengthCm=pa.array([decimal.Decimal("1.10"), decimal.Decimal("2.5")]))),
    "float32 feature": (parquet(SepalLengthCm=pa.array([1.5, 2.25], pa.float32()))),
    "dictionary-encoded feature": (parquet(SepalLengthCm=pa.array([1.5, 2.25]).dictionary_encode())),
    "integer feature": (parquet(SepalLengthCm=[1, 2])),
    "integral float key": (parquet(Id=[1.0, 2.0])),
    "large_string label": (parquet(Species=pa.array(["setosa", "virginica"], pa.large_string()))),
}
EXPECTED = {"decimal feature": [1.1, 2.5], "float32 feature": [1.5, 2.25], "dictionary-encoded feature": [1.5, 2.25],
            "integer feature": [1.0, 2.0]}


@pytest.mark.parametrize("case", ACCEPTED)
def test_types_that_convert_exactly_are_taken(wf_root, tmp_path, case):
    status, error, snapshot = load_source(wf_root, write_source(tmp_path, "s.parquet", ACCEPTED[case]))
    assert (status, error) == (0, None)
    table = snapshot.read()
    assert table.column("Id").to_pylist() == [1, 2] and table.column("Id").type == pa.int64()
    assert table.column("SepalLengthCm").to_pylist() == EXPECTED.get(case, [1.0, 2.0])
    assert table.column("Species").to_pylist() == ["setosa", "virginica"]


def test_json_strings_that_look_like_dates_stay_text(wf_root, tmp_path, monkeypatch):
    """pyarrow's JSON reader takes them for timestamps: a text key 2024-01-01 became 2024-01-01 00:00:00."""
    schema = tmp_path / "schema.toml"
    schema.write_text(IRIS_SCHEMA.read_text().replace('type = "int"', 'type = "text"'))
    monkeypatch.setenv("STAGEFLOW_SCHEMA", str(schema))
    source = write_source(tmp_path, "s.jsonl", jsonl(record("2024-01-01"), record("2024-01-02")))
    status, error, snapshot = load_source(wf_root, source)
    assert (status, error) == (0, None)
    assert snapshot.read().column("Id").to_pylist() == ["2024-01-01", "2024-01-02"]


def test_quotes_that_close_on_their_line_are_read_as_written(wf_root, tmp_path):
    body = csv_rows(4, {2: '2,5.1,3.5,0.1,1.4,0.2,"set""osa"', 3: '3,5.1,3.5,0.1,1.4,0.2,set"osa',
                        4: '4,"5.1",3.5,0.1,1.4,0.2,"a,b"'})
    status, error, snapshot = load_source(wf_root, write_source(tmp_path, "s.csv", text(body)))
    assert (status, error) == (0, None)
    assert snapshot.read().column("Species").to_pylist() == ["setosa", 'set"osa', 'set"osa', "a,b"]


def test_the_feature_limit_itself_is_in_range(wf_root, tmp_path):
    source = write_source(tmp_path, "s.csv", text(csv_rows(3, {2: "2,1e100,3.5,0.1,1.4,-1e100,setosa"})))
    status, error, snapshot = load_source(wf_root, source)
    assert (status, error) == (0, None)
    assert snapshot.read().column("SepalLengthCm").to_pylist() == [5.1, 1e100, 5.1]


# ------------------------------------------------------------------ the source path

LINKS = {
    "a loop of links": (lambda p: p.symlink_to(p), "is a link that cannot be followed (Too many levels of symbolic "
                        "links)"),
    "a dangling link": (lambda p: p.symlink_to(p.parent / "nowhere.csv"),
                        "is a link that cannot be followed (No such file or directory)"),
}


@pytest.mark.parametrize("case", LINKS)
def test_a_link_that_cannot_be_followed_is_named(wf_root, tmp_path, case):
    make, message = LINKS[case]
    source = tmp_path / "a.csv"
    make(source)
    assert load_source(wf_root, source)[:2] == (1, f"input data_path: {source} {message}\n")


def test_a_path_through_a_loop_of_links_is_named(wf_root, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    source = tmp_path / "loop" / "a.csv"
    assert load_source(wf_root, source)[:2] == (1, f"input data_path: {source} cannot be opened (Too many levels of "
                                                   f"symbolic links)\n")


# ------------------------------------------------------------------ the snapshots between stages


def iris_parquet(species=("setosa", "virginica"), **features):
    return parquet(Species=list(species), **features)


def meta_not_json(path):
    table = pa.table({"Id": [1, 2], **{f: [1.0, 2.0] for f in IRIS_FEATURES}, "Species": ["setosa", "virginica"]})
    pq.write_table(table.replace_schema_metadata({b"stageflow": b"[1"}), path)


SNAPSHOTS = {  # a snapshot no stage wrote: whatever reaches a stage as its input is read by the same rules
    "label not utf-8": (iris_parquet(invalid_utf8([b"setosa", b"set\xffosa"])), not_utf8("Species", r"b'set\xffosa'", 2)),
    "feature 1e308": (iris_parquet(SepalLengthCm=[1.0, 1e308]), too_large("1e+308", 2)),
    "date feature": (iris_parquet(PetalWidthCm=[dt.date(2024, 1, 1)] * 2),
                     must("PetalWidthCm", "a number", "a date (2024-01-01)", 1)),
    "column name not utf-8": (latin1_name, r"a column name (b'Sp\xe9cies') is not UTF-8 text; save the file as UTF-8"),
    "metadata not json": (meta_not_json, "not a snapshot a stage wrote (its stageflow metadata is not a JSON object)"),
}


@pytest.mark.parametrize("case", SNAPSHOTS)
def test_process_refuses_a_snapshot_with_a_value_load_would_refuse(wf_root, case):
    writer, message = SNAPSHOTS[case]
    writer(wf_root / "inputs" / "merged_data")
    assert run_main(process, wf_root) == (1, f"input merged_data: {message}\n")


# ------------------------------------------------------------------ check-schema says the same


def test_check_schema_shows_the_rows_dropped_by_reason_and_a_refusal_in_one_line(tmp_path, capsys):
    good = write_source(tmp_path, "good.csv", text(csv_rows(5, {2: "2,,3.5,0.1,1.4,0.2,setosa"})))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_rows(2).replace("Species", "Spécies").encode("latin-1"))
    assert check.check([good, bad]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"ok     {good}: 5 rows, 4 usable (dropped: SepalLengthCm missing in 1); labels: setosa 4" in lines
    assert (f"error  {bad}: the name of column 7 (b'Sp\\xe9cies') is not UTF-8 text; save the file as UTF-8"
            in lines)
