"""`stageflow draft-schema`: a schema drafted from a source file, in every source format, loads, fits the file it
came from by the stages' own checks, guesses the key and the label and says so; the command never writes over a
file it was not told to, nor over its source, and refuses what no schema can describe in one line."""

import gzip
import json
import os
import re
import tomllib

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from stageflow import check, cli
from stageflow.runtime import schema as schemas


def write(path, table: pa.Table):
    """`table` as a source file of the format its name says, as a user's tools would write it."""
    name = path.name
    if name.endswith(".csv.gz"):
        with gzip.open(path, "wb") as handle:
            pcsv.write_csv(table, handle)
    elif name.endswith(".csv"):
        pcsv.write_csv(table, path)
    elif name.endswith(".parquet"):
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return path


def patients(n=40):
    """Names no bare TOML key takes (a space, brackets, a dot, quotes, another script), a text key, a value
    missing, labels spelt in two cases, a text column to drop."""
    rng = np.random.default_rng(3)
    outcome = rng.integers(0, 2, n)
    return pa.table({
        "patient id": [f"P-{i:04d}" for i in range(n)],
        "Age (years)": rng.integers(20, 90, n),
        "sepal.length": pa.array([None if i == 5 else float(v) for i, v in enumerate(rng.normal(5, 1, n).round(2))]),
        'the "odd" one': rng.normal(0, 1, n).round(3),
        "Größe": rng.normal(170, 9, n).round(1),
        "site": rng.choice(["north", "south", "east"], n),
        "Outcome": [["Improved", "IMPROVED", "No change"][2 * o + (i % 2) * (1 - o)] for i, o in enumerate(outcome)],
    })


