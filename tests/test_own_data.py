"""Other data than iris, end to end: the wine example, and data sets described by a schema file alone.

Each runs the whole flow with `stageflow run` (host backend) and switches the schema with the one setting
(--schema, or STAGEFLOW_SCHEMA); no code is edited.
"""

import gzip
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from stageflow.runtime import modelfile, schema as schemas

from conftest import IRIS_SCHEMA, ROOT, WINE_SCHEMA, as_typed, fenced

pytestmark = pytest.mark.slow


def stageflow_run(run_dir, *args, env=None):
    return subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir), "--no-cache", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def outputs(run_dir):
    metrics = json.loads((run_dir / "train" / "outputs" / "metrics").read_text())
    model = modelfile.loads((run_dir / "train" / "outputs" / "model").read_bytes())
    return metrics, model


def test_the_wine_example_runs_with_one_setting(tmp_path):
    """As the guide shows it: `make run SCHEMA=examples/wine/schema.toml`."""
    argv = guide_command("make run SCHEMA=")
    proc = subprocess.run([*argv, f"RUN_ARGS=--run-dir {tmp_path} --no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wine = schemas.load(WINE_SCHEMA)
    assert (tmp_path / "load_b" / "inputs" / "data_path").read_text() == str(ROOT / "examples/wine/source_b.parquet")
    metrics, model = outputs(tmp_path)
    assert metrics["classes"] == ["1", "2", "3"] and model.classes_.tolist() == [1, 2, 3]  # integers, as declared
    assert metrics["label"] == {"column": "cultivar", "type": "int"}
    assert metrics["feature_names"] == list(wine.features) == list(model.feature_names_in_)
    rows = pq.read_table(ROOT / "examples" / "wine" / "source_b.parquet").to_pandas()
    predicted = model.predict(rows[list(model.feature_names_in_)])
    assert predicted.dtype.kind == "i" and set(predicted.tolist()) <= {1, 2, 3}  # not '1', '2', '3'
    assert (predicted == rows["cultivar"].to_numpy()).mean() >= 0.9
    assert metrics["n_train"] + metrics["n_test"] == 178
    assert metrics["accuracy"] >= 0.9  # the classes are separable; a model that learnt nothing scores ~0.4
    assert re.search(r"^  F1 1 +1\.0$", proc.stdout, re.M)  # the headline names the classes as labelled


def penguin_like(rng, n):
    """Rows of a made-up data set in its own words: a text key, measurements in mm and g, a note to drop, and
    species spelt every which way (the schema declares Adelie, Chinstrap, Gentoo)."""
    species = rng.integers(0, 3, n)
    spellings = [["Adelie", "ADELIE", " adelie "], ["Chinstrap", "chinstrap"], ["Gentoo", "GENTOO "]]
    return {"specimen": [f"PAL-{i:04d}" for i in range(n)],
            "Bill Length (mm)": np.round(rng.normal(38 + 8 * species, 1.5), 1),
            "flipper_mm": np.round(rng.normal(190 + 12 * species, 3)).astype(np.int64),
            "Body mass [g]": np.round(rng.normal(3700 + 700 * species, 150)).astype(np.int64),
            "note": rng.choice(["", "sex unknown", "tagged"], n),
            "Species": [spellings[s][i % len(spellings[s])] for i, s in enumerate(species)]}


PENGUINS = """\
[key]
column = "specimen"
type = "text"

[features]
"Bill Length (mm)" = "float"
flipper_mm = "int"
"Body mass [g]" = "int"

[label]
column = "Species"
match = "ignore-case"
classes = ["Adelie", "Chinstrap", "Gentoo"]

[dropped]
note = "text"
"""


def sensor_like(rng, n):
    """Another: integer ids, one feature, and integer labels 0, 1, 2 (classes learnt from the data)."""
    state = rng.integers(0, 3, n)
    return {"row": np.arange(1000, 1000 + n), "reading": rng.normal(10.0 * state, 1.0),
            "state": state.astype(np.int64)}


SENSORS = """\
[key]
column = "row"

[features]
reading = "float"

[label]
column = "state"
"""


def write_csv(path, columns):
    pcsv.write_csv(pa.table(columns), path)


def write_jsonl(path, columns):
    table = pa.table(columns).to_pylist()
    path.write_text("".join(json.dumps(row) + "\n" for row in table))


def write_parquet(path, columns):
    pq.write_table(pa.table(columns), path)


def write_csv_gz(path, columns):
    with gzip.open(path, "wb") as handle:
        pcsv.write_csv(pa.table(columns), handle)


CASES = {  # the model's classes: text unless the schema declares integer labels
    "text key, mixed-case labels, csv + jsonl": (PENGUINS, penguin_like, write_csv, "a.csv", write_jsonl, "b.jsonl",
                                                 ["Adelie", "Chinstrap", "Gentoo"]),
    "integer labels, classes learnt, parquet + csv.gz": (SENSORS, sensor_like, write_parquet, "a.parquet",
                                                         write_csv_gz, "b.csv.gz", ["0", "1", "2"]),
    "integer labels declared, classes learnt": (SENSORS + 'type = "int"\n', sensor_like, write_csv, "a.csv",
                                                write_parquet, "b.parquet", [0, 1, 2]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_data_set_described_by_its_schema_file_alone_runs_end_to_end(tmp_path, case):
    text, rows, write_a, name_a, write_b, name_b, classes = CASES[case]
    (tmp_path / "schema.toml").write_text(text)
    columns = rows(np.random.default_rng(0), 240)
    # B's rows in reverse order: merge sorts them by the key (a text key, in one case) through its spill files
    half = ({key: values[:120] for key, values in columns.items()},
            {key: values[:119:-1] for key, values in columns.items()})
    write_a(tmp_path / name_a, half[0])
    write_b(tmp_path / name_b, half[1])
    run_dir = tmp_path / "run"
    proc = stageflow_run(run_dir, "--data-path-a", str(tmp_path / name_a), "--data-path-b", str(tmp_path / name_b),
                         env={schemas.ENV: str(tmp_path / "schema.toml")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics, model = outputs(run_dir)
    assert metrics["classes"] == [str(c) for c in classes] and model.classes_.tolist() == classes
    frame = pa.table(columns).to_pandas()  # with more columns than the model takes: it takes its own, by name
    assert {type(c) for c in model.predict(frame[list(model.feature_names_in_)]).tolist()} == {type(classes[0])}
    assert metrics["n_train"] + metrics["n_test"] == 240
    assert metrics["accuracy"] >= 0.9
    features = list(schemas.load(tmp_path / "schema.toml").features)
    assert list(model.feature_names_in_) == features


def test_make_data_reproduces_the_committed_samples(tmp_path):
    for schema in (ROOT / "schema.toml", WINE_SCHEMA):
        out = tmp_path / schema.parent.name
        out.mkdir()
        subprocess.run([sys.executable, "scripts/make_data.py", "--schema", str(schema), "--out", str(out)], cwd=ROOT,
                       check=True, capture_output=True, timeout=300)
        for path in schemas.load(schema).samples.values():
            assert (out / path.name).read_bytes() == path.read_bytes(), path


# ------------------------------------------------------------------ docs/own-data.md, as written

GUIDE = ROOT / "docs" / "own-data.md"


def guide_blocks(lang=""):
    return fenced(GUIDE, lang)


def guide_command(prefix):
    """The one command line in the guide's sh blocks that starts with `prefix`."""
    found = [line for block in guide_blocks("sh") for line in block.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, found
    return shlex.split(found[0])


def test_the_guide_draft_command_writes_the_draft_the_guide_shows(tmp_path):
    """Step 1 as written: the command on the guide's file writes the guide's draft, which loads and fits the file;
    the same command again keeps the file it wrote."""
    draft_text, _ = guide_blocks("toml")  # the draft, then the edited schema
    (tmp_path / "my_a.csv").write_text(guide_blocks()[0])
    argv = guide_command("stageflow draft-schema")
    proc = as_typed(argv, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "my_schema.toml").read_text() == draft_text
    proc = as_typed(["stageflow", "check-schema", "--schema", "my_schema.toml", "my_a.csv"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith("ok     my_a.csv: 2 rows, 2 usable")
    again = as_typed(argv, tmp_path)
    assert again.returncode == 2 and "exists; give another path, or --force" in again.stderr
    assert (tmp_path / "my_schema.toml").read_text() == draft_text


def test_the_guide_example_schema_fits_its_example_file_and_a_misspelt_column_gets_the_line_shown(tmp_path):
    _, schema_text = guide_blocks("toml")
    example, _, error = guide_blocks()  # the user's file, the wine check's output, the error it shows
    (tmp_path / "my_schema.toml").write_text(schema_text)
    (tmp_path / "my_a.csv").write_text(example)
    rows = pcsv.read_csv(tmp_path / "my_a.csv")
    pq.write_table(rows.set_column(0, "patient_id", pa.array(["P-0003", "P-0004"])), tmp_path / "my_b.parquet")
    proc = as_typed(guide_command("stageflow check-schema --schema my_schema.toml"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["ok     my_a.csv: 2 rows, 2 usable; labels: Improved 1, No change 1",
                                             "ok     my_b.parquet: 2 rows, 2 usable; labels: Improved 1, No change 1"]
    (tmp_path / "my_a.csv").write_text(example.replace(",Outcome\n", ",outcome\n"))
    proc = as_typed(["stageflow", "check-schema", "--schema", "my_schema.toml", "my_a.csv"], tmp_path)
    assert proc.returncode == 1
    assert error.replace("/repo/my_schema.toml", str(tmp_path / "my_schema.toml")) in proc.stdout


def test_the_guides_toml_error_is_what_an_unquoted_name_gets(tmp_path):
    """The guide's example of a schema that is not TOML: its edited schema with a name's quotes left out."""
    _, schema_text = guide_blocks("toml")
    shown = " ".join(re.search(r"`(schema /repo/my_schema.toml: not valid TOML[^`]+)`", GUIDE.read_text(), re.S)[1]
                     .split())
    (tmp_path / "my_schema.toml").write_text(schema_text.replace('"Age (years)"', "Age (years)"))
    proc = as_typed(["stageflow", "check-schema", "--schema", "my_schema.toml", "x.csv"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {shown.replace('/repo/', f'{tmp_path}/')}\n"


def test_the_guide_check_command_prints_what_the_guide_shows():
    proc = as_typed(guide_command("stageflow check-schema --schema examples/wine/"), ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == guide_blocks()[1].replace("/repo/", f"{ROOT}/")


# ------------------------------------------------------------------ the same setting for the images


def test_another_schema_needs_no_other_image_wherever_it_lies(tmp_path, monkeypatch):
    """The images hold code only: switching schema, even to one outside the repository (the images' build
    context), builds nothing new; the schema reaches the stages as their input `schema`."""
    from stageflow import images

    monkeypatch.setenv(schemas.ENV, str(IRIS_SCHEMA))
    iris = images.targets()
    (tmp_path / "schema.toml").write_bytes(WINE_SCHEMA.read_bytes())
    monkeypatch.setenv(schemas.ENV, str(tmp_path / "schema.toml"))
    assert images.targets() == iris


@pytest.mark.docker
def test_a_stage_in_its_image_reads_the_schema_it_is_given(tmp_path):
    """No schema in the image: load_a, run in its image as a Domino job would be, takes the wine schema from its
    input `schema` (the text flow.py passes), and refuses to run without one."""
    from stageflow import containers, images
    from stageflow.registry import STAGES

    tree = tmp_path / "tree"
    (tree / "inputs").mkdir(parents=True)
    (tree / "outputs").mkdir()
    source = ROOT / "examples" / "wine" / "source_a.csv"
    (tree / "inputs" / "data_path").write_text(str(source))
    containers.prepare_tree(tree)
    client = images.client()
    run = dict(image=STAGES["load_a"].image(), user=containers.stage_user(), network_mode="none", read_only=True,
               volumes={str(tree): {"bind": "/workflow", "mode": "rw"}, str(source): {"bind": str(source), "mode": "ro"}})
    import docker

    with pytest.raises(docker.errors.ContainerError):  # exits 1 without a schema
        client.containers.run(**run, remove=True)
    assert (tree / "outputs" / "_ERROR").read_text().startswith("input schema: missing;")
    (tree / "inputs" / "schema").write_text(WINE_SCHEMA.read_text())
    client.containers.run(**run, remove=True)
    written = pq.read_metadata(tree / "outputs" / "datasetA")
    assert written.schema.names[:2] == ["sample", "alcohol"] and written.num_rows > 50
