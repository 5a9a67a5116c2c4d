"""The schema file: how it is read and refused, the label rules it declares, the errors it makes possible, and
`stageflow check-schema`. Whole flows on other data are in test_own_data.py."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stageflow.runtime import dataset, schema as schemas

from conftest import IRIS_FEATURES, IRIS_SCHEMA, ROOT, WINE_SCHEMA, load_stage, run_main

load_a = load_stage("load_a")
process = load_stage("process")

VALID = """\
[key]
column = "k"

[features]
x = "float"
n = "int"

[label]
column = "y"
match = "ignore-case"
classes = ["Barolo", "Grignolino", "Barbera"]
"""


def write_schema(tmp_path, text, name="schema.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def use(monkeypatch, path):
    """Make `path` the active schema, as STAGEFLOW_SCHEMA does for a stage."""
    monkeypatch.setenv(schemas.ENV, str(path))
    return schemas.active()


# ------------------------------------------------------------------ the file


def test_the_default_schema_declares_what_the_stages_used_to_hard_code():
    """Golden: schema.toml is the iris schema, with the seed's column order for snapshots."""
    iris = schemas.load(IRIS_SCHEMA)
    assert schemas.DEFAULT == IRIS_SCHEMA
    assert list(iris.types) == ["Id", *IRIS_FEATURES, "RandomColumn", "Species"]
    assert iris.required == ("Id", *IRIS_FEATURES, "Species")
    assert (iris.key_type, iris.dropped, iris.classes) == ("int", {"RandomColumn": "float"},
                                                           ("setosa", "versicolor", "virginica"))
    assert iris.samples == {"data_path_a": ROOT / "data" / "source_a.csv",
                            "data_path_b": ROOT / "data" / "source_b.jsonl"}


def test_the_wine_schema_describes_its_samples(monkeypatch):
    wine = use(monkeypatch, WINE_SCHEMA)
    assert len(wine.features) == 13 and wine.classes == ("1", "2", "3")  # integers in the file, text after
    for path in wine.samples.values():
        assert path.parent == WINE_SCHEMA.parent and path.is_file()