def draft(capsys, *args):
    status = cli.main(["draft-schema", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz", "a.parquet", "a.jsonl"])
def test_a_drafted_schema_loads_and_fits_the_file_it_came_from(tmp_path, capsys, monkeypatch, name):
    source = write(tmp_path / name, patients())
    status, out, err = draft(capsys, source, "-o", tmp_path / "schema.toml")
    assert status == 0, err
    assert out.startswith(f"wrote {tmp_path / 'schema.toml'}: key patient id (text), label Outcome (3 classes), "
                          f"4 features, 1 dropped; the key and the label are guesses")
    schema = schemas.load(tmp_path / "schema.toml")
    assert (schema.key, schema.key_type, schema.label, schema.match) == ("patient id", "text", "Outcome",
                                                                         "ignore-case")
    assert schema.features == {"Age (years)": "int", "sepal.length": "float", 'the "odd" one': "float",
                               "Größe": "float"}
    assert schema.dropped == {"site": "text"}
    text = (tmp_path / "schema.toml").read_text()
    assert "[key]  # a guess: its name says so and every row holds another value" in text
    assert "[label]  # a guess: its name says so and it holds 3 distinct values" in text
    assert re.search(r'^"sepal.length" = "float" +# -?[\d.]+ to [\d.]+, 1 missing$', text, re.M), text
    monkeypatch.setenv(schemas.ENV, str(tmp_path / "schema.toml"))
    assert check.check([source]) == 0  # the stages' own load and process take the file under the draft
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"ok     {source}: 40 rows, 39 usable")


def test_wide_data_takes_one_command(tmp_path, capsys):
    """The issue's case: 30 features, which were 30 lines to type."""
    rng = np.random.default_rng(0)
    columns = {"row": np.arange(500), **{f"feature {i}": rng.normal(i, 1, 500) for i in range(30)},
               "class": rng.choice(["a", "b"], 500)}
    source = write(tmp_path / "wide.parquet", pa.table(columns))
    status, out, err = draft(capsys, source)
    assert status == 0, err
    schema = tomllib.loads(out)  # printed when no -o is given: the TOML alone
    assert list(schema["features"]) == [f"feature {i}" for i in range(30)]
    assert schema["key"] == {"column": "row", "type": "int"} and schema["label"] == {"column": "class"}


def test_without_names_to_go_by_the_key_is_the_unique_integer_column_and_the_label_the_last_text_one(tmp_path,
                                                                                                    capsys):
    n = 60
    rng = np.random.default_rng(1)
    table = pa.table({"a": rng.normal(0, 1, n), "b": np.arange(1000, 1000 + n), "c": rng.choice(["x", "y"], n),
                      "d": rng.integers(0, 3, n), "e": rng.choice(["p", "q", "r"], n), "f": rng.normal(0, 1, n)})
    status, out, err = draft(capsys, write(tmp_path / "plain.csv", table))
    assert status == 0, err
    schema = tomllib.loads(out)
    assert schema["key"] == {"column": "b", "type": "int"} and schema["label"] == {"column": "e"}
    assert schema["features"] == {"a": "float", "d": "int", "f": "float"} and schema["dropped"] == {"c": "text"}
    assert "# a guess: every row holds another value" in out and "# a guess: it holds 3 distinct values" in out


def test_the_draft_needs_no_schema_of_its_own(tmp_path, capsys, monkeypatch):
    """Whatever STAGEFLOW_SCHEMA says (a file that is not there, or one naming the same columns otherwise)."""
    source = write(tmp_path / "a.csv", patients())
    monkeypatch.setenv(schemas.ENV, str(tmp_path / "nowhere.toml"))
    status, out, err = draft(capsys, source)
    assert status == 0 and tomllib.loads(out)["key"]["column"] == "patient id", err


def test_a_column_no_type_takes_is_named_in_the_draft(tmp_path, capsys):
    table = pa.table({"id": [1, 2, 3], "x": [0.5, 1.5, 2.5], "y": ["a", "b", "a"],
                      "when": pa.array([0, 1, 2], pa.timestamp("s"))})
    status, out, err = draft(capsys, write(tmp_path / "t.parquet", table))
    assert status == 0, err
    assert re.search(r"^# when: holds timestamp\[\w+\] values, which no column type takes \(float, int, text\): "
                     r"remove it from the file or save it as text$", out, re.M), out
    assert "when" not in tomllib.loads(out).get("dropped", {})


# ------------------------------------------------------------------ what it refuses, and what it never touches


def test_an_existing_file_is_kept_unless_force_and_the_source_never_written(tmp_path, capsys):
    source = write(tmp_path / "a.csv", patients())
    before = source.read_bytes()
    mine = tmp_path / "schema.toml"
    mine.write_text("# mine\n")
    status, out, err = draft(capsys, source, "-o", mine)
    assert status == 2 and err == f"error: -o {mine}: exists; give another path, or --force to replace it\n"
    assert mine.read_text() == "# mine\n"
    status, out, err = draft(capsys, source, "-o", mine, "--force")
    assert status == 0 and schemas.load(mine).key == "patient id"
    os.link(source, tmp_path / "same.csv")  # the source under another name: still the source
    for target in (source, tmp_path / "same.csv"):
        status, out, err = draft(capsys, source, "-o", target, "--force")
        assert status == 2 and err == f"error: -o {target}: that is the source file; give another path\n"
    status, out, err = draft(capsys, source, "-o", tmp_path, "--force")
    assert status == 2 and err == f"error: -o {tmp_path}: a directory; give the schema file's path\n"
    assert source.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "same.csv", "schema.toml"]


BAD_SOURCES = {
    "no header": ("a.csv", "1,5.1,3.5,setosa\n2,4.9,3.0,setosa\n",
                  "the first line (1, 5.1, 3.5, setosa) looks like data, not a header naming the columns; add a "
                  "header row"),
    "no unique column": ("a.csv", "a,b,c\n1,2,x\n1,2,x\n3,4,y\n",
                         "no column holds a different value in every row, so none can be the key"),
    "no numbers": ("a.csv", "id,name,kind\n1,ann,a\n2,bob,b\n3,cy,a\n",
                   "no column besides the key and the label holds a number in every row"),
    "no label": ("a.csv", "id,x\n1,0.5\n2,1.5\n", "no column besides the key holds 2 to 50 distinct values"),
    "a name twice": ("a.csv", "id,x,x,y\n1,2,3,a\n2,3,4,b\n", "column x appears more than once; rename one"),
    "header only": ("a.csv", "id,x,y\n", "has no data rows to draft a schema from"),
    "empty": ("a.csv", "", "is empty"),
    "another format": ("a.xlsx", "x", "has an unsupported extension; expected one of .csv"),
    "not there": ("missing.csv", None, "does not exist"),
    "not JSON": ("a.jsonl", '{"id": 1}\nnot json\n', "row 2 (line 2) is not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_a_source_no_schema_can_describe_is_one_line_and_nothing_is_written(tmp_path, capsys, case):
    name, content, said = BAD_SOURCES[case]
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    status, out, err = draft(capsys, source, "-o", tmp_path / "schema.toml")
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {source}") and said in err, err
    assert not (tmp_path / "schema.toml").exists()