MISTAKES = {
    "unknown top-level key": ("colour = 1\n" + VALID,
                              "colour: unknown key; expected one of key, features, label, dropped, samples"),
    "missing label table": (VALID.split("[label]")[0], "label: missing; it is required"),
    "misspelt label key": (VALID.replace("classes =", "clases ="),
                           "label.clases: unknown key; expected one of column, type, match, strip_prefixes, classes"),
    "missing key column": (VALID.replace('column = "k"', 'type = "int"'), "key.column: missing; it is required"),
    "unknown key type": (VALID.replace('column = "k"', 'column = "k"\ntype = "uuid"'),
                         "key.type: must be one of 'int', 'text', found 'uuid'"),
    "unknown feature type": (VALID.replace('x = "float"', 'x = "double"'),
                             "features.x: must be one of 'float', 'int', found 'double'"),
    "features not a table": ('features = "x"\n' + VALID.replace('[features]\nx = "float"\nn = "int"\n', ""),
                             "features: must be a table of column = type ([features]), found a string 'x'"),
    "no features": (VALID.replace('x = "float"\nn = "int"', ""), "features: names no column; the model needs at "
                                                                 "least one feature"),
    "unknown match rule": (VALID.replace('"ignore-case"', '"case-insensitive"'),
                           "label.match: must be one of 'exact', 'ignore-case', found 'case-insensitive'"),
    "prefixes not a list": (VALID + 'strip_prefixes = "iris-"\n',
                            "label.strip_prefixes: must be a list of non-empty strings, found 'iris-'"),
    "one class": (VALID.replace('["Barolo", "Grignolino", "Barbera"]', '["Barolo"]'),
                  "label.classes: must list at least two classes, found ['Barolo']"),
    "boolean classes": (VALID.replace('["Barolo", "Grignolino", "Barbera"]', "[true, false]"),
                        "label.classes: classes are strings or integers, found True"),
    "classes equal under the match rule": (VALID.replace('"Barbera"', '"barolo "'),
                                           "label.classes: 'Barolo' and 'barolo ' are the same class under "
                                           "match = 'ignore-case'"),
    "a column in two roles": (VALID.replace('column = "k"', 'column = "x"'),
                              "features.x: column 'x' is already key.column; a column has one role"),
    "dropped column of no known type": (VALID + '[dropped]\nnote = "string"\n',
                                        "dropped.note: must be one of 'float', 'int', 'text', found 'string'"),
    "samples of another flow input": (VALID + '[samples]\ndata_path_c = "c.csv"\n',
                                      "samples.data_path_c: unknown key; expected one of data_path_a, data_path_b"),
    "not TOML": (VALID.replace("[features]", "[features"),
                 "not valid TOML at line 4 ('[features'): Expected ']' at the end of a table declaration; a table "
                 "header is a name in brackets on a line of its own: [features]"),
    # What usually makes a schema not TOML, each said with its fix (a name with a space was `not valid TOML
    # (Expected '=' after a key in a key/value pair (at line 6, column 5))`, which says nothing of quotes):
    "a name with spaces unquoted": (VALID.replace('x = "float"', 'Age (years) = "float"'),
                                    "not valid TOML at line 5 ('Age (years) = \"float\"'): Expected '=' after a key in "
                                    "a key/value pair; a column name with spaces or other characters than letters, "
                                    "digits, _ and - must be quoted: \"Age (years)\" = \"float\""),
    "a name with other letters unquoted": (VALID.replace('x = "float"', 'Größe = "float"'),
                                           "not valid TOML at line 5 ('Größe = \"float\"'): Expected '=' after a key "
                                           "in a key/value pair; a column name with spaces or other characters than "
                                           "letters, digits, _ and - must be quoted: \"Größe\" = \"float\""),
    "a dotted name unquoted": (VALID.replace('x = "float"', 'sepal.length = "float"'),
                               "features.sepal: a column name holding a dot must be quoted: \"sepal.length\" = ..."),
    "a type unquoted": (VALID.replace('x = "float"', "x = float"),
                        "not valid TOML at line 5 ('x = float'): Invalid value; a type or a word as a value must be "
                        "quoted: x = \"float\""),
    "a column named twice": (VALID.replace('n = "int"', 'x = "int"'),
                             "not valid TOML at line 6 ('x = \"int\"'): Cannot overwrite a value; a name is given "
                             "twice: a column has one line, a table ([name]) one header"),
    "an unclosed quote": (VALID.replace('x = "float"', 'x = "float'),
                          "not valid TOML at line 5 ('x = \"float'): Illegal character '\\n'; a quoted value must end "
                          "with a quote on its own line"),
}


@pytest.mark.parametrize("case", MISTAKES)
def test_a_schema_mistake_is_one_line_naming_the_key(tmp_path, case):
    text, problem = MISTAKES[case]
    path = write_schema(tmp_path, text)
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.load(path)
    assert str(caught.value) == f"schema {path}: {problem}"


def test_the_valid_example_above_loads(tmp_path):
    """The base the mistakes are made from is itself fine, so each case fails for its own reason."""
    loaded = schemas.load(write_schema(tmp_path, VALID))
    assert (loaded.key, list(loaded.features), loaded.label) == ("k", ["x", "n"], "y")


def test_a_missing_schema_file_says_which_setting_named_it(tmp_path, monkeypatch):
    monkeypatch.setenv(schemas.ENV, str(tmp_path / "nowhere.toml"))
    with pytest.raises(schemas.SchemaError, match=rf"^schema {tmp_path}/nowhere.toml \(STAGEFLOW_SCHEMA="
                                                   rf"{tmp_path}/nowhere.toml\) does not exist; set STAGEFLOW_SCHEMA"):
        schemas.active()


def test_a_stage_under_a_broken_schema_fails_with_that_one_line(wf_root, tmp_path, monkeypatch):
    path = write_schema(tmp_path, MISTAKES["misspelt label key"][0])
    monkeypatch.setenv(schemas.ENV, str(path))
    source = tmp_path / "a.csv"
    source.write_text("k,x,n,y\n1,1.0,1,Barolo\n")
    (wf_root / "inputs" / "data_path").write_text(str(source))
    status, error = run_main(load_a, wf_root)
    assert (status, error) == (1, f"schema {path}: {MISTAKES['misspelt label key'][1]}\n")
    assert os.listdir(wf_root / "outputs") == ["_ERROR"]


def test_stageflow_run_refuses_a_broken_schema_before_any_stage(tmp_path):
    path = write_schema(tmp_path, MISTAKES["unknown feature type"][0])
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--schema", str(path), "--run-dir",
                           str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == f"error: schema {path}: {MISTAKES['unknown feature type'][1]}\n"
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ label rules


@pytest.mark.parametrize("rules, spellings", [
    ({}, {" Iris-Setosa": "setosa", "IRIS_virginica ": "virginica", "iris  versicolor": "versicolor",
          "setosa": "setosa", "Iris-setsoa": "setsoa"}),  # the iris schema's rules (schema.toml)
    ({"match": "exact"}, {"Barolo": "Barolo", "barolo": "barolo", "Barolo ": "Barolo "}),
    ({"match": "ignore-case"}, {"BAROLO": "Barolo", " barolo\t": "Barolo", "Grignolino": "Grignolino",
                                "barbera": "Barbera", "Nebbiolo": "nebbiolo"}),
    ({"match": "ignore-case", "classes": None}, {"BAROLO": "barolo", "Barolo": "barolo"}),  # learnt: one spelling
    ({"match": "exact", "strip_prefixes": ("wine:",)}, {"wine:Barolo": "Barolo", "Wine:Barolo": "Wine:Barolo"}),
])
def test_labels_are_spelt_by_the_declared_rules_only(rules, spellings):
    iris = schemas.load(IRIS_SCHEMA)
    schema = iris if not rules else schemas.Schema(
        path=IRIS_SCHEMA, key="k", key_type="int", features={"x": "float"}, label="y",
        **{"classes": ("Barolo", "Grignolino", "Barbera"), **rules})
    assert {label: schema.canonical(label) for label in spellings} == spellings


def wine_table(labels):
    return pa.table({"sample": list(range(1, len(labels) + 1)),
                     **{name: [int(i) if kind == "int" else 1.5 for i in range(len(labels))]
                        for name, kind in schemas.load(WINE_SCHEMA).features.items()},
                     "cultivar": labels})


LABEL_SOURCES = {  # the wine schema's integer classes, arriving in every way a source can hold them
    "csv": ("s.csv", lambda p, t: p.write_text(",".join(t.column_names) + "\n" + "".join(
        ",".join(str(v) for v in row.values()) + "\n" for row in t.to_pylist()))),
    "jsonl integers": ("s.jsonl", lambda p, t: p.write_text("".join(json.dumps(r) + "\n" for r in t.to_pylist()))),
    "jsonl text": ("s.jsonl", lambda p, t: p.write_text("".join(
        json.dumps({**r, "cultivar": str(r["cultivar"])}) + "\n" for r in t.to_pylist()))),
    "parquet int64": ("s.parquet", lambda p, t: pq.write_table(t, p)),
    "parquet int8": ("s.parquet", lambda p, t: pq.write_table(
        t.set_column(t.num_columns - 1, "cultivar", pa.array(t.column("cultivar").to_pylist(), pa.int8())), p)),
    "parquet text": ("s.parquet", lambda p, t: pq.write_table(
        t.set_column(t.num_columns - 1, "cultivar", pa.array([str(v) for v in t.column("cultivar").to_pylist()])), p)),
}


@pytest.mark.parametrize("case", LABEL_SOURCES)
def test_integer_labels_are_the_same_labels_from_every_format(wf_root, tmp_path, monkeypatch, case):
    use(monkeypatch, WINE_SCHEMA)
    name, writer = LABEL_SOURCES[case]
    source = tmp_path / name
    writer(source, wine_table([1, 2, 3, 2]))
    (wf_root / "inputs" / "data_path").write_text(str(source))
    assert run_main(load_a, wf_root) == (0, None)
    ptree = tmp_path / "process"
    (ptree / "inputs").mkdir(parents=True)
    os.link(wf_root / "outputs" / "datasetA", ptree / "inputs" / "merged_data")
    assert run_main(process, ptree) == (0, None)
    out = dataset.Snapshot(ptree / "outputs" / "processed_data", "processed_data").read()
    assert out.column("cultivar").to_pylist() == ["1", "2", "3", "2"]
    assert out.schema.field("cultivar").type == dataset.LABEL_TYPE


def test_an_integer_label_outside_the_declared_classes_is_refused(wf_root, tmp_path, monkeypatch):
    use(monkeypatch, WINE_SCHEMA)
    pq.write_table(wine_table([1, 4, 4]), wf_root / "inputs" / "merged_data")
    assert run_main(process, wf_root) == (1, "input merged_data: column cultivar has unknown label '4' in 2 row(s); "
                                             "expected one of 1, 2, 3\n")


@pytest.mark.parametrize("label, kind", [
    ('classes = [0, 1]', "int"), ('classes = ["0", "1"]', "text"), ('classes = ["0", "1"]\ntype = "int"', "int"),
    ("", "text"), ('type = "int"', "int"), ('classes = [0, 1]\ntype = "text"', "text")])
def test_integer_classes_declare_integer_labels_unless_the_type_says_otherwise(tmp_path, label, kind):
    schema = schemas.load(write_schema(tmp_path, VALID.replace('classes = ["Barolo", "Grignolino", "Barbera"]', label)))
    assert schema.label_type == kind


def test_integer_labels_are_one_label_however_they_are_padded(tmp_path):
    schema = schemas.load(write_schema(tmp_path, VALID.replace('classes = ["Barolo", "Grignolino", "Barbera"]',
                                                               'classes = [0, 1]')))
    assert [schema.canonical(v) for v in ("1", " 01", "+1", "0", "00")] == ["1", "1", "1", "0", "0"]
    assert schema.classes == ("0", "1")
    with pytest.raises(schemas.SchemaError, match=r'label.classes: label.type is "int", but \'a\' is not an integer'):
        schemas.load(write_schema(tmp_path, VALID.replace('match = "ignore-case"', 'type = "int"')
                                  .replace('["Barolo", "Grignolino", "Barbera"]', '[1, "a"]')))


def test_a_label_that_is_not_an_integer_is_refused_where_labels_are_integers(wf_root, tmp_path, monkeypatch):
    path = write_schema(tmp_path, WINE_SCHEMA.read_text().replace("classes = [1, 2, 3]", 'type = "int"'))
    use(monkeypatch, path)
    table = wine_table([1, 2, 2]).set_column(wine_table([1]).schema.get_field_index("cultivar"), "cultivar",
                                             pa.array(["1", "two", "2"]))
    pq.write_table(table, wf_root / "inputs" / "merged_data")
    assert run_main(process, wf_root) == (1, "input merged_data: column cultivar has unknown label 'two' in 1 "
                                             "row(s); expected an integer (label.type is \"int\")\n")


def test_fractional_labels_are_refused_not_guessed(wf_root, tmp_path, monkeypatch):
    """1.0 could be the class 1 or a measurement in the wrong column: say so rather than pick."""
    use(monkeypatch, WINE_SCHEMA)
    source = tmp_path / "s.parquet"
    pq.write_table(wine_table([1.0, 2.0]), source)
    (wf_root / "inputs" / "data_path").write_text(str(source))
    assert run_main(load_a, wf_root) == (1, f"input data_path: {source}: column cultivar must be text or an integer "
                                             f"(a label) in every row, found a float (1.0) in row 1\n")


# ------------------------------------------------------------------ errors that say what to do


IRIS_ROWS = "5.1,3.5,1.4,0.2,Iris-setosa\n4.9,3.0,1.4,0.2,Iris-setosa\n"


@pytest.mark.iris
@pytest.mark.parametrize("header, message", [
    ("sepal_length,sepal_width,petal_length,petal_width,species",  # seaborn's layout: no Id
     "missing required column Id, SepalLengthCm, SepalWidthCm, PetalLengthCm, PetalWidthCm, Species (found "
     "sepal_length, sepal_width, petal_length, petal_width, species); did you mean sepal_length for SepalLengthCm, "
     "sepal_width for SepalWidthCm, petal_length for PetalLengthCm, petal_width for PetalWidthCm, species for "
     "Species? Rename the column in the file or in the schema ({schema})"),
    ("id,SepalLengthCm,SepalWidthCm,PetalLengthCm,PetalWidthCm,Species",
     "missing required column Id (found id, SepalLengthCm, SepalWidthCm, PetalLengthCm, PetalWidthCm, Species); "
     "did you mean id for Id? Rename the column in the file or in the schema ({schema})"),
    ("Id,sepal length (cm),SepalWidthCm,PetalLengthCm,PetalWidthCm,Species",  # scikit-learn's names
     "missing required column SepalLengthCm (found Id, sepal length (cm), SepalWidthCm, PetalLengthCm, PetalWidthCm, "
     "Species); did you mean sepal length (cm) for SepalLengthCm? Rename the column in the file or in the schema "
     "({schema})"),
    (" Id ,SepalLengthCm,SepalWidthCm,PetalLengthCm,PetalWidthCm,Species",  # issue 20: "did you mean Id for Id"
     "missing required column Id (found ' Id ', SepalLengthCm, SepalWidthCm, PetalLengthCm, PetalWidthCm, Species); "
     "did you mean ' Id ' for Id? Rename the column in the file or in the schema ({schema})"),
])
def test_a_column_spelt_another_way_is_suggested(wf_root, tmp_path, header, message):
    source = tmp_path / "iris.csv"
    source.write_text(header + "\n" + "".join(f"{i},{row}" if header.lstrip().lower().startswith("id") else row
                                              for i, row in enumerate(IRIS_ROWS.splitlines(True), 1)))
    (wf_root / "inputs" / "data_path").write_text(str(source))
    status, error = run_main(load_a, wf_root)
    assert (status, error) == (1, f"input data_path: {source}: " + message.format(schema=IRIS_SCHEMA) + "\n")


def test_no_suggestion_for_columns_that_only_share_a_word():
    assert dataset.did_you_mean(["PetalWidthCm"], ["PetalLengthCm", "Width", "petal"]) == ""


def test_a_file_without_a_header_row_is_named_as_such_in_the_schema_terms(wf_root, tmp_path, monkeypatch):
    wine = use(monkeypatch, WINE_SCHEMA)
    source = tmp_path / "wine.csv"
    source.write_text((ROOT / "examples" / "wine" / "source_a.csv").read_text().split("\n", 1)[1])  # header cut
    (wf_root / "inputs" / "data_path").write_text(str(source))
    status, error = run_main(load_a, wf_root)
    assert status == 1
    assert error.startswith(f"input data_path: {source}: the header row is missing: the first row (1, 14.23, 1.71, ")
    assert error.endswith(f"looks like data; the first line must name the columns {', '.join(wine.required)}, in "
                          f"any order\n")


# ------------------------------------------------------------------ stageflow check-schema


def check_schema(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "stageflow", "check-schema", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_check_schema_passes_the_bundled_samples_and_says_what_training_gets():
    proc = check_schema("--schema", "examples/wine/schema.toml", "examples/wine/source_a.csv",
                        "examples/wine/source_b.parquet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"schema {WINE_SCHEMA}"
    assert "  label     cultivar (match exact, classes 1, 2, 3)" in lines
    assert "ok     examples/wine/source_a.csv: 89 rows, 89 usable; labels: 1 59, 2 30" in lines
    assert "ok     examples/wine/source_b.parquet: 89 rows, 89 usable; labels: 2 41, 3 48" in lines


def test_check_schema_names_each_file_that_does_not_fit_and_leaves_it_alone(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,SepalLengthCm,SepalWidthCm,PetalLengthCm,PetalWidthCm,Species\n1,5.1,3.5,1.4,0.2,Iris-setsoa\n")
    before = bad.read_bytes()
    proc = check_schema("--schema", IRIS_SCHEMA, ROOT / "data" / "source_a.csv", bad, tmp_path / "absent.csv")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-4:] == [
        f"ok     {ROOT}/data/source_a.csv: 75 rows, 75 usable; labels: setosa 50, versicolor 25",
        f"error  {bad}: column Species has unknown label 'setsoa' in 1 row(s); expected one of setosa, versicolor, "
        f"virginica",
        f"error  {tmp_path}/absent.csv: does not exist",
        f"2 of 3 file(s) do not fit the schema; fix the file or the schema ({IRIS_SCHEMA}) and check again"]
    assert bad.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["bad.csv"]


def test_check_schema_refuses_a_broken_schema_in_one_line(tmp_path):
    path = write_schema(tmp_path, MISTAKES["unknown match rule"][0])
    proc = check_schema("--schema", path, ROOT / "data" / "source_a.csv")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"error: schema {path}: {MISTAKES['unknown match rule'][1]}\n"


def test_a_relative_schema_path_is_taken_from_where_the_command_runs(tmp_path):
    """STAGEFLOW_SCHEMA=examples/wine/schema.toml means the file under the current directory, also for the
    stages, which the runner starts from the repository root."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "schema.toml").write_text(WINE_SCHEMA.read_text().split("[samples]")[0])
    proc = subprocess.run([sys.executable, "-m", "stageflow", "check-schema", str(ROOT / "examples/wine/source_a.csv")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, schemas.ENV: "mine/schema.toml"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == f"schema {tmp_path}/mine/schema.toml"

